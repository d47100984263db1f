"""Replies set aside (tried, not taken) are folded under their turn: the tree knows them by their
outcome and by the reply a strategy marked as the start of an alternative, and shows the label
the strategy put on it. Files written before labels (`"attempt": N`, the status "attempt") load
and show the same thing."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.core import export, store
from agent.core.messages import Message
from agent.core.notebook_export import notebook_json
from agent.core.tree import Node, Tree, TurnOutcome

DATA = Path(__file__).resolve().parents[2] / "data"
# Written before labels: a small model's three attempts at "What is 6 * 7?" (the third taken), then
# two at "And x?" that printed nothing (the turn stopped).
BEFORE_LABELS = DATA / "attempts_before_labels.json"

# A tool-trained small model's reply set aside, as files before labels hold it: the status
# "attempt" on a reply without "attempt" (it was never folded, and is not now).
TOOL_MODEL_SET_ASIDE = """{"format": "kernelchat.conversation/1", "id": "c1", "model": "qwen", "tree": {
 "root": "s", "leaf": "f",
 "nodes": {
  "s": {"id": "s", "parent": null, "message": {"role": "system", "content": "sys"},
        "created": "2026-11-20T10:00:00+00:00"},
  "u": {"id": "u", "parent": "s", "message": {"role": "user", "content": "Sum 1 to 1000"}, "attempt": null,
        "created": "2026-11-20T10:00:01+00:00"},
  "e": {"id": "e", "parent": "u", "message": {"role": "assistant", "content": ""}, "attempt": null,
        "outcome": {"status": "attempt", "note": "gave an empty reply"}, "created": "2026-11-20T10:00:02+00:00"},
  "f": {"id": "f", "parent": "u", "message": {"role": "assistant", "content": "500500"},
        "outcome": {"status": "answered", "note": ""}, "created": "2026-11-20T10:00:03+00:00"}}}}"""


def test_a_file_written_before_labels_loads_with_labels_and_set_aside_outcomes():
    raw = json.loads(BEFORE_LABELS.read_text())
    assert raw["tree"]["nodes"]["a3"]["attempt"] == 3 and raw["tree"]["nodes"]["t1"]["outcome"]["status"] == "attempt"
    tree = store.load(BEFORE_LABELS).tree
    starts = {n.id: n.label for n in tree.nodes.values() if n.alternative}
    assert starts == {"a1": "attempt 1", "a2": "attempt 2", "a3": "attempt 3", "b1": "attempt 1", "b2": "attempt 2"}
    assert all(n.label is None for n in tree.nodes.values() if not n.alternative)
    assert {i: n.outcome.status for i, n in tree.nodes.items() if n.outcome} == {
        "t1": "set_aside", "a2": "set_aside", "f3": "answered", "bt1": "set_aside", "bt2": "stopped"}
    assert tree.nodes["t1"].outcome.note == "attempt 1 printed no value"


def test_the_attempts_not_taken_are_folded_under_their_turn():
    tree = store.load(BEFORE_LABELS).tree
    [shown] = tree.branches()
    assert (shown.id, shown.active, shown.outcome, shown.set_aside) == ("bt2", True, "stopped", 3)
    folds = tree.folds()
    assert {k: (sorted(f.nodes), f.count) for k, f in folds.items()} == {
        "u1": (["a1", "a2", "t1"], 2), "u2": (["b1", "bt1"], 1)}
    everything = tree.branches(all=True)
    assert [(b.id, b.outcome, b.set_aside) for b in everything] == [
        ("t1", "set_aside", 0), ("a2", "set_aside", 0), ("bt1", "set_aside", 0), ("bt2", "stopped", 0)]


def test_the_exports_show_the_labels_as_before():
    conv = store.load(BEFORE_LABELS)
    md, _ = export.markdown(conv, "f")
    assert md.count("*attempt 3*") == 1 and md.count("*attempt 2*") == 1 and "attempt 1" not in md
    assert "> **Turn ended: stopped after 2 attempts without printing a value**" in md
    page = export.to_html(conv)
    assert '<div class="tag">attempt 3</div>' in page and '<div class="tag">attempt 2</div>' in page
    nb = json.loads(notebook_json(conv))
    assert "*attempt 3*" in "".join(s for c in nb["cells"] for s in c["source"])
    conv.tree.switch("a2")  # an attempt not taken, shown: how it ended, in its own words
    md, _ = export.markdown(conv, "f")
    assert "*attempt 2*" in md and "> **Turn ended: attempt 2 wrote no code**" in md


def test_saved_again_it_keeps_the_new_fields_only(tmp_path):
    conv = store.load(BEFORE_LABELS)
    store.save(tmp_path / "again.json", conv)
    raw = json.loads((tmp_path / "again.json").read_text())
    assert all("attempt" not in n for n in raw["tree"]["nodes"].values())
    assert raw["tree"]["nodes"]["a3"]["label"] == "attempt 3" and raw["tree"]["nodes"]["a3"]["alternative"] is True
    assert raw["tree"]["nodes"]["t1"]["outcome"]["status"] == "set_aside"
    again = store.load(tmp_path / "again.json")
    assert again.tree == conv.tree
    assert [b.model_dump() for b in again.tree.branches()] == [b.model_dump() for b in conv.tree.branches()]


def test_a_reply_set_aside_without_a_marked_start_stays_listed(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(TOOL_MODEL_SET_ASIDE)
    tree = store.load(path).tree
    assert tree.nodes["e"].outcome == TurnOutcome(status="set_aside", note="gave an empty reply")
    assert not tree.nodes["e"].alternative and tree.nodes["e"].label is None
    assert tree.folds() == {}
    assert [(b.id, b.outcome) for b in tree.branches()] == [("e", "set_aside"), ("f", "answered")]


def test_a_single_reply_marked_as_an_alternative_is_folded_and_the_active_branch_never_is():
    tree = Tree()
    tree.add(Message(role="system", content="s"))
    user = tree.add(Message(role="user", content="q"))
    aside = tree.add(Message(role="assistant", content="no"), label="retry 1", alternative=True,
                     outcome=TurnOutcome(status="set_aside"))
    tree.switch(user.id)
    taken = tree.add(Message(role="assistant", content="yes"), label="retry 2", alternative=True)
    assert [(b.id, b.set_aside) for b in tree.branches()] == [(taken.id, 1)]
    assert tree.folds()[user.id].nodes == {aside.id}
    tree.switch(aside.id)  # the set-aside reply is the active branch now: listed, nothing folded
    assert tree.folds() == {} and {b.id for b in tree.branches()} == {aside.id, taken.id}


def test_an_unmarked_set_aside_below_a_marked_start_on_the_active_branch_folds_nothing_of_it():
    """A set-aside reply whose walk up meets the active branch before a marked start (another
    turn's taken alternative above it) is not folded: that would hide the active branch."""
    tree = Tree()
    tree.add(Message(role="system", content="s"))
    tree.add(Message(role="user", content="q"))
    tree.add(Message(role="assistant", content="1"), label="attempt 1", alternative=True)
    user = tree.add(Message(role="user", content="q2"))
    aside = tree.add(Message(role="assistant", content=""), outcome=TurnOutcome(status="set_aside"))
    tree.switch(user.id)
    tree.add(Message(role="assistant", content="2"))
    assert tree.folds() == {}
    assert aside.id in {b.id for b in tree.branches()}


def test_an_old_attempt_must_be_a_whole_number():
    with pytest.raises(ValidationError, match="attempt must be a whole number"):
        Node.model_validate({"message": {"role": "assistant", "content": "x"}, "attempt": "two"})
    assert Node.model_validate({"message": {"role": "assistant", "content": "x"}, "attempt": None}).label is None
