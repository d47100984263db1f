"""Attacks on the host-side code of issues 14 and 16 (round 3): the Markdown export's images
folder swapped for a link by code in the workspace, a conversation file whose creation time is
not a time, and tool-call text built to make the parser take minutes."""

from __future__ import annotations

import base64
import json
import time

import pytest

from agent.core import export, store
from agent.core.messages import Message, ToolCall, tool_result
from agent.core.store import ConversationFile
from agent.core.tree import CellRecord, Figure, Tree
from agent.frontends import cli
from agent.models.toolparse import ToolCallStream, parse_tool_calls
from sandbox import Kernel

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


def with_figure() -> ConversationFile:
    tree = Tree()
    tree.add(Message(role="system", content="sys"))
    tree.add(Message(role="user", content="plot"))
    tree.add(Message(role="assistant", tool_calls=[ToolCall(id="1", name="python", arguments="{}")]))
    cell = CellRecord(code="plot()", status="ok", output="", figures=[Figure(mime="image/png", data=PNG, name="a.png")])
    tree.add(tool_result("1", "", name="python"), cell=cell)
    return ConversationFile(id="c1", model="m", tree=tree)


@pytest.mark.timeout(120)
def test_markdown_images_folder_swapped_for_a_link_by_the_kernel(tmp_path):
    """`/export md workspace/x.md` while code in the kernel swaps `x_files` with a link to a host
    folder over and over: no image ever lands in the host folder (it did, through a check-then-use)."""
    ws, host = tmp_path / "ws", tmp_path / "host"
    ws.mkdir()
    host.mkdir()
    swap = f"""
import ctypes, os, threading
os.makedirs("x_files", exist_ok=True)
os.symlink({str(host)!r}, "x_link")
libc = ctypes.CDLL(None, use_errno=True)
def swap():
    while True:  # RENAME_EXCHANGE: x_files is the folder or the link, never missing
        libc.renameat2(-100, b"x_files", -100, b"x_link", 2)
threading.Thread(target=swap, daemon=True).start()
print("swapping")
"""
    conv = with_figure()
    with Kernel(workspace=ws, timeout=30) as k:
        assert k.execute(swap, timeout=20).stdout.strip() == "swapping"
        written = refused = 0
        deadline = time.monotonic() + 20
        for _ in range(300):
            if time.monotonic() > deadline:
                break
            try:
                export.write_markdown(ws / "x.md", conv)
                written += 1
            except ValueError as e:
                assert "x_files" in str(e)
                refused += 1
        k.interrupt()
    assert sorted(p.name for p in host.iterdir()) == []
    assert written + refused > 50


@pytest.mark.timeout(60)
def test_listing_survives_a_creation_time_that_is_not_a_time(dirs, capsys):
    folder = store.conversations_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for n, created in enumerate(["yesterday \x1b]52;c;aGk=\x07", "0001-01-01T00:00:00+14:00"]):
        conv = with_figure()
        conv.id = f"odd{n}"
        data = json.loads(conv.model_dump_json())
        for node in data["tree"]["nodes"].values():
            node["created"] = created
        (folder / f"odd{n}.json").write_text(json.dumps(data))
    assert cli.main(["conversations"]) == 0
    out = capsys.readouterr().out
    assert "odd0" in out and "odd1" in out and "yesterday" in out and "\x1b" not in out


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))


MB = 1_000_000
HOSTILE_REPLIES = {
    "nested function tags": "<function=" * (MB // 10),  # quadratic backtracking: minutes
    "many JSON-looking lines": "{\n" * (MB // 2),  # each line repaired to the end: minutes
    "many call-looking lines": '{"name": "python", "arguments": {\n' * (MB // 36),
    "JSON nested a million deep": "[" * MB,  # RecursionError escaped the parser
    "an object nested deep": '{"a":' * (MB // 5),
    "many Mistral calls": "[TOOL_CALLS]" + "python[ARGS]{}" * (MB // 14),
    "many fences": "```json\n{\n```\n" * (MB // 14),
    "many tool_call tags": "<tool_call>" * (MB // 11),
    "an unclosed call": "<tool_call>{" + '"a":[' * (MB // 6),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", HOSTILE_REPLIES)
def test_tool_call_parser_is_linear_on_hostile_text(name):
    text = HOSTILE_REPLIES[name]
    t = time.monotonic()
    content, calls = parse_tool_calls(text, ["python"])
    assert time.monotonic() - t < 5, f"{name}: {time.monotonic() - t:.1f} s for 1 MB"
    assert isinstance(content, str)


@pytest.mark.timeout(120)
def test_tool_call_stream_on_a_long_reply_in_small_pieces():
    text = "```\n" + "{\n" * 50_000 + "```\n<function=" * 1000
    stream, t = ToolCallStream(["python"]), time.monotonic()
    for i in range(0, len(text), 7):
        stream.feed(text[i:i + 7])
    stream.finish()
    assert time.monotonic() - t < 10
