"""The rules of the small-model mode for tool-trained models on recorded real replies of
Qwen2.5-Coder-Instruct 0.5B and 1.5B (tests/data/recorded/, made with
`bench/small_model_accuracy.py --record`): each raw reply is parsed as the local backend parses it,
and the loop runs in a real kernel. The replies come in the order recorded, whatever is sent; after
the last one the model answers with nothing (the empty answer measured after results)."""

import json
from pathlib import Path

import pytest

from agent import Chat
from agent.core.backend import Capabilities, stream_reply
from agent.core.events import AnswerEvent, NoticeEvent, ToolResultEvent
from agent.core.messages import Reply, Usage
from agent.models.scripted import ScriptedBackend
from agent.models.toolparse import parse_tool_calls

DATA = Path(__file__).resolve().parents[2] / "data" / "recorded"
RECORDED = {f.stem: json.loads(f.read_text()) for f in sorted(DATA.glob("*.json"))}
END = ("<|im_end|>", "<|endoftext|>")


def case(name: str) -> tuple[str, list[str]]:
    for data in RECORDED.values():
        if name in data["cases"]:
            return data["cases"][name]["question"], data["cases"][name]["replies"]
    raise KeyError(name)


class RecordedBackend(ScriptedBackend):
    """Replays raw replies of a real model, parsed with the offered tools as TransformersBackend does."""

    def __init__(self, replies: list[str], parameters: int = 494_032_768):
        super().__init__([], capabilities=Capabilities(streaming=False, parameters=parameters))
        self.raw = list(replies)

    def stream(self, messages, tools=None, **kw):
        self.requests.append(list(messages))
        text = self.raw.pop(0) if self.raw else ""
        for end in END:
            text = text.split(end)[0]
        content, calls = parse_tool_calls(text, tools) if tools else (text, [])
        msg = {"role": "assistant", "content": content or None, "tool_calls": calls}
        yield from stream_reply(Reply(message=msg, usage=Usage(prompt_tokens=1, completion_tokens=1),
                                      finish_reason="tool_calls" if calls else "stop", model="recorded"))


def run(name: str, tmp_path, **options):
    question, replies = case(name)
    backend = RecordedBackend(replies)
    with Chat(backend=backend, workspace=tmp_path, **options) as chat:
        events = list(chat.run(question + " Use Python."))
    return events, backend


def ran(events):
    return [e for e in events if isinstance(e, ToolResultEvent) and e.status in ("ok", "error")]


def notices(events):
    return " | ".join(e.text for e in events if isinstance(e, NoticeEvent))


def test_a_json_fence_is_a_call_and_54_identical_calls_run_once(tmp_path):
    events, _ = run("json_fence_then_54_identical_calls", tmp_path)
    cells = ran(events)
    assert [c.code for c in cells] == ["2**100"]  # the ```json fence ran; the 53 calls did not run again
    assert "52 identical calls in one reply dropped"  # 53 whole calls, the 54th cut off in notices(events)
    assert events[-1].text == "1267650600228229401496703205376"


@pytest.mark.parametrize("name", ["math_not_code_repeated", "syntax_error_repeated"])
def test_a_repeated_failing_call_is_asked_again(tmp_path, name):
    events, backend = run(name, tmp_path)
    assert len(ran(events)) == 1 and ran(events)[0].status == "error"
    assert notices(events).count("asked again, sampled") == 2 and not backend.raw
    assert isinstance(events[-1], AnswerEvent) and events[-1].text == ""  # no value: nothing to answer with


def test_a_value_printed_again_is_the_answer(tmp_path):
    events, backend = run("same_value_printed_again", tmp_path)
    assert events[-1].text == "1267650600228229401496703205376" and len(ran(events)) == 2
    assert "two cells printed the same value" in notices(events) and len(backend.raw) == 2  # two replies unused


def test_the_value_written_as_code_after_its_result_ends_the_turn(tmp_path):
    """`7 ** 23`, then `27368747340080916343` as the code, three times (recorded without the rules)."""
    events, backend = run("same_call_after_its_result", tmp_path)
    assert [c.code for c in ran(events)] == ["7 ** 23", "27368747340080916343"] and len(backend.raw) == 2
    assert events[-1].text == str(7 ** 23) and "two cells printed the same value" in notices(events)


def test_a_stray_brace_is_removed(tmp_path):
    events, _ = run("stray_brace_in_code", tmp_path)
    assert events[-1].text == "3628800" and "removed a stray `}`" in " ".join(
        getattr(e, "text", "") for e in events)


def test_a_factorial_written_as_math_is_rewritten(tmp_path):
    events, _ = run("factorial_as_math", tmp_path)
    assert events[-1].text in ("9900", "9900.0")


def test_a_string_that_lost_its_quote_is_a_call(tmp_path):
    events, _ = run("string_lost_its_quote", tmp_path)
    assert [c.code for c in ran(events)] == ["print(3 ** 2 + 4 ** 2)"] and events[-1].text == "25"


def test_the_loops_note_printed_back_is_not_the_answer(tmp_path):
    events, _ = run("loop_note_printed", tmp_path)
    assert events[-1].text == "HelloHelloHello"


def test_the_15b_triple_quoted_code_runs_and_its_thanks_is_answered_from_the_output(tmp_path):
    events, _ = run("triple_quoted_code_then_thanks", tmp_path)
    assert len(ran(events)) == 1 and "math.comb(n, k)" in ran(events)[0].code
    assert events[-1].text == "2598960" and "answered with the value the code printed" in notices(events)


def test_the_15b_value_restated_in_a_fence_is_answered_with_the_value(tmp_path):
    events, _ = run("value_in_a_fence_after_the_result", tmp_path)
    assert events[-1].text == "1267650600228229401496703205376"
