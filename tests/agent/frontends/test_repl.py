"""The terminal chat, driven as a person would: a real pseudo-terminal types prompts, keys and slash
commands, and the tests read what the screen shows (ANSI codes stripped)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data"
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[=>()][0-9A-B]?|\r")
CTRL_C, CTRL_D, CTRL_A, CTRL_K = "\x03", "\x04", "\x01", "\x0b"


class Term:
    """The chat in a pty. Answers prompt_toolkit's cursor-position requests like a real terminal
    (without them it hides the bottom toolbar)."""

    def __init__(self, tmp_path: Path, script: list | None, *flags: str, env: dict | None = None):
        full_env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"), TERM="xterm-256color",
                        COLUMNS="120", LINES="40", **(env or {}))
        full_env.pop("NO_COLOR", None)
        if script is not None:
            (tmp_path / "script.json").write_text(json.dumps(script))
            full_env["KERNELCHAT_SCRIPT"] = str(tmp_path / "script.json")
        ws = tmp_path / "ws"
        ws.mkdir(exist_ok=True)
        self.child = pexpect.spawn(sys.executable, ["-c", "import tests.agent.frontends.repl_harness as h; h.main()",
                                                    "--workspace", str(ws), *flags],
                                   env=full_env, cwd=str(REPO), dimensions=(40, 120), encoding="utf-8")
        self.screen, self.pos = "", 0
        self.raw = ""  # every character the chat wrote to the terminal, escapes and all

    def _pump(self, timeout: float) -> None:
        try:
            chunk = self.child.read_nonblocking(1 << 20, timeout=timeout)
        except pexpect.TIMEOUT:
            return
        self.raw += chunk
        for _ in range(chunk.count("\x1b[6n")):
            self.child.send("\x1b[20;1R")
        self.screen += ANSI.sub("", chunk)

    def expect(self, text: str, timeout: float = 20) -> str:
        """Wait until `text` appears after what earlier expects consumed; return what came before."""
        deadline = time.monotonic() + timeout
        while True:
            i = self.screen.find(text, self.pos)
            if i >= 0:
                before, self.pos = self.screen[self.pos:i], i + len(text)
                return before
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not shown within {timeout} s; the screen ends with:\n"
                                     f"{self.screen[-3000:]}")
            try:
                self._pump(0.1)
            except pexpect.EOF:
                if self.screen.find(text, self.pos) < 0:
                    raise AssertionError(f"the chat exited before showing {text!r}:\n{self.screen[-3000:]}")

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def line(self, text: str) -> None:
        self.child.send(text + "\r")

    def close(self) -> int:
        self.send(CTRL_D)
        self.expect("saved:")
        self.child.expect(pexpect.EOF, timeout=20)
        self.child.close()
        return self.child.exitstatus


@pytest.fixture
def term(tmp_path):
    terms: list[Term] = []

    def start(script, *flags, env=None) -> Term:
        t = Term(tmp_path, script, *flags, env=env)
        terms.append(t)
        return t

    yield start
    for t in terms:
        if t.child.isalive():
            t.child.terminate(force=True)


def test_prompt_edit_branches_and_commands(term):
    t = term([{"python": "print(6*7)"}, "The answer is 42.", {"python": "print(7*8)"}, "The answer is 56."])
    t.expect("You [1]: ")
    t.expect("Esc-Enter newline")  # the bottom toolbar shows the keys
    t.line("What is 6*7?")
    t.expect("print(6*7)")        # the cell, before it runs
    t.expect("42")                # its output
    t.expect("The answer is 42.")
    t.expect("You [2]: ")
    # /edit puts the last prompt back in the input; rewrite it and send: a new branch
    t.line("/edit")
    t.expect("Edit [1]: What is 6*7?")
    t.expect("regenerates from You [1]")
    t.send(CTRL_A + CTRL_K)
    t.line("What is 7*8?")
    t.expect("The answer is 56.")
    t.expect("You [2]: ")
    t.line("/branches")
    t.expect("You [1] What is 6*7?")
    t.expect("The answer is 42.")
    t.expect("You [1] What is 7*8?")
    t.expect("● ")
    t.line("/tokens")
    t.expect("total")
    t.line("/budget set max_usd=0.5")
    t.expect("max_usd")
    t.expect("0.5000")
    t.line("/frobnicate")
    t.expect("unknown command /frobnicate")
    t.line("/edit 9")
    t.expect("there is no prompt 9")
    t.send("/he\t")               # Tab completes the command
    t.expect("/help")
    t.send("\r")
    t.expect("/export md|html|ipynb PATH")
    t.line("/undo")
    t.expect("undone")
    t.expect("You [1]: ")
    assert t.close() == 0


def test_ctrl_c_interrupts_the_running_cell(term):
    t = term([{"python": "import time\nprint('nap' + 'ping', flush=True)\ntime.sleep(60)"},
              {"python": "import time\ntime.sleep(59)"}, {"python": "print(40 + 2)"}, "still alive: 42"])
    t.expect("You [1]: ")
    t.line("take a nap")
    t.expect("napping")            # live output while the cell runs
    t0 = time.monotonic()
    t.send(CTRL_C)
    t.expect("KeyboardInterrupt", timeout=10)
    t.expect("interrupted")
    t.expect("You [2]: ")
    assert time.monotonic() - t0 < 10
    t.line("again")                # Ctrl-C as soon as the cell shows, before it runs: still stopped
    t.expect("time.sleep(59)")
    t.send(CTRL_C)
    t.expect("KeyboardInterrupt", timeout=10)
    t.expect("You [3]: ")
    t.line("add")                  # the program and the kernel go on
    t.expect("still alive: 42")
    assert t.close() == 0


def test_confirm_skips_or_edits_cells(term, tmp_path):
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\np = sys.argv[1]\ns = open(p).read()\nopen(p, 'w').write(s.replace('10', '20'))\n")
    t = term([{"python": "print(1)"}, "skipped it", {"python": "print(10 * 10)"}, "done"],
             "--confirm", env={"EDITOR": f"{sys.executable} {editor}"})
    t.line("one")
    t.expect("run this cell?")
    t.send("n")
    t.expect("rejected")
    t.expect("skipped it")
    t.line("two")
    t.expect("run this cell?")
    t.send("e")
    t.expect("python (edited)")
    t.expect("print(20 * 20)")
    t.expect("400")
    t.expect("done")
    assert t.close() == 0


@pytest.mark.slow
def test_real_embedded_model(term):
    t = term(None, "--model", "hf:smollm2")
    t.expect("You [1]: ", timeout=120)
    t.line("What is 2**10? Use Python.")
    t.expect("1024", timeout=150)
    t.expect("You [2]: ", timeout=60)
    assert t.close() == 0


def test_session_commands(term, tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    t = term([{"python": "open('out.txt', 'w').write('hi')\nx = 7"}, "wrote it",
              {"python": "print(x * 6)"}, "x*6 is 42", "retried answer"])
    t.line("write a file")
    t.expect("wrote it")
    t.line("/files")
    t.expect("out.txt")
    t.line(f"/upload {tmp_path / 'data.csv'}")
    t.expect("uploaded")
    t.line("/kernel restart")      # the branch's cell is replayed: x is back
    t.expect("kernel restarted")
    t.line("use x")
    t.expect("x*6 is 42")
    t.line("/retry")
    t.expect("retried answer")
    t.line("/system Answer in French.")
    t.expect("system prompt replaced")
    t.line("/system")
    t.expect("Answer in French.")
    t.line(f"/export md {tmp_path / 'c.md'}")
    t.expect("exported")
    t.line(f"/save {tmp_path / 'c.json'}")
    t.expect("saved: ")
    t.line("/branches")
    old = t.expect("retried answer")
    branch = re.search(r"○ ([0-9a-f]{10})", old).group(1)  # the first answer to "use x"
    t.line(f"/switch {branch}")
    t.expect(f"switched to {branch}")
    t.line(f"/load {tmp_path / 'c.json'}")
    t.expect("loaded")
    t.expect("2 prompt(s)")
    assert t.close() == 0
    md = (tmp_path / "c.md").read_text()
    assert "use x" in md and "retried answer" in md
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["system"] == "Answer in French."


def test_no_control_sequence_of_the_model_or_kernel_reaches_the_terminal(term, tmp_path):
    """Every family of escape, in the streamed answer, the cell's code, its live output, stdout,
    stderr, result, traceback and file names, /files and /branches: shown, never obeyed."""
    from test_terminal_safety import HOSTILE, raw_hits

    cell = (f"# {HOSTILE}\nimport sys, time\nprint({HOSTILE!r}, flush=True)\ntime.sleep(1.5)\n"
            f"print({HOSTILE!r}, file=sys.stderr)\nopen({('f-' + HOSTILE[:12])!r}, 'w').write('x')\n"
            f"class R:\n    def __repr__(self):\n        return {HOSTILE!r}\nR()")
    t = term([{"python": cell}, f"answer {HOSTILE} [docs](http://evil.example/)",
              {"python": f"raise ValueError({HOSTILE!r})"}, f"second {HOSTILE}"])
    t.line("go")
    t.expect("answer ")
    t.expect("You [2]: ")
    t.line("again")
    t.expect("ValueError")
    t.expect("You [3]: ")
    t.line("/files")
    t.expect("f-␛]0;PWNED-TI")
    t.line("/branches")
    t.expect("second ␛]0;PWNED-TITLE")
    assert t.close() == 0
    assert "␛]0;PWNED-TITLE" in t.screen and "\\x9b?1049h" in t.screen  # shown...
    assert not raw_hits(t.raw), raw_hits(t.raw)  # ...and not one sequence obeyed


def test_a_chat_left_before_any_prompt_leaves_no_file(term, tmp_path):
    t = term(["unused"])
    t.expect("You [1]: ")
    t.send(CTRL_D)
    t.expect("nothing to save: no prompt was sent")
    t.child.expect(pexpect.EOF, timeout=20)
    assert not list((tmp_path / "data").rglob("*.json"))


def test_gateway_flag_sends_the_kernel_to_the_gateway(term):
    """--gateway reaches the terminal chat's kernel: nothing listens at this URL, so the cell says so."""
    t = term([{"python": "print(1)"}, "unused"], "--gateway", "http://127.0.0.1:9",
             "--gateway-token-file", str(DATA / "gateway_token.txt"))
    t.expect("You [1]: ")
    t.line("go")
    t.expect("kernel gateway at http://127.0.0.1:9")
    assert t.close() == 0


