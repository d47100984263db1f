"""Conversation files written by hand, as a hostile or broken file would be: each load ends in one
clear ConversationError (a ValueError) naming the file and the fault, fast, or in a sound tree."""

import json

import pytest

from agent import Chat
from agent.models.scripted import ScriptedBackend, python_call
from agent.core.store import FORMAT, ConversationError, load
from agent.core.tree import INTERRUPTED

pytestmark = pytest.mark.timeout(30)  # a cycle used to loop forever


def node(id_, parent, role="user", content="hi", **message):
    return {"id": id_, "parent": parent, "message": {"role": role, "content": content, **message}}


def conversation(nodes, root="s", leaf=None, **top):
    tree = {"nodes": {n["id"]: n for n in nodes}, "root": root, "leaf": leaf or nodes[-1]["id"]}
    return {"format": FORMAT, "id": "c1", "model": "gpt-4o", "tree": tree, **top}


SYSTEM = node("s", None, "system", "You run Python.")


def write(tmp_path, doc, name="c.json"):
    path = tmp_path / name
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return path


def refused(path, pattern):
    with pytest.raises(ConversationError, match=pattern) as info:
        Chat.load(path, backend=ScriptedBackend([]))
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and len(message) < 400
    assert isinstance(info.value, ValueError)  # what the front ends catch


def test_a_parent_cycle_is_refused_not_looped(tmp_path):
    doc = conversation([SYSTEM, node("a", "b"), node("b", "a")])
    refused(write(tmp_path, doc), r"parents of message '[ab]' form a cycle")
    doc = conversation([node("a", "a")], root="a")  # a root that is its own parent: no parentless node
    refused(write(tmp_path, doc), r"the root is 'a' but the messages without a parent are none")


def test_bytes_that_are_not_utf8(tmp_path):
    refused(write(tmp_path, b'{"format": "\xff\xfe"}'), r"not UTF-8 text: byte 0xff at offset 12")


def test_deep_nesting_is_one_error_not_a_recursion_traceback(tmp_path):
    refused(write(tmp_path, b"[" * 100_000 + b"]" * 100_000), r"nested too deeply")
    deep = conversation([SYSTEM])
    deep["settings"] = {"extra": json.loads("[" * 500 + "]" * 500)}  # deep, but within what JSON reads
    assert load(write(tmp_path, deep)).tree.root == "s"


@pytest.mark.parametrize("nodes,root,leaf,pattern", [
    ([SYSTEM, node("u", "gone")], "s", "u", r"message 'u' has the parent 'gone', which is not there"),
    ([SYSTEM, node("u", "s")], "s", "nowhere", r"the active message 'nowhere' is not there"),
    ([SYSTEM, node("u", "s")], "absent", "u", r"the root is 'absent' but the messages without a parent are 's'"),
    ([SYSTEM, node("u", None)], "s", "u", r"messages without a parent are 's', 'u'"),
], ids=["missing parent", "missing leaf", "missing root", "two roots"])
def test_broken_links(tmp_path, nodes, root, leaf, pattern):
    refused(write(tmp_path, conversation(nodes, root=root, leaf=leaf)), pattern)


def test_a_node_stored_under_another_id(tmp_path):
    doc = conversation([SYSTEM, node("u", "s")])
    doc["tree"]["nodes"]["x"] = doc["tree"]["nodes"].pop("u")
    doc["tree"]["leaf"] = "x"
    refused(write(tmp_path, doc), r"message 'u' is stored under the id 'x'")


@pytest.mark.parametrize("change,pattern", [
    (lambda d: d["tree"].update(nodes=[]), r"tree.nodes: Input should be a valid dictionary"),
    (lambda d: d["tree"]["nodes"]["u"]["message"].update(role="robot"), r"tree.nodes.u.message.role: Input should be"),
    (lambda d: d.update(settings={"usages": [{"prompt_tokens": -3}]}),
     r"settings.usages.0.prompt_tokens: Input should be greater than or equal to 0"),
    (lambda d: d.update(settings={"usages": [{"cost_usd": "lots"}]}), r"settings.usages.0.cost_usd: Input should be"),
    (lambda d: d.update(settings={"max_steps": 0}), r"settings.max_steps"),
    (lambda d: d.update(id=None), r"id: Input should be a valid string\)"),
    (lambda d: d["tree"]["nodes"]["u"].update(cell={"code": "1", "status": "ok", "output": "",
                                                     "figures": [{"mime": "text/html", "data": "QQ=="}]}),
     r"tree.nodes.u.cell.figures.0.mime: String should match pattern"),
    (lambda d: d["tree"]["nodes"]["u"].update(cell={"code": "1", "status": "ok", "output": "",
                                                     "figures": [{"mime": "image/png", "data": '"><script>'}]}),
     r"tree.nodes.u.cell.figures.0.data: String should match pattern"),
], ids=["nodes a list", "unknown role", "negative usage", "usage a word", "max_steps 0", "id null",
        "figure not an image", "figure data not base64"])
