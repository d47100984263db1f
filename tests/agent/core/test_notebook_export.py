"""The Jupyter notebook export: a real kernel, the scripted backend, and nbformat's own validator."""

import base64
import json

import nbformat
import pytest
from rich.console import Console

from agent.chat import Chat
from agent.core.notebook_export import cell_outputs, to_notebook
from agent.core.tree import CellRecord, Figure
from agent.frontends.commands import handle, parse
from agent.frontends.runner import run_tasks
from agent.frontends.tasks import parse_task
from agent.models.scripted import ScriptedBackend, python_call

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()"


def script() -> list:
    return [python_call("print('hello')\nimport sys; print('careful', file=sys.stderr)\n6 * 7"),
            python_call("1 / 0"), python_call(PLOT), "It is **42**.",
            python_call("'never'"), "Not run."]


def read(path) -> nbformat.NotebookNode:
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)  # raises on anything JupyterLab would refuse
    return nb


def test_conversation_exports_as_a_valid_notebook(tmp_path):
    approve = iter([True, True, True, False]).__next__
    with Chat(backend=ScriptedBackend(script()), workspace=tmp_path, approve=lambda code: approve()) as chat:
        list(chat.run("What is 6 * 7?"))
        list(chat.run("Once more"))
        path = chat.export("ipynb", tmp_path / "c.ipynb")
    nb = read(path)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.kernelchat.model == "local:scripted" and nb.metadata.kernelchat.usage.prompt_tokens > 0
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert md[1] == "**User**\n\nWhat is 6 * 7?" and "**Answer**\n\nIt is **42**." in md
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3, None]

    printed = code[0].outputs
    assert [(o.output_type, o.get("name")) for o in printed] == [
        ("stream", "stdout"), ("stream", "stderr"), ("execute_result", None)]
    assert printed[0].text == "hello\n" and printed[1].text == "careful\n"
    assert printed[2].data["text/plain"] == "42" and printed[2].execution_count == 1

    [err] = code[1].outputs
    assert err.output_type == "error" and err.ename == "ZeroDivisionError" and err.evalue == "division by zero"
    assert any("1 / 0" in line for line in err.traceback)

    [fig] = code[2].outputs  # no "[image saved: ...]" line beside the embedded image
    assert fig.output_type == "display_data"
    assert base64.b64decode(fig.data["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")

    assert code[3].source == "'never'" and code[3].outputs == []  # refused by the approval hook
    after = nb.cells[nb.cells.index(code[3]) + 1]
    assert after.cell_type == "markdown" and "Not run" in after.source


def test_derived_outputs_of_stored_records():
    svg = base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode()
    cell = CellRecord(code="x", status="ok", output="a\nb\nOut: {'k':\n 1}\n[image saved: /tmp/w/outputs/f.svg]\n"
                      "[image saved: /tmp/w/outputs/gone.png]\n[stdout was long and was cut; the full text is in x]",
                      figures=[Figure(mime="image/svg+xml", data=svg, name="f.svg")])
    outs = cell_outputs(cell)
    assert [o["output_type"] for o in outs] == ["stream", "execute_result", "display_data", "stream"]
    assert outs[0]["text"] == ["a\n", "b\n"] and outs[1]["data"]["text/plain"] == ["{'k':\n", " 1}"]
    # the kernel's SVG as an image of its bytes, never as markup a viewer would put into its page
    assert outs[2]["data"]["text/html"] == [f'<img alt="f.svg" src="data:image/svg+xml;base64,{svg}">']
    assert outs[3]["text"] == ["[image saved: /tmp/w/outputs/gone.png]\n", "[stdout was long and was cut; the full "
                               "text is in x]\n"]
    assert cell_outputs(CellRecord(code="pass", status="ok", output="[done, no output]")) == []
    printed = cell_outputs(CellRecord(code="print([1, 2])", status="ok", output="[1, 2]"))
    assert printed == [{"output_type": "stream", "name": "stdout", "text": ["[1, 2]\n"]}]  # output, not a note
    stopped = cell_outputs(CellRecord(code="time.sleep(60)", status="interrupted", output=(
        "KeyboardInterrupt   Traceback (most recent call last)\nCell In[3], line 1\n----> 1 time.sleep(60)\n"
        "KeyboardInterrupt: \n[interrupted]")))
    assert [o["output_type"] for o in stopped] == ["error", "stream"] and stopped[0]["ename"] == "KeyboardInterrupt"
    timeout = cell_outputs(CellRecord(code="while 1: pass", status="timeout", output="[timeout]"))
    assert timeout == [{"output_type": "stream", "name": "stderr", "text": ["[timeout]\n"]}]


def test_export_rejects_unknown_format(tmp_path):
    with Chat(backend=ScriptedBackend([]), workspace=tmp_path) as chat:
        with pytest.raises(ValueError, match="'md', 'html' or 'ipynb'"):
            chat.export("pdf", tmp_path / "x.pdf")


class View:
    """The part of the terminal chat /export uses."""

    def __init__(self, chat):
        self.chat, self.console, self.notices = chat, Console(file=open("/dev/null", "w")), []

    def notice(self, text: str) -> None:
        self.notices.append(text)


def test_export_command_writes_a_notebook(tmp_path):
    with Chat(backend=ScriptedBackend([python_call("print(2 + 2)"), "4"]), workspace=tmp_path) as chat:
        list(chat.run("2+2?"))
        view = View(chat)
        handle(view, parse(f"/export ipynb '{tmp_path / 'out dir' / 'c.ipynb'}'"))
    assert view.notices == [f"exported: {tmp_path / 'out dir' / 'c.ipynb'}"]
    nb = read(tmp_path / "out dir" / "c.ipynb")
    [code] = [c for c in nb.cells if c.cell_type == "code"]
    assert code.outputs[0].text == "4\n"


def test_empty_conversation_is_a_valid_notebook():
    from agent.core.store import ConversationFile
    from agent.core.tree import Tree
    nb = nbformat.from_dict(to_notebook(ConversationFile(id="x", model="m", tree=Tree())))
    nbformat.validate(nb)
    assert json.loads(nbformat.writes(nb))["cells"][0]["cell_type"] == "markdown"


def test_run_writes_transcript_ipynb(tmp_path):
    text = 'prompts = ["plot it"]\n[[checks]]\nanswer_contains = "done"\n'
    (tmp_path / "t.toml").write_text(text)
    task = parse_task(text, tmp_path / "t.toml")
    backend = ScriptedBackend([python_call(PLOT), "done"])
    [result] = run_tasks([task], tmp_path / "out", {task.name: backend}, show_progress=False)
    assert result.status == "passed", result
    nb = read(tmp_path / "out" / "t" / "transcript.ipynb")
    [code] = [c for c in nb.cells if c.cell_type == "code"]
    assert code.execution_count == 1 and "image/png" in code.outputs[0].data
