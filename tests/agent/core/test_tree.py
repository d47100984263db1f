"""Cell records keep what the kernel returned as fields (real kernels, a scripted model); records
of files written before those fields still load, tell an interrupt apart and export as before."""

import json
import threading
import time

import nbformat

from agent import Chat
from agent.core import store
from agent.core.events import ToolCallEvent
from agent.core.notebook_export import cell_outputs, notebook_json, to_notebook
from agent.core.tree import CellError, CellRecord, returned
from agent.models.scripted import ScriptedBackend, python_call
from sandbox import ExecResult

PRINTS = "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n6 * 7"
RAISES = "print('before')\nraise ValueError('bad value')"
SLEEPS = "import time\nopen('started', 'w').close()\ntime.sleep(60)  # interrupt"


def interrupt_when_started(chat, workspace):
    """An on_event hook that interrupts the sleeping cell once it has begun (the file says so)."""
    def watch():
        deadline = time.monotonic() + 120
        while not (workspace / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        chat.started_kernel.interrupt()

    def hook(ev):
        if isinstance(ev, ToolCallEvent) and ev.code and "# interrupt" in ev.code:
            threading.Thread(target=watch, daemon=True).start()
    return hook


def test_records_keep_the_kernels_fields_and_the_notebook_is_made_of_them(tmp_path):
    script = [python_call(PRINTS), python_call(RAISES), python_call(SLEEPS), "done"]
    with Chat(backend=ScriptedBackend(script), workspace=tmp_path / "ws") as chat:
        (tmp_path / "ws").mkdir()
        chat.save(tmp_path / "c.json")
        chat("go", on_event=interrupt_when_started(chat, tmp_path / "ws"))
    conv = store.load(tmp_path / "c.json")  # the fields survive the file
    printed, raised, stopped = [n.cell for n in conv.tree.cells()]

    assert (printed.stdout, printed.stderr, printed.result, printed.error) == ("to out\n", "to err\n", "42", None)
    assert printed.has_fields and printed.output == "to out\n[stderr]\nto err\nOut: 42"  # the model's text, as before
    assert raised.stdout == "before\n" and raised.result is None
    assert (raised.error.name, raised.error.value) == ("ValueError", "bad value")
    assert any("raise ValueError" in line for line in raised.error.traceback) and raised.completed
    assert stopped.status == "interrupted" and stopped.error.name == "KeyboardInterrupt" and not stopped.completed

    nb = nbformat.reads(notebook_json(conv), as_version=4)  # multi-line strings joined, as a viewer reads them
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [(o.output_type, o.get("name")) for o in code[0].outputs] == [
        ("stream", "stdout"), ("stream", "stderr"), ("execute_result", None)]
    assert [o.text for o in code[0].outputs[:2]] == ["to out\n", "to err\n"]
    assert code[0].outputs[2].data["text/plain"] == "42" and code[0].outputs[2].execution_count == 1
    out, err = code[1].outputs
    assert out.text == "before\n" and (err.output_type, err.ename, err.evalue) == ("error", "ValueError", "bad value")
    assert err.traceback == raised.error.traceback
    assert [o.get("ename") for o in code[2].outputs if o.output_type == "error"] == ["KeyboardInterrupt"]


def test_each_field_is_bounded():
    res = ExecResult(status="error", stdout="o" * 500, stderr="e" * 500, result="r" * 500, error_name="E",
                     error_value="v" * 500, traceback="\n".join(["t" * 50] * 20), stdout_file="/w/out.txt")
    fields = returned(res, limit=100)
    assert all(len(fields[k]) <= 100 for k in ("stdout", "stderr", "result"))
    assert len(fields["error"].value) <= 100 and len("\n".join(fields["error"].traceback)) <= 100
    assert fields["notes"] == ["[stdout was long and was cut; the full text is in /w/out.txt]"]


def test_an_interrupt_is_told_by_the_error_name():
    ran = dict(code="time.sleep(9)", output="KeyboardInterrupt: ", stdout="", stderr="")
    assert not CellRecord(status="error", error=CellError(name="KeyboardInterrupt"), **ran).completed
    assert CellRecord(status="error", error=CellError(name="ValueError"), **ran).completed
    # a record with fields is judged by them, not by what its text says
    assert CellRecord(code="print('KeyboardInterrupt')", status="ok", output="KeyboardInterrupt", stdout="").completed


OLD = [  # cells as files written before the kernel's fields were kept have them
    {"code": "print('a')\n6 * 7", "status": "ok", "output": "a\n[stderr]\nw\nOut: 42", "duration": 0.1},
    {"code": "1 / 0", "status": "error", "output": "Traceback (most recent call last)\n"
     "Cell In[2], line 1\n----> 1 1 / 0\nZeroDivisionError: division by zero", "execution_count": 2},
    {"code": "time.sleep(60)", "status": "error", "output": "KeyboardInterrupt   Traceback (most recent call "
     "last)\nCell In[3], line 1\n----> 1 time.sleep(60)\nKeyboardInterrupt: "},
]


def old_file(tmp_path):
    def node(id_, parent, message, cell=None):
        return {"id": id_, "parent": parent, "message": message, **({"cell": cell} if cell else {})}
    nodes = [node("s", None, {"role": "system", "content": "sys"}), node("u", "s", {"role": "user", "content": "hi"})]
    for i, cell in enumerate(OLD):
        arguments = json.dumps({"code": cell["code"]})
        nodes.append(node(f"a{i}", nodes[-1]["id"], {"role": "assistant", "tool_calls": [
            {"id": f"c{i}", "name": "python", "arguments": arguments}]}))
        nodes.append(node(f"t{i}", f"a{i}", {"role": "tool", "tool_call_id": f"c{i}", "name": "python",
                                             "content": cell["output"]}, cell))
    tree = {"nodes": {n["id"]: n for n in nodes}, "root": "s", "leaf": nodes[-1]["id"]}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": store.FORMAT, "id": "old", "model": "m", "tree": tree}))
    return path


def test_an_old_format_file_loads_and_exports_as_before(tmp_path):
    conv = store.load(old_file(tmp_path))
    cells = [n.cell for n in conv.tree.cells()]
    assert [c.has_fields for c in cells] == [False] * 3 and [c.stdout for c in cells] == [None] * 3
    assert [c.completed for c in cells] == [True, True, False]  # the traceback still tells the interrupt
    assert [(o["output_type"], o.get("name")) for o in cell_outputs(cells[0])] == [
        ("stream", "stdout"), ("stream", "stderr"), ("execute_result", None)]
    [err] = cell_outputs(cells[1])
    assert (err["ename"], err["evalue"]) == ("ZeroDivisionError", "division by zero")
    nbformat.validate(nbformat.from_dict(to_notebook(conv)))
    # saved again, it keeps no field it did not have: the fields stay None
    store.save(tmp_path / "again.json", conv)
    assert not any(n.cell.has_fields for n in store.load(tmp_path / "again.json").tree.cells())
