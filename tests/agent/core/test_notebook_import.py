"""A notebook as the starting point: its code cells run in a real kernel through the python tool,
become the branch's first exchange, reach the model, and are replayed when the branch comes back."""

from __future__ import annotations

import json

import nbformat
import pytest

from agent.chat import Chat
from agent.core.events import ToolResultEvent
from agent.core.notebook_import import notebook_cells, notebook_events
from agent.models.scripted import ScriptedBackend, python_call

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()"


def write_notebook(path, sources: list[str]):
    cells = [nbformat.v4.new_markdown_cell("# A title: not sent")]
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(path))
    return path


def test_the_cells_run_first_and_the_model_sees_them(tmp_path):
    nb = write_notebook(tmp_path / "start.ipynb", ["x = 20\nprint('x set')", "1 / 0", PLOT, "", "%time y = x + 1",
                                                   "y * 2"])
    backend = ScriptedBackend([python_call("print(x + y)"), "It is 41."])
    with Chat(backend=backend, workspace=tmp_path, notebook=nb) as chat:
        [user, calls, *results, closing] = chat.messages()[1:]
        assert user.content == "Loaded notebook start.ipynb: its 5 code cells were run"  # the empty cell left out
        assert [json.loads(c.arguments)["code"] for c in calls.tool_calls][0] == "x = 20\nprint('x set')"
        assert len(results) == 5 and "x set" in results[0].content and "ZeroDivisionError" in results[1].content
        assert "42" in results[4].content  # the error did not stop the cells after it; %time ran as a magic
        assert closing.content == "The notebook start.ipynb is loaded: 5 cells ran, 1 with an error."
        cells = [n.cell for n in chat.tree.cells()]
        assert [c.status for c in cells] == ["ok", "error", "ok", "ok", "ok"] and cells[2].images  # the figure
        assert chat("What is x + y?") == "It is 41."
        first = backend.requests[0]
        assert [m.role for m in first[1:]] == ["user", "assistant"] + ["tool"] * 5 + ["assistant", "user"]
        assert "41" in chat.messages()[-2].content  # the model's cell ran in the notebook's state


def test_switching_away_and_back_replays_the_notebook(tmp_path):
    nb = write_notebook(tmp_path / "nb.ipynb", ["secret = 'from the notebook'"])
    script = [python_call("print(secret)"), "done", python_call("print('secret' in globals())"), "done"] * 2
    with Chat(backend=ScriptedBackend(script), workspace=tmp_path, progress=False) as chat:
        list(notebook_events(chat, nb))
        chat("use it")
        assert "from the notebook" in chat.messages()[-2].content
        with_notebook = chat.tree.leaf
        chat.edit(0, "start again without it")  # a branch before the notebook's exchange
        assert chat.messages()[-2].content.strip() == "False"
        chat.switch(with_notebook)
        chat("and again")
        assert "from the notebook" in chat.messages()[-2].content  # the kernel replayed the notebook's cell


@pytest.mark.parametrize("content, says", [
    ("not json", "is not a Jupyter notebook"),
    (json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": [{"cell_type": "code", "source": "x"}]}),
     "is not a valid notebook"),
])
def test_a_bad_notebook_is_one_sentence_naming_it(tmp_path, content, says):
    bad = tmp_path / "bad.ipynb"
    bad.write_text(content)
    with pytest.raises(ValueError, match=says) as e:
        notebook_cells(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="is not a file"):
        Chat(backend=ScriptedBackend([]), workspace=tmp_path, notebook=tmp_path / "missing.ipynb")


def test_events_are_those_of_a_turn(tmp_path):
    nb = write_notebook(tmp_path / "nb.ipynb", ["print(1)", "2"])
    with Chat(backend=ScriptedBackend([]), workspace=tmp_path) as chat:
        results = [e for e in notebook_events(chat, nb) if isinstance(e, ToolResultEvent)]
        assert [r.execution_count for r in results] == [1, 2] and chat.last_outcome.status == "answered"
