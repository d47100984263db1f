"""The event printer: what a stream of events looks like on a (recorded) terminal."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from agent.core.events import AnswerEvent, NoticeEvent, TextEvent, ToolCallEvent, ToolOutputEvent
from agent.frontends.render import EventPrinter, FenceFilter

REPLY = "Let me compute it.\n```python\nprint(2**10)\n```\nThat prints the value. Use `x`.\n```text\nraw\n```\n"


def shown(events, width: int = 100) -> str:
    out = io.StringIO()
    printer = EventPrinter(Console(file=out, width=width, color_system=None), show_usage=False)
    for ev in events:
        printer(ev)
    return out.getvalue()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000])
def test_a_python_fence_streams_only_as_its_code_panel(size):
    deltas = [TextEvent(text=REPLY[i:i + size]) for i in range(0, len(REPLY), size)]
    screen = shown([*deltas, ToolCallEvent(id="c", name="python", code="print(2**10)")])
    assert "```python" not in screen and "Let me compute it." in screen
    assert screen.count("print(2**10)") == 1  # the panel, not the raw fence first
    assert "That prints the value. Use `x`." in screen and "```text\nraw" in screen  # other text stays


def test_an_unclosed_fence_at_the_end_is_held_back():
    f = FenceFilter()
    assert f.feed("Here:\n``") == "Here:\n"
    assert f.feed("`python\nprint(1)") == ""
    assert f.flush() == ""


def test_a_revise_notice_is_a_line_of_its_own():
    screen = shown([ToolOutputEvent(id="c", stream="error", text="NameError: name 'time' is not defined"),
                    ToolOutputEvent(id="c", stream="notice", text="added `import time` and ran it again")])
    assert "not definedadded" not in screen
    assert "[added `import time` and ran it again]" in screen


def test_a_turn_that_was_not_answered_is_shown_once_as_stopped():
    text = "[stopped after 5 attempts without printing a value]"
    screen = shown([AnswerEvent(text=text, steps=5, outcome="stopped")])
    assert screen.count("stopped after 5 attempts") == 1
    assert "╭─ stopped ─" in screen and "answer" not in screen  # the text says why, the title that it stopped
    assert "answer" in shown([AnswerEvent(text="42", steps=1)])


def test_a_budget_notice_is_left_to_the_turns_stop():
    screen = shown([NoticeEvent(text="budget exceeded: max_tokens=10 reached"), NoticeEvent(text="kernel reset")])
    assert "budget exceeded" not in screen and "[kernel reset]" in screen


def test_notices_do_not_wrap_paths():
    from agent.frontends.repl import Repl

    out = io.StringIO()
    path = "/home/someone/.local/share/kernelchat/conversations/2026-12-01-a-long-name.json"
    Repl.notice(SimpleNamespace(console=Console(file=out, width=40, color_system=None)), f"saved: {path}")
    assert f"saved: {path}" in out.getvalue()
