"""No control sequence of the model or the kernel reaches the terminal.

Each family (OSC title / OSC 52 clipboard / OSC 8 hyperlink, RIS, private CSI, DCS / APC / PM / SOS
strings, 8-bit C1 controls, bidi overrides) is planted in the model's text and in the kernel's
output (stdout, stderr, the result, the error and traceback, file names), rendered through the
real paths (EventPrinter, `kernelchat "..."`, `kernelchat exec`, `kernelchat run`) into a console
that believes it is a terminal, and the bytes written are searched for the raw sequences.
The terminal chat (a real pty) is tested in test_repl.py with the same payloads."""

from __future__ import annotations

import io
import json
import re
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from agent import Chat
from agent.frontends import cli
from agent.frontends.commands import handle, parse
from agent.models.scripted import ScriptedBackend, python_call
from agent.core.events import AnswerEvent, NoticeEvent, TextEvent, ToolCallEvent, ToolOutputEvent, ToolResultEvent
from agent.core.messages import Message, ToolCall
from agent.frontends.render import EventPrinter, live_line, safe_line, safe_text
from tools.mcp_client import tool_name

# Each: (family, the raw sequence). The payload words make a hit unmistakable.
FAMILIES = {
    "osc-title": "\x1b]0;PWNED-TITLE\x07",
    "osc52-clipboard": "\x1b]52;c;cm0gLXJmIH4=\x07",
    "osc8-hyperlink": "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\",
    "ris": "\x1bc",
    "private-csi": "\x1b[?1049h\x1b[?25l\x1b[?1000h",
    "dcs": "\x1bP+q544e\x1b\\",
    "apc": "\x1b_PWNED-APC\x1b\\",
    "pm": "\x1b^PWNED-PM\x1b\\",
    "sos": "\x1bXPWNED-SOS\x1b\\",
    "c1-csi": "\x9b?1049h",
    "c1-osc": "\x9d0;PWNED-C1\x9c",
    "c1-dcs": "\x90PWNED-C1DCS\x9c",
    "sgr": "\x1b[31mRED\x1b[0m",
    "bidi": "abc\u202edcba\u2066x\u2069",
}
HOSTILE = "".join(FAMILIES.values())


def raw_hits(out: str) -> list[str]:
    """The planted sequences (or their lead-ins) found raw in terminal output."""
    found = [name for name, seq in FAMILIES.items() if seq in out]
    lead_ins = ["\x1b]0;PWNED", "\x1b]52;", "\x1b]8;;http://evil", "\x1bc", "\x1b[?1049h", "\x1b[?1000h",
                "\x1bP+q", "\x1b_PWNED", "\x1b^PWNED", "\x1bXPWNED", "\x1b[31mRED"]
    found += [repr(s) for s in lead_ins if s in out]
    found += [f"C1 {c!r}" for c in sorted(set(re.findall(r"[\x80-\x9f\u202a-\u202e\u2066-\u2069]", out)))]
    return found


def own_escapes_only(out: str) -> None:
    """Everything left once rich's own SGR colours are removed is printable (plus newline/tab)."""
    bare = re.sub(r"\x1b\[[0-9;]*m", "", out)
    bad = sorted({c for c in bare if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0})
    assert not bad, f"control characters reached the terminal: {bad!r}"


def terminal_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, color_system="truecolor", width=100), buf


# -- the one function ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_safe_text_shows_every_family_and_obeys_none(name):
    seq = FAMILIES[name]
    shown = safe_text(f"before {seq} after")
    assert not raw_hits(shown) and "\x1b" not in shown, shown
    assert shown.startswith("before ") and shown.endswith(" after")  # nothing is dropped
    if "\x1b" in seq:
        assert "␛" in shown  # made visible, not deleted: the user sees that something was there
    assert safe_text(shown) == shown  # idempotent: safe twice is the same


