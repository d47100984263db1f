"""The cassette's backends declare the capabilities of the backend that was recorded, and take the
same arguments as any backend (whole task runs through a cassette: tests/agent/frontends/test_tasks.py)."""

import json

from agent.core.backend import Backend, Capabilities
from agent.core.messages import Done, Message, TextDelta
from agent.models.cassette import Cassette, RecordingBackend, ReplayBackend
from agent.models.scripted import ScriptedBackend

SMALL = Capabilities(tools=False, streaming=False, grounds_numbers=True, favours_tokens=True)
QUESTION = [Message(role="user", content="What is 6 times 7?")]


def record(tmp_path, capabilities: Capabilities) -> Cassette:
    cassette = Cassette(tmp_path / "c.json")
    recorder = RecordingBackend(ScriptedBackend(["```python\nprint(6 * 7)\n```"], capabilities=capabilities),
                                cassette, task="t")
    assert isinstance(recorder, Backend) and recorder.capabilities == capabilities
    assert recorder.complete(QUESTION, numbers={"6", "7"}, favour="6 7", bonus=3.0).message.content
    return cassette


def test_replay_declares_what_was_recorded_and_takes_the_decoding_guides(tmp_path):
    record(tmp_path, SMALL)
    replay = ReplayBackend(tmp_path / "c.json", task="t")
    assert isinstance(replay, Backend) and replay.capabilities == SMALL
    events = list(replay.stream(QUESTION, None, max_tokens=10, temperature=0.7, numbers={"6", "7"},
                                favour="6 7", bonus=3.0))
    assert isinstance(events[-1], Done) and all(isinstance(e, TextDelta) for e in events[:-1])
    assert events[-1].reply.message.content == "```python\nprint(6 * 7)\n```"


def test_replayed_replies_come_whole_even_from_a_streaming_backend(tmp_path):
    record(tmp_path, Capabilities())
    assert ReplayBackend(tmp_path / "c.json", task="t").capabilities == Capabilities(streaming=False)


def test_a_cassette_from_before_capabilities_still_says_whether_the_model_calls_tools(tmp_path):
    record(tmp_path, SMALL)
    data = json.loads((tmp_path / "c.json").read_text())
    del data["tasks"]["t"]["capabilities"]  # as older versions wrote it: `supports_tools` alone
    (tmp_path / "c.json").write_text(json.dumps(data))
    assert ReplayBackend(tmp_path / "c.json", task="t").capabilities == Capabilities(tools=False, streaming=False)
