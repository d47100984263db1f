"""Issue 12 through the whole loop, with real kernels and the scripted model: exports that a planted
link cannot leak into, tool output of any size, and a time budget that bounds a cell."""

import base64
import time

import pytest

from agent import Budget, BudgetExceeded, Chat

from agent.core import export, store
from agent.models.scripted import ScriptedBackend, python_call
from agent.core.events import ToolOutputEvent, ToolResultEvent
from tools.text import MAX_MESSAGE_CHARS

pytestmark = pytest.mark.timeout(120)

SENTINEL = "KC-SENTINEL-7f3a host secret"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()"


def test_exports_inline_the_figure_bytes_not_a_link_planted_in_their_place(tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text(SENTINEL)
    ws = tmp_path / "ws"
    ws.mkdir()
    path = tmp_path / "c.json"
    with Chat(backend=ScriptedBackend([python_call(PLOT), "made a plot"]), workspace=ws, path=path) as chat:
        events = list(chat.run("plot"))
        [result] = [e for e in events if isinstance(e, ToolResultEvent)]
        [figure_path] = result.images
        real = open(figure_path, "rb").read()
        assert real.startswith(b"\x89PNG")
        # the sandboxed code swaps the saved figure for a link to a host file
        swap = chat.kernel().execute(
            "import glob, os\np = sorted(glob.glob('outputs/figure-*'))[0]\n"
            f"os.remove(p); os.symlink({str(secret)!r}, p); print(os.readlink(p))")
        assert swap.stdout.strip() == str(secret)
        md = chat.export("md", tmp_path / "c.md").read_text()
        pages = [chat.export("html", tmp_path / "c.html").read_text()]
    pages.append(export.to_html(Chat.load(path, backend=ScriptedBackend([])).conversation()))  # as saved
    sentinel_b64 = base64.b64encode(SENTINEL.encode()).decode()[:16]
    for page in pages:
        assert SENTINEL not in page and sentinel_b64 not in page
        assert base64.b64encode(real).decode() in page and "data:image/png;base64," in page
    # the Markdown links a copy of the bytes the tree kept, written beside it
    assert "](c_files/figure-1.png)" in md and SENTINEL not in md
    assert (tmp_path / "c_files" / "figure-1.png").read_bytes() == real


def test_an_older_file_with_only_paths_names_them_and_reads_none(tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text(SENTINEL)
    link = tmp_path / "figure-0001.png"
    link.symlink_to(secret)
    path = tmp_path / "old.json"
    with Chat(backend=ScriptedBackend([python_call("print(1)"), "ok"]), workspace=tmp_path / "ws", path=path) as chat:
        (tmp_path / "ws").mkdir()
        chat("go")
        cell = chat.tree.cells()[-1].cell
        cell.images, cell.figures = [str(link)], []  # what a file of the previous version holds
        chat.save()
    conv = store.load(path)
    md, page = export.markdown(conv, "old_files")[0], export.to_html(conv)
    assert f"[image: {link}]" in md and "not stored in this conversation" in page
    assert SENTINEL not in md + page


def test_a_2mb_last_expression_does_not_overflow_this_turn_or_the_next(tmp_path):
    # every field at its cap at once: stdout, stderr, the last expression
    code = "import sys\nprint('a' * 100_000)\nprint('e' * 100_000, file=sys.stderr)\n'x' * 2_000_000"
    backend = ScriptedBackend([python_call(code), "it is long", "second answer"])
    backend.context_window = 3000  # tokens in the scripted count (about 4 characters each)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events = list(chat.run("make a long string"))
        [result] = [e for e in events if isinstance(e, ToolResultEvent)]
        assert len(result.output) <= MAX_MESSAGE_CHARS and "xxxx" in result.output
        assert events[-1].text == "it is long"
        sent = backend.requests[1][-1]
        assert sent.role == "tool" and sent.content.startswith("[elided: ") and "print less" in sent.content
        assert chat("and now?") == "second answer"  # a later prompt is not poisoned by it
        assert all(backend.count_prompt_tokens(r) <= 3000 for r in backend.requests)
        saved = [m.content for m in chat.messages() if m.role == "tool"][0]
        assert len(saved) <= MAX_MESSAGE_CHARS  # the conversation file stays bounded too


def test_a_tool_returning_5mb_becomes_one_bounded_message(tmp_path):
    def dump(n: int) -> str:
        """Return n characters."""
        return "y" * n + "THE END"

    call = python_call("x")
    call.tool_calls[0].name, call.tool_calls[0].arguments = "dump", '{"n": 5000000}'
    backend = ScriptedBackend([call, "ok"])
    with Chat(backend=backend, tools=[dump], workspace=tmp_path) as chat:
        assert chat("dump it") == "ok"
        sent = backend.requests[1][-1].content
        assert len(sent) <= MAX_MESSAGE_CHARS and sent.endswith("THE END") and "characters cut" in sent


def test_a_cell_gets_at_most_the_time_the_budget_leaves(tmp_path):
    backend = ScriptedBackend([python_call("import time\nprint('start', flush=True)\ntime.sleep(60)"), "never"])
    with Chat(backend=backend, budget=Budget(max_seconds=4), timeout=120, workspace=tmp_path) as chat:
        start = time.monotonic()
        events = []
        with pytest.raises(BudgetExceeded, match="time budget reached"):
            for ev in chat.run("sleep"):
                events.append(ev)
        took = time.monotonic() - start
        assert took < 4 + 5  # the budget plus the interrupt's grace, not the cell's 120 s timeout
        [result] = [e for e in events if isinstance(e, ToolResultEvent)]
        assert result.status == "timeout" and "all the time budget (max_seconds=4) had left" in result.output
        assert any(isinstance(e, ToolOutputEvent) and e.stream == "notice" and "time budget" in e.text
                   for e in events)
        assert len(backend.requests) == 1


def test_the_time_budget_counts_requests_and_cells_not_idle_time(tmp_path):
    backend = ScriptedBackend([python_call("import time\ntime.sleep(1)"), "slept", "still here",
                               python_call("time.sleep(5)"), "never"])
    with Chat(backend=backend, budget=Budget(max_seconds=3), workspace=tmp_path) as chat:
        chat.kernel()  # started outside any request or cell: not counted
        assert chat.tracker.elapsed == 0
        assert chat("sleep a bit") == "slept"
        busy = chat.tracker.elapsed
        assert 1 <= busy < 3  # the cell's time counted
        time.sleep(3.5)  # at the prompt, longer than the whole budget: not the budget's
        assert chat.tracker.elapsed == busy
        assert chat("a question after reading") == "still here"
        with pytest.raises(BudgetExceeded, match="time budget reached"):
            chat("sleep again")  # this cell uses up what was left, and the next request is refused
