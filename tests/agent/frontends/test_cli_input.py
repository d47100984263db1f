"""Bad input to the command line: one sentence on stderr, exit code 2, no traceback, nothing written;
and a run that never reached the model leaves no conversation file."""

from __future__ import annotations

import json

import pytest

from agent.frontends import cli
from agent.models.scripted import ScriptedBackend


@pytest.fixture
def model(monkeypatch):
    """The CLI's model: a scripted one (or a failure when `replies` is None, to prove it never loaded)."""
    loaded: list[int] = []

    def use(replies: list | None) -> list[int]:
        def backend(*args, **kwargs):
            if replies is None:
                raise AssertionError("the model was loaded")
            loaded.append(1)
            return ScriptedBackend(list(replies))

        monkeypatch.setattr("agent.chat.get_backend", backend)
        return loaded

    return use


def one_sentence(err: str) -> str:
    assert "Traceback" not in err and err.startswith("kernelchat: "), err
    return " ".join(err.split())


# -- --save ----------------------------------------------------------------------------------------

def test_save_to_a_folder_is_refused_before_the_model_loads(model, capsys, tmp_path):
    model(None)
    assert cli.main(["hi", "--save", str(tmp_path), "--workspace", str(tmp_path)]) == 2
    err = one_sentence(capsys.readouterr().err)
    assert "that is a folder; give a file name" in err and str(tmp_path / "conversation.json") in err


@pytest.mark.parametrize("where, says", [
    ("file.txt/conv.json", "is not a folder"),       # a path under a file
    ("/proc/kernelchat-conv.json", "cannot write in /proc"),  # unwritable, even for root
])
def test_save_to_an_unwritable_path_is_refused_before_the_model_loads(model, capsys, tmp_path, where, says):
    model(None)
    (tmp_path / "file.txt").write_text("x")
    path = where if where.startswith("/") else str(tmp_path / where)
    assert cli.main(["hi", "--save", path]) == 2
    assert says in one_sentence(capsys.readouterr().err)


def test_save_to_a_new_folder_is_fine(model, capsys, tmp_path):
    model(["hello"])
    path = tmp_path / "new" / "deeper" / "c.json"
    assert cli.main(["hi", "--save", str(path), "--workspace", str(tmp_path)]) == 0
    assert json.loads(path.read_text())["format"] == "kernelchat.conversation/1"


# -- no empty conversation files -------------------------------------------------------------------

def test_budget_refusing_the_first_request_leaves_no_file(model, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    loaded = model(["never sent"])
    assert cli.main(["hi", "--max-tokens", "5", "--workspace", str(tmp_path)]) == 3
    assert loaded and "stopped: token budget" in capsys.readouterr().err
    assert not list((tmp_path / "data").rglob("*.json"))
    assert cli.main(["hi", "--max-tokens", "5", "--save", str(tmp_path / "c.json"), "--json"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["conversation"] is None and not (tmp_path / "c.json").exists()


def test_a_model_that_fails_at_once_leaves_no_file(model, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    model([])  # no reply: the first request fails
    assert cli.main(["hi", "--workspace", str(tmp_path)]) == 2
    assert "no reply left" in one_sentence(capsys.readouterr().err)
    assert not list((tmp_path / "data").rglob("*.json"))


def test_an_existing_save_file_is_not_removed(model, capsys, tmp_path):
    model([])
    path = tmp_path / "c.json"
    path.write_text("{}")
    assert cli.main(["hi", "--save", str(path), "--workspace", str(tmp_path)]) == 2
    assert path.exists()


def test_a_conversation_that_reached_the_model_is_saved(model, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    model(["hello there"])
    assert cli.main(["hi", "--workspace", str(tmp_path)]) == 0
    files = list((tmp_path / "data").rglob("*.json"))
    assert len(files) == 1 and "hello there" in files[0].read_text()
    assert "saved:" in capsys.readouterr().err


# -- kernelchat tokens -----------------------------------------------------------------------------

GOOD = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("body, says", [
    ([1, 2], "must hold a JSON object, not list"),
    ({}, 'must hold "messages": a list of message objects'),
    ({"messages": "hi"}, 'must hold "messages"'),
    ({"messages": [1]}, "messages[0] must be an object"),
    ({"messages": [GOOD, "hi"]}, "messages[1] must be an object"),
    ({"messages": [{"content": "hi"}]}, "messages[0] is not a chat message (role is missing)"),
    ({"messages": [{"role": "robot"}]}, "messages[0] is not a chat message (role:"),
    ({"messages": [{"role": "user", "content": 5}]}, "(content:"),
    ({"messages": [{"role": "user", "content": [{"text": 5}]}]}, "content part's text is not a string"),
    ({"messages": [{"role": "assistant", "tool_calls": [1]}]}, "messages[0].tool_calls must be a list"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 1}}]}]},
     "messages[0] is not a chat message"),
    ({"messages": [GOOD], "tools": {"a": 1}}, '"tools" must be a list'),
    ({"messages": [GOOD], "tools": [1]}, "tools[0] is not a tool definition"),
    ({"messages": [GOOD], "tools": [{"function": "f"}]}, "tools[0] is not a tool definition"),
    ({"messages": [GOOD], "tools": [{"function": {"name": "f", "parameters": []}}]}, "tools[0]"),
    ({"messages": [GOOD], "tools": [{"function": {"name": "f", "parameters": {"properties": {"a": 1}}}}]},
     "tools[0]"),
    ({"messages": [GOOD], "tools": [{"function": {"name": "f", "parameters": {"properties": {"a": {"enum": 3}}}}}]},
     "tools[0]"),
    ({"messages": [GOOD], "model": 4}, '"model" must be a string'),
])
def test_tokens_bad_request_shapes(capsys, tmp_path, body, says):
    p = tmp_path / "req.json"
    p.write_text(json.dumps(body))
    assert cli.main(["tokens", str(p)]) == 2
    err = one_sentence(capsys.readouterr().err)
    assert says in err and str(p) in err, err


@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe{}", "is not UTF-8 text (byte 0xff at offset 0)"),
    (b"{", "is not valid JSON"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_tokens_unreadable_files(capsys, tmp_path, content, says):
    p = tmp_path / "req.json"
    p.write_bytes(content)
    assert cli.main(["tokens", str(p)]) == 2
    assert says in one_sentence(capsys.readouterr().err)


def test_tokens_of_a_folder_or_a_missing_file(capsys, tmp_path):
    assert cli.main(["tokens", str(tmp_path)]) == 2
    assert "is a folder; give a JSON file" in one_sentence(capsys.readouterr().err)
    assert cli.main(["tokens", str(tmp_path / "nope.json")]) == 2
    assert "no such request file" in one_sentence(capsys.readouterr().err)


def test_tokens_of_a_good_request(capsys, tmp_path):
    p = tmp_path / "req.json"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {"type": "string"}}}}}
    p.write_text(json.dumps({"messages": [GOOD], "tools": [tool]}))
    assert cli.main(["tokens", str(p)]) == 0
    assert int(capsys.readouterr().out) > 10
