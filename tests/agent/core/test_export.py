"""The HTML and Markdown exports (and the notebook's agreement with them): a real kernel and the
scripted model for what cells produce, hand-built trees for outcomes, attempts and hostile text."""

import base64
import re

import nbformat
import pytest

from agent.chat import Chat
from agent.core import export
from agent.core.messages import Message, ToolCall, tool_result
from agent.core.notebook_export import notebook_json, to_notebook
from agent.core.store import ConversationFile
from agent.core.tree import CellRecord, Figure, Tree, TurnOutcome
from agent.models.scripted import ScriptedBackend, python_call

pytestmark = pytest.mark.timeout(120)

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()"
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
SVG = base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode()


def test_a_real_conversation_in_html_markdown_and_notebook(tmp_path):
    script = [python_call("print('hi')\n6 * 7"), python_call("1 / 0"), python_call(PLOT), f"It is 42 {HOSTILE}"]
    with Chat(backend=ScriptedBackend(script), workspace=tmp_path / "ws") as chat:
        (tmp_path / "ws").mkdir()
        list(chat.run("What is 6 * 7?"))
        counts = [n.cell.execution_count for n in chat.tree.cells()]
        page = chat.export("html", tmp_path / "c.html").read_text()
        md = chat.export("md", tmp_path / "out" / "c.md").read_text()
        nb = to_notebook(chat.conversation())
    assert counts == [1, 2, 3]  # the kernel's own counts, kept in the tree
    assert [m for m in re.findall(r"In \[(\d+)\]:", page)] == ["1", "2", "3"]
    assert [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"] == [1, 2, 3]

    # highlighted code, the error cell marked, the figure inlined without its "[image saved" line
    assert '<span class="mi">6</span>' in page and ".hl .mi" in page
    [err] = [part for part in page.split('<div class="cell') if part.startswith(' err">')]
    assert "ZeroDivisionError: division by zero" in err and "Error</span>" in err and "In [2]" in err
    assert "data:image/png;base64," in page and "[image saved" not in page
    # the answer marked, escaped; nothing runs, nothing is fetched
    assert '<div class="answer"><div class="label">Answer</div>It is 42 &lt;script&gt;' in page
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert re.findall(r'(?:src|href)="(?!data:)', page) == [] and "<link" not in page

    assert [m for m in re.findall(r"\*\*In \[(\d+)\]:\*\*", md)] == ["1", "2", "3"]
    assert "**Error**\n\n```text\n" in md and "ZeroDivisionError" in md
    assert "## Answer\n\nIt is 42" in md and "[image saved" not in md
    assert "![figure-" in md and "](c_files/figure-1.png)" in md
    assert (tmp_path / "out" / "c_files" / "figure-1.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def conversation(*turns, id="c1") -> ConversationFile:
    """A tree built by hand: each turn is a list of (message, node fields)."""
    tree = Tree()
    tree.add(Message(role="system", content="sys"))
    for turn in turns:
        for message, meta in turn:
            tree.add(message, **meta)
    return ConversationFile(id=id, model="m", tree=tree)


def call(code: str, cid: str, **meta):
    return Message(role="assistant", tool_calls=[ToolCall(id=cid, name="python", arguments="{}")]), meta


def result(cid: str, cell: CellRecord, **meta):
    return tool_result(cid, cell.output, name="python"), {"cell": cell, **meta}


def test_outcomes_attempts_and_hostile_text_in_every_export(tmp_path):
    stopped = TurnOutcome(status="stopped", note="stopped after 5 attempts without printing a value")
    conv = conversation(
        [(Message(role="user", content=f"q1 {HOSTILE}"), {}),
         call("x", "a", label="attempt 5", alternative=True),
         result("a", CellRecord(code="x", status="ok", output="nonsense"), outcome=stopped)],
        [(Message(role="user", content="q2"), {}),
         (Message(role="assistant", content="half an answer"), {"outcome": TurnOutcome(status="interrupted")})],
        [(Message(role="user", content="q3"), {"outcome": TurnOutcome(status="budget", note="budget exceeded: $1")})],
        id=f"</title>{HOSTILE}")
    page = export.to_html(conv)
    md, files = export.markdown(conv, "f")
    nb = nbformat.reads(notebook_json(conv), as_version=4)  # sources joined, as Jupyter reads them
    nbformat.validate(nb)
    notebook_md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for text in (page, md, notebook_md):
        assert "attempt 5" in text
        assert "Turn ended: stopped after 5 attempts without printing a value" in text
        assert "Turn ended: interrupted" in text and "Turn ended: budget exceeded: $1" in text
    # no turn ended in an answer: nothing is marked as one
    assert 'class="answer"' not in page and "## Answer" not in md and "**Answer**" not in notebook_md
    assert "## Assistant\n\nhalf an answer" in md
    assert "<script" not in page.lower() and "&lt;/title&gt;" in page and files == {}


def test_cells_numbered_by_the_kernel_else_by_position():
    conv = conversation([
        (Message(role="user", content="q"), {}),
        call("a", "1"), result("1", CellRecord(code="a", status="ok", output="1")),  # older file: no count
        call("b", "2"), result("2", CellRecord(code="b", status="rejected", output="no", executed=False)),
        call("c", "3"), result("3", CellRecord(code="c", status="ok", output="3", execution_count=7)),
        call("d", "4"), result("4", CellRecord(code="d", status="timeout", output="[timeout]")),
        (Message(role="assistant", content="done"), {})])
    page = export.to_html(conv)
    assert re.findall(r"(In \[\d+\]|Not run):", page) == ["In [1]", "Not run", "In [7]", "In [8]"]
    assert page.count('<div class="cell err">') == 1 and "Timed out" in page
    nb = to_notebook(conv)
    assert [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"] == [1, None, 7, 8]


def test_markdown_files_fences_and_a_planted_link(tmp_path):
    cell = CellRecord(code="s = '````'\nplot()", status="ok",
                      output="shown\n[image saved: /tmp/w/outputs/a.svg]\n[image saved: /tmp/w/outputs/gone.png]",
                      images=["/tmp/w/outputs/a.svg", "/tmp/w/outputs/gone.png"],
                      figures=[Figure(mime="image/svg+xml", data=SVG, name="a.svg")])
    conv = conversation([(Message(role="user", content="q"), {}), call("x", "1"), result("1", cell),
                         (Message(role="assistant", content="ok"), {})])
    md, files = export.markdown(conv, "my files")
    assert "`````python\ns = '````'\nplot()\n`````" in md  # the code cannot close its fence
    assert "![a.svg](my%20files/figure-1.svg)" in md and files == {"my files/figure-1.svg": base64.b64decode(SVG)}
    # the stored figure's line is gone, the one without bytes stays, named
    assert "[image saved: /tmp/w/outputs/a.svg]" not in md and "[image saved: /tmp/w/outputs/gone.png]" in md
    assert "[image: /tmp/w/outputs/gone.png]" in md

    export.write_markdown(tmp_path / "c.md", conv)
    export.write_markdown(tmp_path / "c.md", conv)  # again, into the folder it made
    assert (tmp_path / "c_files" / "figure-1.svg").read_bytes() == base64.b64decode(SVG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "d_files").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="d_files: it exists and is not a folder"):
        export.write_markdown(tmp_path / "d.md", conv)
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "d.md").exists()


def test_markdown_again_under_the_same_name_leaves_no_figure_of_the_longer_export(tmp_path):
    def with_figures(n: int) -> ConversationFile:
        turn = [(Message(role="user", content="q"), {})]
        for i in range(n):
            cell = CellRecord(code="plot()", status="ok", output="",
                              figures=[Figure(mime="image/svg+xml", data=SVG, name=f"p{i}.svg")])
            turn += [call("plot()", f"c{i}"), result(f"c{i}", cell)]
        return conversation(turn)

    export.write_markdown(tmp_path / "c.md", with_figures(3))
    folder = tmp_path / "c_files"
    assert sorted(p.name for p in folder.iterdir()) == ["figure-1.svg", "figure-2.svg", "figure-3.svg"]
    (folder / "notes.txt").write_text("mine")  # not a name the export writes: kept
    outside = tmp_path / "outside.svg"
    outside.write_text("not the export's")
    (folder / "figure-3.svg").unlink()
    (folder / "figure-3.svg").symlink_to(outside)  # a planted link: removed, its target kept
    export.write_markdown(tmp_path / "c.md", with_figures(1))
    assert sorted(p.name for p in folder.iterdir()) == ["figure-1.svg", "notes.txt"]
    assert outside.read_text() == "not the export's"
    export.write_markdown(tmp_path / "c.md", with_figures(0))  # no images now: the old ones go too
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
