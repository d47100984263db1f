"""The session's parts on their own: a Conversation (tree, file, naming) knows no kernel, and a
BranchKernel (the kernel that follows the active branch) knows no model. Real kernels."""

from __future__ import annotations

import json

import pytest

from agent.core import store
from agent.core.branch_kernel import BranchKernel
from agent.core.conversation import Conversation
from agent.core.messages import Message
from agent.core.tree import CellRecord
from sandbox import Kernel, KernelOptions


def cell_node(conv: Conversation, code: str, status: str = "ok"):
    """A user prompt, then an assistant turn whose cell ran `code` (as the loop records it)."""
    conv.add(Message(role="user", content=f"run {code}"))
    return conv.add(Message(role="assistant", content="done"), cell=CellRecord(code=code, output="", status=status))


def test_a_conversation_names_its_file_once_and_writes_it_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    conv = Conversation("be brief")
    assert conv.path is None and conv.tree.nodes[conv.tree.root].message.content == "be brief"
    named = conv.name_file("What is 6*7?")
    assert "what-is-6-7" in named.name and named.name.endswith(f"-{conv.id}.json") and not named.exists()
    conv.add(Message(role="user", content="another prompt entirely"))
    assert conv.name_file() == named  # never renamed
    conv.write(store.ConversationFile(id=conv.id, model="m", system=conv.system, tree=conv.tree))
    again = Conversation.from_file(store.load(named), named)
    assert again.id == conv.id and [m.content for m in again.tree.messages()] == ["be brief", "another prompt entirely"]
    with pytest.raises(ValueError, match="above the system prompt"):
        again.move_to(None)


def test_an_unsaved_conversation_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    conv = Conversation()
    conv.add(Message(role="user", content="hi"))
    conv.write(store.ConversationFile(id=conv.id, model="m", system=conv.system, tree=conv.tree))
    assert list(tmp_path.iterdir()) == []


def test_the_branch_kernel_starts_lazily_and_follows_a_branch_change(tmp_path):
    conv = Conversation()
    first = cell_node(conv, "x = 1")
    bk = BranchKernel(workspace=tmp_path, timeout=30)
    assert bk.started is None and bk.workspace == tmp_path
    assert bk.timeout == 30 == KernelOptions(timeout=30).timeout
    try:
        k = bk.kernel(conv.tree)  # starts, replays the branch's one cell
        assert k.execute("print(x)").stdout.strip() == "1" and bk.cells == [first.id]
        conv.move_to(first.parent)  # a new branch from the same prompt
        conv.add(Message(role="assistant", content="other"), cell=CellRecord(code="x = 2", output="", status="ok"))
        bk.follow(conv.tree)
        assert k.execute("print(x)").stdout.strip() == "2"
        assert any("1 cell(s) replayed" in n for n in bk.notices)
    finally:
        bk.close()


def test_cells_from_a_file_run_only_once_allowed(tmp_path):
    conv = Conversation()
    cell_node(conv, "open('planted', 'w').write('x')")
    asked = []
    bk = BranchKernel(KernelOptions(workspace=tmp_path), approve=lambda cells: asked.append(cells) or False)
    bk.distrust(conv.tree, tmp_path / "someone.json")
    try:
        bk.kernel(conv.tree)
        assert not (tmp_path / "planted").exists() and len(asked) == 1
        assert asked[0].cells == ("open('planted', 'w').write('x')",) and asked[0].source.endswith("someone.json")
        assert any("did not run" in n for n in bk.notices)
        bk.approve = lambda cells: True
        bk.restart(conv.tree)  # an explicit restart asks again
        assert (tmp_path / "planted").exists()
    finally:
        bk.close()


def test_a_started_kernel_is_used_as_it_is(tmp_path):
    with Kernel(workspace=tmp_path) as k:
        bk = BranchKernel(k)
        assert bk.started is k and bk.options == k.options and bk.workspace == k.workspace
        with pytest.raises(TypeError, match="beside a started Kernel"):
            BranchKernel(k, timeout=5)


def test_bad_follow_settings_are_one_sentence():
    with pytest.raises(ValueError, match="sync must be 'replay', 'keep' or 'reset'"):
        BranchKernel(sync="later")
    with pytest.raises(ValueError, match="replay must be 'completed' or 'all'"):
        BranchKernel(replay="some")


def test_backends_declare_price_and_parse_text_calls():
    """What the session asks of a backend is declared on it, never injected or probed."""
    from agent.models import pricing
    from agent.models.scripted import ScriptedBackend

    assert ScriptedBackend([]).price == pricing.Price()  # a script costs nothing...
    assert ScriptedBackend([], model="gpt-4o-mini").price == pricing.lookup("gpt-4o-mini")  # ...unless it stands in
    assert ScriptedBackend([]).tools_note is None
    python = [{"type": "function", "function": {"name": "python", "parameters": {}}}]
    reply = ScriptedBackend(["Let me compute.\n```python\nprint(2**10)\n```"]).complete([], python)
    assert [c.name for c in reply.message.tool_calls] == ["python"]
    assert json.loads(reply.message.tool_calls[0].arguments) == {"code": "print(2**10)"}
    assert reply.message.content == "Let me compute."
    plain = ScriptedBackend(["```python\nprint(1)\n```"]).complete([], None)  # no tools offered: text stays text
    assert not plain.message.tool_calls and "print(1)" in plain.message.content
