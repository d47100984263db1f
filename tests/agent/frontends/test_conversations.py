"""`kernelchat conversations`, `--resume` lookups, readable file names and the last exchanges after a load."""

from __future__ import annotations

import json
import re

import pytest

from agent.chat import Chat
from agent.core import store
from agent.core.tree import TurnOutcome
from agent.frontends import cli
from agent.frontends.conversations import find_conversation, last_exchanges, list_conversations
from agent.models.scripted import ScriptedBackend, python_call


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    return store.conversations_dir()


def saved(prompts: list[str], replies: list) -> Chat:
    chat = Chat(backend=ScriptedBackend(replies), isolation="none")
    for p in prompts:
        chat(p)
    chat.save()
    chat.close()
    return chat


def test_file_name_is_readable_ascii_bounded_and_ends_with_the_id():
    name = store.file_name("abc123", "2026-12-01T05:31:00+00:00", "What is 2**100? Use Python. Ünïcode — ok " * 9)
    assert re.fullmatch(r"2026-12-01-\d{4}-what-is-2-100-use-python-unicode-ok-abc123\.json", name), name
    assert name.isascii() and len(name) < 80
    assert store.file_name("abc123", None, "?!").endswith("-abc123.json")  # nothing to slug: date and id


def test_save_names_the_file_after_the_first_prompt_and_keeps_that_name(dirs):
    chat = Chat(backend=ScriptedBackend(["4", "5"]), isolation="none")
    chat("What is 2+2?")
    path = chat.save()
    assert path.parent == dirs and path.name.endswith(f"-what-is-2-2-{chat.id}.json"), path.name
    chat("And 2+3?")
    assert chat.path == path and [p.name for p in dirs.iterdir()] == [path.name]  # never renamed
    early = Chat(backend=ScriptedBackend(["x"]), isolation="none")
    first = early.save()  # before any prompt: date and id, kept after the first prompt
    early("hello")
    assert early.path == first and first.name.endswith(f"-{early.id}.json")
    chat.close(), early.close()