def test_a_budget_stop_is_shown_once(term):
    t = term(["never sent"], "--max-tokens", "5")
    t.expect("You [1]: ")
    t.line("hello")
    t.expect("stopped: budget")
    t.expect("You [2]: ")
    assert t.close() == 0
    assert "[budget exceeded" not in t.screen  # the loop's notice of it is not shown a second time


def test_a_fenced_cell_shows_once_and_a_revise_note_on_its_own_line(term):
    """A model without tool calls writes ```python blocks: the block shows as its code panel only (not
    streamed raw first); the small-model mode's added import is a line of its own, not glued to the
    traceback it mends."""
    reply = "I will compute it.\n```python\nprint(int(time.time() > 0) + 41)\n```\n"
    t = term([reply] * 5, env={"KERNELCHAT_SCRIPT_SMALL": "1"})
    t.expect("You [1]: ")
    t.line("What is 41 + 1?")
    t.expect("added `import time` and ran it again]")
    t.expect("42")
    t.expect("You [2]: ")
    assert t.close() == 0
    assert "```python" not in t.screen  # its code panel only, not the raw fence first
    assert t.screen.count("│ print(int(time.time() > 0) + 41)") == 1
    assert "definedadded" not in t.screen


def test_prompts_and_cells_are_numbered_apart(term):
    """Prompts are `You [n]`; a cell's result shows the kernel's own count (`Out [k]`), the number its
    traceback (`Cell In[k]`) and the exports (`In [k]`) use."""
    t = term([{"python": "print(1)"}, {"python": "1/0"}, "it failed", {"python": "print(2)"}, "two"])
    t.expect("You [1]: ")
    t.line("go")
    t.expect("Out [1] · ok")
    t.expect("Cell In[2]")
    t.expect("Out [2] · error")
    t.expect("You [2]: ")
    t.line("again")
    t.expect("Out [3] · ok")
    t.expect("You [3]: ")
    assert t.close() == 0
    assert "In [1]: " not in t.screen