def test_newlines_tabs_and_carriage_returns():
    assert safe_text("a\tb\nc\r\nd") == "a\tb\nc\nd"
    # A lone \r would let a program overwrite a line and hide what was there: shown, text kept.
    assert safe_text("rm -rf ~\rharmless") == "rm -rf ~␍harmless"
    assert safe_line("two\nlines\tx") == "two␊lines␉x"
    # Only the transient live view follows \r (progress bars animate); still no controls.
    assert live_line(" 10%|#  \r 20%|## \x1b]0;T\x07") == " 20%|## ␛]0;T␇"


# -- the renderer, into a console that believes it is a terminal ----------------------------------

def test_event_printer_renders_no_raw_sequence():
    console, buf = terminal_console()
    p = EventPrinter(console)
    p(TextEvent(text="streamed " + HOSTILE))
    p(ToolCallEvent(id="1", name="python", code=f"print(1)  # {HOSTILE}"))
    p(ToolCallEvent(id="2", name=f"tool{HOSTILE}", arguments=f'{{"a": "{HOSTILE}"}}'))
    p(ToolOutputEvent(id="1", stream="stdout", text=HOSTILE))
    p(ToolResultEvent(id="1", name="python", status="error", output=f"out {HOSTILE}\nTraceback {HOSTILE}"))
    p(NoticeEvent(text=f"notice {HOSTILE}"))
    # Markdown: the text, a link whose target differs from its words, and entities of controls.
    p(AnswerEvent(text=f"**answer** {HOSTILE} [docs](http://evil.example/x) &#x9b;&#27;&#x202e;", steps=1))
    out = buf.getvalue()
    assert not raw_hits(out), raw_hits(out)
    own_escapes_only(out)
    assert "\x1b]8;" not in out  # no hyperlink at all: the address is shown as text instead
    assert "http://evil.example/x" in out and "␛]0;PWNED-TITLE" in out and "\\x9b?1049h" in out


def test_rich_alone_would_pass_them_through():
    """The reason for all this: rich writes these sequences as they are."""
    console, buf = terminal_console()
    from rich.text import Text

    console.print(Text(HOSTILE))
    assert "\x1b]0;PWNED-TITLE" in buf.getvalue() and "\x9b" in buf.getvalue()


# -- the one-shot CLI and `kernelchat exec` ---------------------------------------------------------

