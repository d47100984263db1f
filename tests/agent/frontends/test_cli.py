"""The one-shot CLI and `kernelchat exec` as a user sees them (scripted model, real kernels): result
panels numbered as the kernel counts, a stop said once, a notebook as the starting point, and a
temporary workspace with files kept and named."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from agent.frontends import cli
from agent.models.scripted import ScriptedBackend, python_call


@pytest.fixture
def model(monkeypatch):
    """The one shot's model: scripted, recording its requests (None: it must not load)."""
    backends: list[ScriptedBackend] = []

    def use(replies: list | None) -> list[ScriptedBackend]:
        def make(*args, **kwargs):
            assert replies is not None, "the model was loaded"
            backends.append(ScriptedBackend(list(replies)))
            return backends[-1]

        monkeypatch.setattr("agent.chat.get_backend", make)
        return backends

    return use


def screen(capsys) -> tuple[str, str]:
    out, err = capsys.readouterr()
    return " ".join(out.split()), " ".join(err.split())


def test_result_panels_show_the_kernels_count_as_the_chat_does(model, capsys, tmp_path):
    model([python_call("print(1)"), python_call("1 / 0"), "done"])
    assert cli.main(["go", "--no-save", "--workspace", str(tmp_path)]) == 0
    out, _ = screen(capsys)
    assert "Out [1] · ok" in out and "Out [2] · error" in out and "Cell In[2]" in out


def test_a_max_steps_stop_is_shown_once(model, capsys, tmp_path):
    model([python_call("1"), python_call("2")])
    assert cli.main(["loop", "--no-save", "--max-steps", "1", "--workspace", str(tmp_path)]) == 0
    out, _ = screen(capsys)
    assert out.count("stopped after 1 steps without a final answer") == 1 and "stopped: step limit" in out
    assert "max_steps (" not in out


def notebook(path: Path) -> Path:
    cells = [nbformat.v4.new_code_cell("base = 40"), nbformat.v4.new_code_cell("undefined_name")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), str(path))
    return path


def test_a_notebook_runs_first_and_the_model_sees_it(model, capsys, tmp_path):
    backends = model([python_call("print(base + 2)"), "It is 42."])
    nb = notebook(tmp_path / "start.ipynb")
    assert cli.main(["What is base + 2?", "--notebook", str(nb), "--no-save", "--workspace", str(tmp_path)]) == 0
    out, _ = screen(capsys)
    assert "notebook start.ipynb: running its 2 code cells" in out and "Out [2] · error" in out
    assert "The notebook start.ipynb is loaded: 2 cells ran, 1 with an error." in out
    assert "Out [3] · ok" in out and "It is 42." in out
    [request, _] = backends[0].requests
    assert request[1].content == "Loaded notebook start.ipynb: its 2 code cells were run"
    assert "NameError" in request[4].content and request[-1].content == "What is base + 2?"


def test_a_bad_notebook_is_refused_before_the_model_loads(model, capsys, tmp_path):
    model(None)
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{}")
    assert cli.main(["hi", "--notebook", str(bad)]) == 2
    _, err = screen(capsys)
    assert err.startswith(f"kernelchat: notebook '{bad}' is not a valid notebook") and "Traceback" not in err


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_exec_says_where_a_kept_workspace_is(tmpdir_, capsys, json_flag):
    assert cli.main(["exec", "open('out.csv', 'w').write('1,2')", *json_flag]) == 0
    [ws] = tmpdir_.glob("kernelchat-ws-*")
    _, err = screen(capsys)
    assert f"files kept in {ws}" in err and (ws / "out.csv").is_file()


def test_exec_without_files_leaves_no_workspace_and_says_nothing(tmpdir_, capsys):
    assert cli.main(["exec", "x = 1"]) == 0
    assert list(tmpdir_.glob("kernelchat-ws-*")) == [] and "files kept" not in screen(capsys)[1]


def test_kernelchats_own_warnings_are_one_line(capsys):
    import agent.models

    cli.show_warning(UserWarning("the model is loaded in this process: /x is open"), UserWarning,
                     agent.models.__file__, 63)
    err = capsys.readouterr().err
    assert err.strip() == "kernelchat: the model is loaded in this process: /x is open"
    cli.show_warning(UserWarning("a library's"), UserWarning, "/elsewhere/lib.py", 1)
    assert "/elsewhere/lib.py:1: UserWarning: a library's" in capsys.readouterr().err