def test_a_notebook_starts_the_chat_and_its_branch_is_replayed(term, tmp_path):
    """--notebook runs the notebook's code cells first (a figure, an error that does not stop the rest);
    the model's cells see their state; a branch without them lacks it, and switching back replays them."""
    import nbformat

    nb = tmp_path / "start.ipynb"
    cells = ["base = 40", "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()", "1 / 0", "print(base)"]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), str(nb))
    t = term([{"python": "print(base + 2)"}, "It is 42.", {"python": "print('base' in globals())"}, "no base",
              {"python": "print(base - 1)"}, "back"], "--notebook", str(nb))
    t.expect("cell 4 of 4 from the file")  # someone else's code: shown, and asked about once
    t.expect("from the file? ")
    t.send("y")
    t.expect("notebook start.ipynb: running its 4 code cells")
    t.expect("Out [3] · error")
    t.expect("Out [4] · ok")
    t.expect("start.ipynb is loaded: 4 cells ran, 1 with an error.")
    t.line("What is base + 2?")  # prompt 2: the notebook's exchange is prompt 1
    t.expect("It is 42.")
    t.line("/undo")
    t.expect("undone")
    t.line("/undo")
    t.expect("undone: back at prompt 0")
    t.line("is base there?")
    t.expect("False")
    t.expect("no base")
    t.expect("You [2]: ")
    t.line("/branches")
    t.expect("conversation")
    old = t.expect("● ")  # the active branch comes last
    m = re.search(r"○ ([0-9a-f]{10})", old)
    assert m, old
    branch = m.group(1)  # the notebook's branch
    t.line(f"/switch {branch}")
    t.expect("5 cell(s) replayed")
    t.line("and now?")
    t.expect("39")
    t.expect("back")
    t.line(f"/notebook {tmp_path / 'missing.ipynb'}")  # /notebook is the handler --notebook uses
    t.expect("missing.ipynb' is not a file; give the path of an .ipynb notebook")
    assert t.close() == 0
