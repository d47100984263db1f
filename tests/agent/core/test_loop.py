"""The loop's view of a session: `LoopSession` names what the loop uses, so agent.core.loop needs
nothing from agent.core.session (which imports it); the Session is one, member for member."""

import inspect

from agent.core.loop import LoopSession, TurnStrategy, run_call, steps
from agent.core.session import Session
from agent.models.scripted import ScriptedBackend


def protocol_members() -> set[str]:
    return {n for n in LoopSession.__annotations__} | {
        n for n, v in vars(LoopSession).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}


def test_a_session_is_what_the_loop_works_on(tmp_path):
    session = Session(ScriptedBackend([]), workspace=tmp_path)  # no kernel starts
    try:
        assert isinstance(session, LoopSession)
        assert session.started_kernel is None
        for name in protocol_members():
            assert hasattr(session, name), name
            ours, theirs = getattr(LoopSession, name, None), getattr(Session, name, None)
            if callable(ours):  # the same parameters, so the loop's calls fit the session's methods
                assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters), name
    finally:
        session.close()


def test_the_loop_and_the_strategy_hooks_take_a_loop_session():
    for fn in (steps, run_call, TurnStrategy.run_turn, TurnStrategy.prepare_request, TurnStrategy.revise_reply,
               TurnStrategy.result_text):
        assert inspect.signature(fn).parameters["session"].annotation == "LoopSession", fn


def test_something_that_is_not_a_session_is_not_one():
    assert not isinstance(object(), LoopSession)
    assert {"backend", "tracker", "strategy", "kernel", "append", "end_turn", "record_cell"} <= protocol_members()
