"""Bad input to the command line: one sentence on stderr, exit code 2, no traceback, nothing written;
and a run that never reached the model leaves no conversation file."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

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


# -- the real command, as a subprocess: everything is checked before a model loads ----------------

FAST = 10.0  # seconds: starting Python and importing the CLI; loading any model takes longer


def kernelchat(*argv: str, stdin: str = "", cwd=None) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m agent ARGV` (the real CLI, default model and all); its result and seconds taken."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agent", *argv], input=stdin, capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)
    return done, time.monotonic() - start


def bad_inputs(tmp_path) -> list[tuple[list[str], str]]:
    (tmp_path / "file.txt").write_text("x")
    f = str(tmp_path / "file.txt")
    return [
        (["", ], "the prompt is empty; ask a question"),
        (["  \n\t"], "the prompt is empty"),
        (["hi", "--workspace", f], f"--workspace {f}: that is a file, not a folder"),
        (["hi", "--workspace", f + "/sub"], f"--workspace {f}/sub: cannot make that folder (Not a directory)"),
        (["hi", "--max-steps", "0"], "--max-steps must be a whole number greater than 0, got 0"),
        (["hi", "--max-tokens", "-5"], "--max-tokens must be a whole number greater than 0, got -5"),
        (["hi", "--max-usd", "nan"], "--max-usd must be an amount in USD greater than 0, got nan"),
        (["hi", "--max-seconds", "0"], "--max-seconds must be a number of seconds greater than 0"),
        (["hi", "--timeout", "inf"], "--timeout must be a number of seconds greater than 0, got inf"),
        (["hi", "--disk-mb", "0"], "--disk-mb must be a whole number of MB from 1 to 1,000,000,000,000, got 0"),
        (["hi", "--memory-mb", "-3"], "--memory-mb must be a whole number of MB from 1 to 1,000,000,000,000, got -3"),
        (["hi", "--save", str(tmp_path)], "that is a folder; give a file name"),
        (["--workspace", f], "that is a file, not a folder"),  # the chat checks the same, before its model
        (["exec", "print(1)", "--workspace", f], "that is a file, not a folder"),  # and exec, before its kernel
    ]


def test_bad_input_fails_at_once_with_one_sentence(tmp_path):
    for argv, says in bad_inputs(tmp_path):
        done, took = kernelchat(*argv)
        assert done.returncode == 2 and took < FAST, (argv, took, done.stderr)
        err = done.stderr.strip()
        assert err.startswith("kernelchat: ") and "\n" not in err and "Traceback" not in err, (argv, err)
        assert says in err and done.stdout == "", (argv, err)


def test_json_reports_a_setup_error_as_json(tmp_path):
    for argv, says in bad_inputs(tmp_path)[:12]:  # the one-shot ones (--json needs a prompt)
        done, took = kernelchat(*argv, "--json")
        assert done.returncode == 2 and took < FAST, (argv, took, done.stderr)
        assert says in json.loads(done.stdout)["error"], (argv, done.stdout)
    for argv, says in [(["--json"], "--json needs a prompt"),
                       (["hi", "--json", "--memory-mb", "x"], "argument --memory-mb: invalid int value: 'x'"),
                       (["exec", "--json"], "the following arguments are required: code")]:
        done, _ = kernelchat(*argv)
        assert done.returncode == 2 and json.loads(done.stdout) == {"error": says}, (argv, done.stdout)
        assert f"kernelchat: {says}" in done.stderr


def test_an_empty_prompt_on_stdin_is_refused(tmp_path):
    done, took = kernelchat("-", stdin=" \n")
    assert done.returncode == 2 and took < FAST and "the prompt is empty" in done.stderr


def test_a_bad_value_makes_no_workspace(tmp_path):
    done, _ = kernelchat("hi", "--workspace", str(tmp_path / "ws"), "--timeout", "0")
    assert done.returncode == 2 and not (tmp_path / "ws").exists()


def test_a_missing_workspace_is_made(model, capsys, tmp_path):
    model(["hello"])
    ws = tmp_path / "new" / "ws"
    assert cli.main(["hi", "--workspace", str(ws), "--no-save", "--isolation", "none"]) == 0
    assert ws.is_dir() and "hello" in capsys.readouterr().out


def test_exec_makes_a_missing_workspace_and_works_in_it(tmp_path):
    ws = tmp_path / "a" / "b"
    done, _ = kernelchat("exec", "open('made.txt', 'w').write('x')", "--workspace", str(ws), "--isolation", "none",
                         "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok" and (ws / "made.txt").read_text() == "x"


def test_help_lists_the_one_shot_and_chat_flags_and_the_subcommands():
    done, took = kernelchat("--help")
    assert done.returncode == 0 and took < FAST
    for word in ("--json", "--save", "--confirm", "--model", "--max-steps", "--workspace", "--version",
                 "exec CODE", "tokens REQUEST.json", "models", "run TASK.toml", "exit codes"):
        assert word in done.stdout, word
    done, _ = kernelchat("exec", "--help")  # the subcommands keep their own help
    assert done.returncode == 0 and "usage: kernelchat exec" in done.stdout


def test_version(tmp_path):
    done, took = kernelchat("--version", cwd=tmp_path)
    assert done.returncode == 0 and took < FAST
    assert done.stdout.strip() == f"kernelchat {importlib.metadata.version('kernelchat')}"
    assert cli.version() == importlib.metadata.version("kernelchat")


def test_version_without_an_installed_distribution(monkeypatch):
    """Run from a checkout that was never installed: pyproject.toml's version."""
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    pyproject = Path(cli.__file__).resolve().parents[2] / "pyproject.toml"
    assert cli.version() == tomllib.loads(pyproject.read_text())["project"]["version"]