@pytest.fixture
def scripted(monkeypatch):
    """Every model the CLI asks for is this scripted one; rich believes stdout is a terminal."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("NO_COLOR", raising=False)

    def use(replies: list) -> None:
        def backend(*args, **kwargs):
            return ScriptedBackend(list(replies))

        monkeypatch.setattr("agent.chat.get_backend", backend)
        monkeypatch.setattr("agent.models.get_backend", backend)

    return use


RAW_REPR = f"class R:\n    def __repr__(self):\n        return {HOSTILE!r}\nR()"  # a result shown raw by its repr
CELL = (f"# a comment {HOSTILE}\n"
        "import sys\n"
        f"print({HOSTILE!r})\n"
        f"print({HOSTILE!r}, file=sys.stderr)\n"
        f"open({('file' + HOSTILE[:12])!r}, 'w').write('x')\n"
        f"raise ValueError({HOSTILE!r})\n")


@pytest.mark.timeout(120)
def test_one_shot_cli(scripted, capsys, tmp_path):
    scripted([python_call(CELL), python_call(RAW_REPR), f"The answer: {HOSTILE} [x](http://evil.example/)"])
    code = cli.main(["What now?", "--workspace", str(tmp_path), "--no-save"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ValueError" in out and "PWNED-TITLE" in out  # it was all shown...
    assert not raw_hits(out + err), raw_hits(out + err)  # ...and none of it obeyed
    own_escapes_only(out + err)


@pytest.mark.timeout(120)
def test_exec(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    code = cli.main(["exec", CELL, "--workspace", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1 and "ValueError" in out and "PWNED-TITLE" in out
    assert not raw_hits(out + err), raw_hits(out + err)
    own_escapes_only(out + err)


@pytest.mark.timeout(60)
def test_error_messages_are_one_line_and_safe(capsys, tmp_path):
    """An error quoting a hostile name: no markup taken from it, no control obeyed."""
    assert cli.main(["tokens", str(tmp_path / f"x[/red]{HOSTILE}.json")]) == 2
    err = capsys.readouterr().err
    assert "no such request file" in err and "[/red]" in err
    assert not raw_hits(err), raw_hits(err)


# -- `kernelchat run` ------------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_run_progress_table_and_failures(scripted, capsys, tmp_path):
    hostile_call = Message(role="assistant", tool_calls=[ToolCall(id="c1", name=f"py{HOSTILE}", arguments="{}")])
    falsy = "class V:\n    def __repr__(self):\n        return %r\n    def __bool__(self):\n        return False\nv = V()"
    scripted([hostile_call, python_call(falsy % HOSTILE),
              f"done {HOSTILE}"])
    task = tmp_path / "t[red]x.toml"  # a name that is rich markup: shown as written
    task.write_text('prompts = ["go"]\n[[checks]]\nkernel = "v"\n[[checks]]\nanswer_matches = "[a-z]+ nope"\n')
    code = cli.main(["run", str(task), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "check failed" in out and "v = ␛]0;PWNED-TITLE" in out  # the kernel's repr, shown
    assert "[a-z]+ nope" in out and "t[red]x" in out and "t[red]x: " in err  # as written, not markup
    assert not raw_hits(out + err), raw_hits(out + err)
    own_escapes_only(re.sub(r"\x1b\[\?25[lh]|\r|\x1b\[2K|\x1b\[1A", "", out + err))  # rich's live display


# -- an MCP server's words -------------------------------------------------------------------------

MCP_SERVER = Path(__file__).resolve().parents[2] / "data" / "mcp_test_server.py"


@pytest.mark.timeout(120)
def test_an_mcp_servers_names_descriptions_progress_and_results_are_shown_safe(scripted, capsys, tmp_path):
    """A hostile MCP server (tests/data/mcp_test_server.py --hostile) puts control sequences and rich
    markup in its tool names, descriptions, progress messages, results and errors; another one in
    its last words on stderr. The one shot and /tools show them as text."""
    servers = {"h": {"command": sys.executable, "args": [str(MCP_SERVER), "--hostile"]},
               "x": {"command": sys.executable, "args": [str(MCP_SERVER), "--hostile-exit"]}}
    (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": servers}))
    payload = runpy.run_path(str(MCP_SERVER))["HOSTILE"]
    evil = tool_name("h", f"evil{payload}")  # the name the chat offers: characters a model API takes
    calls = [Message(role="assistant", tool_calls=[ToolCall(id="c1", name=evil, arguments="{}")]),
             Message(role="assistant", tool_calls=[ToolCall(id="c2", name="h__evil_error", arguments="{}")]),
             "done"]
    scripted(calls)
    code = cli.main(["--mcp", str(tmp_path / "mcp.json"), "--no-save", "--isolation", "none",
                     "--workspace", str(tmp_path / "w"), "go"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "1/2 working" in out and "│\x1b[0m result" in out and out.count("␛]0;PWNED-TITLE") >= 2  # shown...
    assert "h__evil_error reported an error" in out
    assert "MCP server 'x'" in out + err and "PWNED-TITLE" in out + err  # its last words, shown
    assert not raw_hits(out + err), raw_hits(out + err)  # ...and none of it obeyed
    own_escapes_only(re.sub(r"\x1b\[\?25[lh]|\r|\x1b\[2K|\x1b\[1A", "", out + err))

    with Chat(backend=ScriptedBackend([]), workspace=tmp_path / "w", progress=False, mcp_servers=servers) as chat:
        console, buf = terminal_console()
        handle(SimpleNamespace(chat=chat, console=console), parse("/tools"))
    shown = buf.getvalue()
    assert "Looks harmless." in shown and "PWNED-TITLE" in shown
    assert not raw_hits(shown), raw_hits(shown)
    own_escapes_only(shown)