def test_wrong_types(tmp_path, change, pattern):
    doc = conversation([SYSTEM, node("u", "s")])
    change(doc)
    refused(write(tmp_path, doc), r"not a valid kernelchat conversation \(" + pattern)


def calls(*ids):
    return [{"id": i, "name": "python", "arguments": json.dumps({"code": f"print('{i}')"})} for i in ids]


def openai_accepts(messages):
    """OpenAI's rule: an assistant message with tool_calls is followed by one tool message per call."""
    for i, m in enumerate(messages):
        if m.tool_calls:
            answered = [t.tool_call_id for t in messages[i + 1:i + 1 + len(m.tool_calls)] if t.role == "tool"]
            if answered != [c.id for c in m.tool_calls]:
                return False
    return True


def test_a_call_without_its_result_is_answered_as_interrupted(tmp_path):
    """kill -9 mid-cell leaves the call without a result, at the end or (resumed by an older
    version) in the middle of a branch; a server refuses both."""
    doc = conversation([SYSTEM, node("u", "s", content="run two cells"),
                        node("a", "u", "assistant", None, tool_calls=calls("c1", "c2")),
                        node("t1", "a", "tool", "c1", tool_call_id="c1", name="python"),
                        # a later prompt straight after the unanswered call, and a sibling branch
                        node("u2", "t1", content="and then?"), node("b", "u2", "assistant", "done"),
                        node("a2", "u", "assistant", None, tool_calls=calls("c3"))], leaf="b")
    chat = Chat.load(write(tmp_path, doc), backend=ScriptedBackend(["resumed fine"]))
    msgs = chat.messages()
    assert [m.role for m in msgs] == ["system", "user", "assistant", "tool", "tool", "user", "assistant"]
    assert msgs[4].tool_call_id == "c2" and msgs[4].content == INTERRUPTED and openai_accepts(msgs)
    [answer] = chat.tree.children("a2")  # the other branch is mended too
    assert answer.message.tool_call_id == "c3" and openai_accepts(chat.tree.messages(answer.id))
    # the resumed conversation goes on and saves soundly
    chat.tree.leaf = "b"
    assert chat("go on") == "resumed fine"
    assert openai_accepts(chat.backend.requests[0])
    again = load(chat.path)
    assert again.tree.repair_interrupted() == 0 and len(again.tree.nodes) == len(chat.tree.nodes)
    chat.close()


def test_no_file_before_the_first_exchange(tmp_path):
    path = tmp_path / "c.json"
    with Chat(backend=ScriptedBackend(["hello"]), path=path, workspace=tmp_path):
        pass
    assert not path.exists()  # a run that never sent a prompt leaves nothing behind
    with Chat(backend=ScriptedBackend(["hello"]), path=path, workspace=tmp_path) as chat:
        assert chat("hi") == "hello"
    assert [n["message"]["role"] for n in json.loads(path.read_text())["tree"]["nodes"].values()] == \
        ["system", "user", "assistant"]


def test_a_call_whose_cell_failed_is_answered_before_the_next_prompt(tmp_path):
    """The kernel could not start while a call was pending: the next turn mends the branch first."""
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    backend = ScriptedBackend([python_call("1"), "second"])
    with Chat(backend=backend, workspace=not_a_folder) as chat:
        with pytest.raises((ValueError, RuntimeError), match="file"):
            chat("first")
        chat.use_python = False
        assert chat("next") == "second"
    assert openai_accepts(backend.requests[-1]) and backend.requests[-1][3].content == INTERRUPTED