def test_listing_newest_first_with_an_unreadable_file(dirs, capsys):
    old = saved(["What is 6*7?"], [python_call("print(6*7)"), "42"])
    new = saved(["Plot sin(x)"], ["done"])
    # the newer conversation is created later: make the order not depend on the clock's resolution
    conv = store.load(old.path)
    conv.tree.nodes[conv.tree.root].created = "2020-01-01T00:00:00+00:00"
    store.save(old.path, conv)
    (dirs / "broken-0123456789ab.json").write_text("{not json")
    assert cli.main(["conversations", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    items = data["conversations"]
    assert [i.get("id") for i in items if "error" not in i] == [new.id, old.id]
    first = next(i for i in items if i.get("id") == old.id)
    assert first["first_prompt"] == "What is 6*7?" and first["messages"] == 4 and first["model"] == "local:scripted"
    bad = next(i for i in items if "error" in i)
    assert bad["id"] == "0123456789ab" and "invalid JSON" in bad["error"]
    assert cli.main(["conversations"]) == 0
    out = capsys.readouterr().out
    assert "unreadable" in out and "Traceback" not in out and old.id in out and "What is 6*7?" in out


def test_an_empty_folder_says_where_it_looked(dirs, capsys):
    assert cli.main(["conversations"]) == 0
    assert f"no saved conversations in {dirs}" in capsys.readouterr().out.replace("\n", "")
    assert list_conversations() == []


def test_find_by_newest_id_prefix_and_path(dirs, tmp_path):
    with pytest.raises(ValueError, match="no saved conversations in"):
        find_conversation(None)
    a = saved(["a"], ["1"])
    b = saved(["b"], ["2"])
    a.id, b.id = "aaaa11112222", "aaaa33334444"
    for c in (a, b):  # ids that share a prefix
        conv = store.load(c.path)
        conv.id = c.id
        store.save(c.path, conv)
    assert find_conversation("aaaa1") == a.path
    assert find_conversation(b.id) == b.path
    assert find_conversation(str(a.path)) == a.path
    assert find_conversation(None) in (a.path, b.path)
    with pytest.raises(ValueError, match="2 conversations match"):
        find_conversation("aaaa")
    with pytest.raises(ValueError, match="no conversation id starts with 'zz'"):
        find_conversation("zz")
    with pytest.raises(ValueError, match="no such file"):
        find_conversation(str(tmp_path / "nope.json"))


def test_resume_errors_are_one_sentence_and_exit_2(capsys):
    assert cli.main(["--resume"]) == 2  # checked before the chat opens (or a model loads)
    err = capsys.readouterr().err
    assert "no saved conversations in" in err and "Traceback" not in err
    saved(["a"], ["1"])
    assert cli.main(["--resume", "zz"]) == 2
    assert "no conversation id starts with 'zz'" in capsys.readouterr().err
    assert cli.main(["hi", "--resume", "zz"]) == 2
    assert "leave out the prompt" in capsys.readouterr().err


def test_last_exchanges_show_prompts_answers_and_unusual_outcomes():
    chat = Chat(backend=ScriptedBackend(["one", "two", python_call("print(3)"), "three", "four"]), isolation="none")
    for p in ("p1", "p2", "p3", "p4"):
        chat(p)
    last = chat.tree.nodes[chat.tree.leaf]
    last.outcome = TurnOutcome(status="max_steps", note="max_steps reached")
    rows = last_exchanges(chat.tree, 3)
    assert [(n, p, a) for n, p, a, _ in rows] == [(2, "p2", "two"), (3, "p3", "three"), (4, "p4", "four")]
    assert [s for *_, s in rows] == [None, None, "max_steps: max_steps reached"]
    chat.close()


# -- the terminal chat (a real pty) ---------------------------------------------------------------


def four_turns() -> Chat:
    chat = saved(["first question", "second question", "third question", "fourth question"],
                 ["answer one", "answer two", python_call("print(3)"), "answer three", "answer four"])
    conv = store.load(chat.path)  # the last turn hit the step limit
    conv.tree.nodes[conv.tree.leaf].outcome = TurnOutcome(status="max_steps", note="max_steps reached")
    store.save(chat.path, conv)
    return chat


def test_resume_by_prefix_shows_the_last_exchanges_and_continues_the_same_file(term, dirs):
    old = four_turns()
    t = term(["answer five"], "--resume", old.id[:6])
    t.expect("loaded")
    t.expect("4 prompt(s)")
    shown = t.expect("You [5]: ")
    assert "first question" not in shown  # the last three only
    for text in ("You [2]: second question", "answer two", "third question", "answer three",
                 "You [4]: fourth question", "answer four", "max_steps: max_steps reached"):
        assert text in shown, shown
    t.line("fifth question")
    t.expect("answer five")
    assert t.close() == 0
    assert [p.name for p in dirs.iterdir()] == [old.path.name]  # no new file: the same conversation
    assert [n.message.content for n in store.load(old.path).tree.user_nodes()][-1] == "fifth question"


def test_load_shows_the_last_exchanges_and_no_stub_file_is_written(term, dirs):
    old = four_turns()
    t = term(["unused"])
    t.expect("You [1]: ")
    t.line(f"/load {old.path}")
    t.expect("loaded")
    shown = t.expect("You [5]: ")
    assert "fourth question" in shown and "answer four" in shown
    assert t.close() == 0
    assert [p.name for p in dirs.iterdir()] == [old.path.name]


def test_a_new_chat_file_is_named_after_its_first_prompt(term, dirs):
    t = term(["hello back"])
    t.expect("You [1]: ")
    assert not dirs.exists() or not list(dirs.iterdir())
    t.line("Hello, kernel!")
    t.expect("hello back")
    assert t.close() == 0
    (path,) = dirs.iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-\d{4}-hello-kernel-[0-9a-f]{12}\.json", path.name), path.name
