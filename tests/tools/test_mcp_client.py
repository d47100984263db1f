"""MCP servers' tools in the chat: a real MCP server (tests/data/mcp_test_server.py, the official
SDK's MCPServer) over stdio and streamable HTTP, used by the loop through a scripted model."""

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import Chat
from agent.core.events import NoticeEvent, ToolResultEvent
from agent.core.messages import Message, ToolCall
from agent.models.scripted import ScriptedBackend
from tools.mcp_specs import check_specs, load_mcp_file, merge_specs

SERVER = Path(__file__).resolve().parents[1] / "data" / "mcp_test_server.py"


def server(*args: str, **settings) -> dict:
    return {"command": sys.executable, "args": [str(SERVER), *args], **settings}


def call(name: str, arguments: dict, i: int = 0) -> Message:
    return Message(role="assistant", tool_calls=[ToolCall(id=f"c{i}_{name}", name=name, arguments=json.dumps(arguments))])


def results(events) -> list[ToolResultEvent]:
    return [e for e in events if isinstance(e, ToolResultEvent)]


def children(pid: int) -> set[int]:
    """The live processes descended from `pid` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                kids.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


def test_a_servers_tools_are_offered_called_and_shown_and_the_server_stops_with_the_chat(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_SECRET_VALUE", "s3cret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-of-the-host")
    script = [call("t__add", {"a": 2, "b": 40}), call("t__echo_env", {"name": "SECRET"}, 1),
              call("t__echo_env", {"name": "OPENAI_API_KEY"}, 2), call("t__plot", {}, 3),
              call("t__slow", {"seconds": 1.0}, 4), "done"]
    before = children(os.getpid())
    with Chat(backend=ScriptedBackend(script), workspace=tmp_path,
              mcp_servers={"t": server(env={"SECRET": "${TEST_SECRET_VALUE}"})}) as chat:
        assert len(children(os.getpid()) - before) >= 1  # the server runs beside the chat
        events = list(chat.run("use the tools"))
        offered = [t["function"]["name"] for t in chat.tool_schemas()]
        assert offered[0] == "python" and {"t__add", "t__echo_env", "t__plot", "t__slow"} <= set(offered)
        add, secret, host_key, plot, slow = results(events)
        assert (add.status, add.output) == ("ok", "42")
        assert secret.output == "s3cret"  # by environment, from ${VAR}
        assert host_key.output == "<unset>"  # the host's other secrets do not reach the server
        assert plot.images and Path(plot.images[0]).read_bytes().startswith(b"\x89PNG")
        assert "[image saved:" in plot.output and not Path(plot.images[0]).is_relative_to(tmp_path)
        [plotted] = [m for m in chat.messages() if m.name == "t__plot"]  # for models that take images
        assert plotted.images and base64.b64decode(plotted.images[0].data).startswith(b"\x89PNG")
        html = chat.export("html", tmp_path.parent / f"{tmp_path.name}-t.html").read_text()
        assert f'src="data:image/png;base64,{plotted.images[0].data}"' in html  # shown in the transcript
        assert slow.output == "slept"
        progress = [e.text for e in events if getattr(e, "stream", None) == "notice" and "t__slow" in e.text]
        assert progress and "sleeping" in progress[0]
        # the schemas count in the request's tokens like every tool's
        assert chat.backend.count_prompt_tokens(chat.messages(), chat.tool_schemas()) > \
            chat.backend.count_prompt_tokens(chat.messages(), [chat.tool_schemas()[0]])
    deadline = time.monotonic() + 15
    while children(os.getpid()) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not children(os.getpid()) - before, "the MCP server outlived the chat"


def test_errors_from_a_server_are_results_and_the_chat_goes_on(tmp_path):
    script = [call("t__fail", {"reason": "because"}), call("t__add", {"a": "two", "b": 1}, 1),
              call("t__nope", {}, 2), call("t__die", {}, 3), call("t__add", {"a": 1, "b": 1}, 4), "still here"]
    with Chat(backend=ScriptedBackend(script), workspace=tmp_path, mcp_servers={"t": server()}) as chat:
        events = list(chat.run("break things"))
        fail, wrong, unknown, die, after = results(events)
        assert fail.status == "error" and "t__fail reported an error" in fail.output
        assert wrong.status == "error" and "valid integer" in wrong.output
        assert unknown.status == "invalid" and "no tool named 't__nope'" in unknown.output
        assert die.status == "error" and "stopped: it exited or closed the connection" in die.output
        assert after.status == "error" and "is not running" in after.output
        assert events[-1].text == "still here"


@pytest.mark.parametrize("args, words", [
    (["--never-answer"], "did not answer within 2 s"),
    (["--exit-at-once"], "cannot open its database"),  # its last line on stderr
    (["--invalid"], "not MCP"),
])
def test_a_bad_server_is_one_notice_and_the_chat_goes_on(tmp_path, args, words):
    t0 = time.monotonic()
    script = [call("good__add", {"a": 1, "b": 2}), "3"]
    with Chat(backend=ScriptedBackend(script), workspace=tmp_path,
              mcp_servers={"bad": server(*args, startup_timeout=2), "good": server()}) as chat:
        events = list(chat.run("add"))
    notices = [e.text for e in events if isinstance(e, NoticeEvent) and "MCP server 'bad'" in e.text]
    assert len(notices) == 1 and words in notices[0] and "its tools are not offered" in notices[0]
    assert results(events)[0].output == "3" and time.monotonic() - t0 < 30


def test_two_tools_with_one_offered_name_keep_the_first_and_say_so(tmp_path):
    """`twin_a` and `twin.a` are both `h__twin_a` once cut to what model APIs take."""
    with Chat(backend=ScriptedBackend([call("h__twin_a", {}), "ok"]), workspace=tmp_path,
              mcp_servers={"h": server("--hostile")}) as chat:
        events = list(chat.run("twins"))
        offered = [t["function"]["name"] for t in chat.tool_schemas()]
    notices = [e.text for e in events if isinstance(e, NoticeEvent) and "twin" in e.text]
    assert notices == ["MCP server 'h''s tool 'twin.a' is not offered: its name 'h__twin_a' is already that "
                       "of 'h''s tool 'twin_a'"]
    assert offered.count("h__twin_a") == 1 and results(events)[0].output == "first"


def test_a_command_that_does_not_exist_is_one_notice(tmp_path):
    with Chat(backend=ScriptedBackend(["ok"]), workspace=tmp_path,
              mcp_servers={"gone": {"command": str(tmp_path / "no-such-program")}}) as chat:
        notices = [e.text for e in chat.run("hi") if isinstance(e, NoticeEvent)]
    assert any("its command was not found" in n for n in notices)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_over_streamable_http(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        script = [call("web__add", {"a": 20, "b": 22}), "42"]
        with Chat(backend=ScriptedBackend(script), workspace=tmp_path,
                  mcp_servers={"web": {"url": f"http://127.0.0.1:{port}/mcp", "headers": {"X-Test": "1"}}}) as chat:
            assert results(chat.run("add"))[0].output == "42"
    finally:
        proc.kill()
        proc.wait()


def test_settings_are_checked_in_one_sentence(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="give either `command`.*or `url`.*not both"):
        check_specs({"x": {"command": "a", "url": "http://h"}}, "config.toml")
    with pytest.raises(ValueError, match="config.toml: MCP server 'x': unknown key 'cmd'"):
        check_specs({"x": {"cmd": "a"}}, "config.toml")
    with pytest.raises(ValueError, match="name 'a b' must be 1-32 letters"):
        check_specs({"a b": {"command": "a"}}, "config.toml")
    with pytest.raises(ValueError, match="`url` must be an http"):
        check_specs({"x": {"url": "file:///etc/passwd"}}, "config.toml")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ValueError, match=r"env K uses \$\{NOT_SET_ANYWHERE\}, which is not set"):
        Chat(backend=ScriptedBackend([]), workspace=tmp_path, mcp_servers={"x": {"command": "a",
                                                                            "env": {"K": "${NOT_SET_ANYWHERE}"}}})


def test_the_common_mcpservers_json_file(tmp_path):
    f = tmp_path / "mcp.json"
    f.write_text(json.dumps({"mcpServers": {"t": server(), "off": {"command": "x", "disabled": True},
                                            "claude": {"command": "x", "autoApprove": []}}}))
    specs = load_mcp_file(f)
    assert set(specs) == {"t", "claude"} and specs["t"].command == sys.executable
    vscode = tmp_path / "vscode.json"
    vscode.write_text(json.dumps({"servers": {"w": {"type": "http", "url": "http://127.0.0.1:1/mcp"}}}))
    assert load_mcp_file(vscode)["w"].url.endswith("/mcp")
    assert merge_specs({"a": specs["t"]}, {"a": specs["claude"]})["a"].command == "x"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_mcp_file(bad)
    (tmp_path / "none.json").write_text("{}")
    with pytest.raises(ValueError, match='no "mcpServers" object'):
        load_mcp_file(tmp_path / "none.json")
    with Chat(backend=ScriptedBackend([call("t__add", {"a": 1, "b": 2}), "3"]), workspace=tmp_path / "w",
              mcp_servers=f) as chat:  # the file itself, by path
        assert results(chat.run("add"))[0].output == "3"


@pytest.mark.slow
def test_the_tool_trained_05b_calls_an_mcp_servers_tool(qwen_05b, tmp_path):
    """A real tool-trained model (Qwen2.5-Coder 0.5B) reads the server's schema and calls it."""
    with Chat(backend=qwen_05b, workspace=tmp_path, use_python=False, progress=False,
              mcp_servers={"calc": server()}) as chat:
        events = list(chat.run("What is 1234 plus 4321? Use the calc__add tool."))
    calls = results(events)
    assert calls and calls[0].name == "calc__add" and calls[0].output == "5555"


