"""Every way a turn ends is stored on the turn (scripted model; real kernels where cells run)."""

import pytest

from agent import Budget, BudgetExceeded, Chat
from agent.core import store
from agent.models.scripted import ScriptedBackend, python_call


def test_an_answer_is_answered(tmp_path):
    with Chat(backend=ScriptedBackend(["Hello."]), progress=False, path=tmp_path / "c.json") as chat:
        chat("Hi")
        assert chat.last_outcome.status == "answered"
    assert store.load(tmp_path / "c.json").tree.turn_outcome().status == "answered"


def test_max_steps_is_stored_on_the_last_message(tmp_path):
    script = [python_call("1", "c1"), python_call("2", "c2")]
    with Chat(backend=ScriptedBackend(script), progress=False, max_steps=2, workspace=tmp_path) as chat:
        events = list(chat.run("Loop"))
        assert events[-1].outcome == "max_steps"
        assert not any(e.kind == "notice" for e in events)  # the stop is said once, by the AnswerEvent
        assert chat.last_outcome.status == "max_steps"
        assert chat.last_outcome.note == "stopped after 2 steps without a final answer"
        assert chat.tree.nodes[chat.tree.leaf].message.role == "tool"


def test_a_budget_stop_is_stored(tmp_path):
    with Chat(backend=ScriptedBackend(["one", "two"]), progress=False, budget=Budget(max_steps=1)) as chat:
        chat("first")
        with pytest.raises(BudgetExceeded):
            chat("second")
        assert chat.last_outcome.status == "budget"
        assert "step budget reached" in chat.last_outcome.note


def test_letting_go_of_the_events_mid_turn_is_interrupted_but_not_after_the_answer(tmp_path):
    with Chat(backend=ScriptedBackend([python_call("1"), "done", "again"]), progress=False, workspace=tmp_path) as chat:
        read_until(chat.run("Go"), "tool_result")
        assert chat.last_outcome.status == "interrupted"
        read_until(chat.run("And now?"), "answer")
        assert chat.last_outcome.status == "answered"


def read_until(events, kind: str) -> None:
    """Read a turn's events up to the first of `kind`, then let go of them (as a front end may)."""
    for ev in events:
        if ev.kind == kind:
            break
    events.close()


def test_a_failure_is_stored(tmp_path):
    class Boom(ScriptedBackend):
        def stream(self, *a, **k):
            raise ConnectionError("the server went away")
            yield

    with Chat(backend=Boom([]), progress=False) as chat:
        with pytest.raises(ConnectionError):
            chat("Hi")
        assert chat.last_outcome.status == "failed" and "the server went away" in chat.last_outcome.note
