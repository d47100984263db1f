"""MCP servers from the command line, config.toml, task files and /tools: a real MCP server
(tests/data/mcp_test_server.py), a scripted model behind the real CLI."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

import agent.chat
import agent.models
from agent import Chat
from agent.core.messages import Message, ToolCall
from agent.frontends import cli
from agent.frontends.commands import handle, parse
from agent.models.scripted import ScriptedBackend

SERVER = Path(__file__).resolve().parents[2] / "data" / "mcp_test_server.py"
ADD = Message(role="assistant", tool_calls=[ToolCall(id="c1", name="t__add", arguments='{"a": 2, "b": 40}')])


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """The CLI's model is a scripted one that calls t__add, then answers; config in tmp_path."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    (tmp_path / "cfg" / "kernelchat").mkdir(parents=True)
    backends = []

    def make(*a, **k):
        backends.append(ScriptedBackend([ADD, "the sum is 42"]))
        return backends[-1]
    monkeypatch.setattr(agent.models, "get_backend", make)
    monkeypatch.setattr(agent.chat, "get_backend", make)  # the one shot's Chat, imported above
    return backends


def servers_file(tmp_path: Path, name: str = "t") -> Path:
    f = tmp_path / "mcp.json"
    f.write_text(json.dumps({"mcpServers": {name: {"command": sys.executable, "args": [str(SERVER)]}}}))
    return f


def test_the_one_shot_offers_a_files_servers_tools(tmp_path, scripted, capsys):
    code = cli.main(["--mcp", str(servers_file(tmp_path)), "--json", "--no-save", "--isolation", "none",
                     "--workspace", str(tmp_path / "w"), "add 2 and 40"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["answer"] == "the sum is 42"
    assert [(c["name"], c["status"], c["output"]) for c in out["tool_calls"]] == [("t__add", "ok", "42")]


def test_config_toml_servers_reach_a_task_that_names_them(tmp_path, scripted, capsys):
    (tmp_path / "cfg" / "kernelchat" / "config.toml").write_text(
        f'[mcp_servers.t]\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(str(SERVER))}]\n')
    (tmp_path / "task.toml").write_text('mcp_servers = ["t"]\nprompts = ["add 2 and 40"]\n'
                                        '[[checks]]\nanswer_contains = "42"\n')
    out = tmp_path / "out"
    assert cli.main(["run", str(tmp_path / "task.toml"), "--out", str(out), "--no-progress",
                     "--isolation", "none"]) == 0
    transcript = json.loads((out / "task" / "transcript.json").read_text())
    assert '"t__add"' in json.dumps(transcript) and "42" in json.dumps(transcript)


def test_a_task_naming_a_server_not_configured_stops_the_run_in_one_sentence(tmp_path, scripted, capsys):
    (tmp_path / "task.toml").write_text('mcp_servers = ["github"]\nprompts = ["hi"]\n')
    assert cli.main(["run", str(tmp_path / "task.toml"), "--out", str(tmp_path / "out"), "--no-progress",
                     "--mcp", str(servers_file(tmp_path))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "mcp_servers names 'github', not configured" in err and "cannot define one" in err
    assert not scripted  # before any model was made


def test_a_task_file_cannot_define_a_server(tmp_path, scripted, capsys):
    (tmp_path / "task.toml").write_text('prompts = ["hi"]\n[mcp_servers.evil]\ncommand = "sh"\n')
    assert cli.main(["run", str(tmp_path / "task.toml"), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "invalid task file" in capsys.readouterr().err


@pytest.mark.parametrize("text, words", [
    ('[mcp_servers.x]\ncmd = "a"\n', "unknown key 'mcp_servers.x.cmd'"),
    ('[mcp_servers.x]\nargs = ["a"]\n', "give either `command`"),
    ('[mcp_servers."a b"]\ncommand = "a"\n', "must be 1-32 letters"),
])
def test_bad_mcp_settings_in_config_toml_are_one_sentence(tmp_path, scripted, capsys, text, words):
    (tmp_path / "cfg" / "kernelchat" / "config.toml").write_text(text)
    assert cli.main(["--no-save", "hi"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "config.toml" in err and words in err


def test_a_bad_mcp_file_is_one_sentence(tmp_path, scripted, capsys):
    (tmp_path / "m.json").write_text('{"mcpServers": {"x": {"url": "ftp://h"}}}')
    assert cli.main(["--mcp", str(tmp_path / "m.json"), "--no-save", "hi"]) == 2
    assert "m.json: MCP server 'x'" in " ".join(capsys.readouterr().err.split())


def test_tools_lists_what_is_offered_and_the_servers(tmp_path):
    with Chat(backend=ScriptedBackend([]), workspace=tmp_path, progress=False,
              mcp_servers={"t": {"command": sys.executable, "args": [str(SERVER)]},
                           "gone": {"command": str(tmp_path / "nothing")}}) as chat:
        console = Console(record=True, width=200)
        handle(SimpleNamespace(chat=chat, console=console), parse("/tools"))
        text = console.export_text()
    assert "python" in text and "t__add" in text and "[MCP server t] Add two whole numbers." in text
    assert "MCP server t" in text and ": running" in text
    assert "MCP server gone" in text and "not running: its command was not found" in text