def test_a_flood_of_tools_is_cut_to_what_a_request_takes_and_said(tmp_path):
    """300 tools and a 50,000-character schema: a request would carry them all, every time (OpenAI
    takes 128 tools), so the schema's tool and the tools past the first 127 are not offered, and
    two notices say so."""
    from tools.mcp_client import MAX_SCHEMA_CHARS, MAX_TOOLS

    with Chat(backend=ScriptedBackend([call("f__tool5", {}), "ok"]), workspace=tmp_path,
              mcp_servers={"f": server("--flood")}) as chat:
        events = list(chat.run("go"))
        offered = [t["function"]["name"] for t in chat.tool_schemas()]
    notices = [e.text for e in events if isinstance(e, NoticeEvent) and "MCP server 'f'" in e.text]
    assert offered == ["python", *(f"f__tool{i}" for i in range(MAX_TOOLS))]
    assert len(notices) == 2
    assert notices[0].startswith("MCP server 'f''s tool 'huge_schema' is not offered: its schema is ")
    assert f"over the {MAX_SCHEMA_CHARS:,} characters that every request would carry" in notices[0]
    assert notices[1].startswith(f"MCP server 'f': {300 - MAX_TOOLS:,} of its tools are not offered")
    assert results(events)[0].output == "called tool5"  # the chat goes on: a tool offered is called
