"""An answer stopped mid-stream is paid for: its prompt and the text received count in the usage."""

import pytest

from agent import Chat
from agent.core.events import TextEvent
from agent.core.messages import TextDelta
from agent.models.scripted import ScriptedBackend

LONG = "word " * 200


class Interrupted(ScriptedBackend):
    """Streams a little of its reply, then Ctrl-C arrives."""

    def stream(self, messages, tools=None, **kw):
        self._next(messages)
        yield TextDelta(text="the beginning of a long answer")
        raise KeyboardInterrupt


def test_a_stream_the_consumer_stops_is_counted(tmp_path):
    with Chat(backend=ScriptedBackend([LONG]), workspace=tmp_path) as chat:
        events = chat.run("talk")
        received = [ev for ev, _ in zip((e for e in events if isinstance(e, TextEvent)), range(3))]
        events.close()  # as the terminal does on Ctrl-C
        assert len(received) == 3
        used = chat.usage
        assert used.prompt_tokens > 0 and 1 <= used.completion_tokens < len(LONG) // 4
        assert chat.tracker.steps == 1


def test_a_stream_cut_by_ctrl_c_is_counted(tmp_path):
    with Chat(backend=Interrupted(["unused"]), workspace=tmp_path) as chat:
        with pytest.raises(KeyboardInterrupt):
            chat("talk")
        assert chat.usage.completion_tokens == len("the beginning of a long answer") // 4
        assert chat.usage.prompt_tokens > 0


def test_a_stopped_stream_costs_money_at_the_models_price(tmp_path):
    with Chat(backend=Interrupted(["unused"], model="gpt-4o-mini"), workspace=tmp_path) as chat:
        with pytest.raises(KeyboardInterrupt):
            chat("talk")
        assert chat.usage.cost_usd > 0
