"""What makes the 135M model useful: examples picked per question, grounded numbers in its code, and
attempts regenerated afresh with a vote on what they print. Scripted models for the loop's logic, the real
tokenizer and model for the decoding constraint, real kernels throughout."""

import pytest
import torch

from agent import Chat
from agent.core.backend import Capabilities
from agent.core.events import AnswerEvent, NoticeEvent
from agent.core.messages import Message
from agent.models.transformers_guides import GroundedCode
from agent.models.scripted import ScriptedBackend
from agent.smallmodel.shots import BANK, CONSTANTS, numbers_in, pick
from agent.smallmodel.strategy import EXAMPLE_BONUS, SAMPLE_TEMPERATURE
from tools.python_tool import SCHEMA


class RecordingBackend(ScriptedBackend):
    """A scripted model that, like the local backend, accepts `numbers=`; records what it was sent."""

    def __init__(self, replies):
        super().__init__(replies, capabilities=Capabilities(tools=False, streaming=False, grounds_numbers=True,
                                                            favours_tokens=True))
        self.numbers, self.temperatures, self.guides = [], [], []

    def stream(self, messages, tools=None, *, max_tokens=None, temperature=None, numbers=None, **guides):
        self.numbers.append(numbers)
        self.guides.append(guides)
        self.temperatures.append(temperature)
        yield from super().stream(messages, tools, max_tokens=max_tokens, temperature=temperature)


# -- the example bank ---------------------------------------------------------------------------------

def test_numbers_in_reads_literals_as_python_writes_them():
    assert numbers_in("from 2024-01-05 to 1,000 or 18.0 and 0.5, not x") == {"2024", "1", "5", "1000", "18.0",
                                                                              "18", "0.5"}
    assert numbers_in("[17,4,99]") == {"17", "4", "99"}


def test_pick_puts_the_closest_example_last_and_leaves_out_loose_ones():
    shots = pick("What is 23 factorial? Use Python.")
    assert "factorial" in shots[-1][0] and "math.factorial(" in shots[-1][1]
    assert all(a.startswith("```python\n") and a.endswith("\n```") for _, a in shots)
    assert len(pick("How many days are there from 2021-02-03 to 2021-09-30?")) <= 4
    assert pick("") == [] and pick("zebra quokka") == []


def test_constants_are_what_the_bank_code_needs_beyond_its_questions():
    assert {"0", "1", "2", "24", "60", "100"} <= CONSTANTS
    assert len(CONSTANTS) < 20 and not {"4821", "347", "58"} & CONSTANTS  # not the examples' own numbers


def test_every_bank_example_runs_and_prints_one_value(shared_kernel):
    for question, code in BANK:
        res = shared_kernel.execute(code, timeout=30)
        assert res.ok and res.stdout.strip() and res.stdout.count("\n") == 1, (question, code, res)


# -- the loop with a small model ------------------------------------------------------------------------

def test_examples_are_picked_for_the_question_and_numbers_grounded_in_the_conversation(tmp_path):
    backend = RecordingBackend(["```python\nimport math\nprint(math.factorial(23))\n```"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        chat.attempts = 1
        assert chat("What is 23 factorial?") == "25852016738884976640000"
        sent = backend.requests[0]
        assert "math.factorial(" in sent[-2].content and sent[-1].content == "What is 23 factorial?"
        assert backend.numbers[0] == CONSTANTS | {"23"}
        favour = backend.guides[0]["favour"]  # the example's code and the question get a bonus
        assert "math.factorial(" in favour and favour.endswith("What is 23 factorial?")
        assert backend.guides[0]["bonus"] == EXAMPLE_BONUS
        assert [m.role for m in chat.messages()] == ["system", "user", "assistant", "tool", "assistant"]


def test_grounding_can_be_turned_off_and_examples_replaced(tmp_path):
    backend = RecordingBackend(["```python\nprint(6 * 7)\n```"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        chat.ground_numbers, chat.example_bonus, chat.attempts = False, 0, 1
        chat.examples = [("What is 2 times 3?", "```python\nprint(2 * 3)\n```")]
        assert chat("What is 6 times 7?") == "42"
        assert backend.numbers == [None] and backend.guides == [{}]
        assert backend.requests[0][1].content == "What is 2 times 3?"


def test_a_failed_attempt_is_regenerated_afresh_on_a_sibling_branch(tmp_path):
    backend = RecordingBackend(["```python\nprint(totl)\n```", "It is 42.", "```python\nprint(6 * 7)\n```"])
    events = []
    with Chat(backend=backend, workspace=tmp_path) as chat:
        assert chat("What is 6 times 7?", on_event=events.append) == "42"
        # The model never sees a failed attempt: each request ends with the example and the question.
        assert [r[-2:] for r in backend.requests[1:]] == [backend.requests[0][-2:]] * 2
        assert backend.temperatures == [None, SAMPLE_TEMPERATURE, SAMPLE_TEMPERATURE]
        assert len(chat.branches(all=True)) == 3  # every attempt stays reachable
        assert [b.set_aside for b in chat.branches()] == [2]  # folded under the turn by default
        assert [m.role for m in chat.messages()] == ["system", "user", "assistant", "tool", "assistant"]
        assert "6 * 7" in chat.messages()[2].tool_calls[0].arguments
    notices = [e.text for e in events if isinstance(e, NoticeEvent)]
    assert notices == ["attempt 1 printed no value: attempt 2 of at most 5, afresh",
                       "attempt 2 wrote no code: attempt 3 of at most 5, afresh"]  # prose is no answer
    assert [e.steps for e in events if isinstance(e, AnswerEvent)] == [3]


def test_with_agree_the_answer_is_the_value_most_attempts_printed(tmp_path):
    backend = RecordingBackend(["```python\nprint(1)\n```", "```python\nprint(2)\n```",
                                "```python\nprint(3)\n```", "```python\nprint(2)\n```"])
    events = []
    with Chat(backend=backend, workspace=tmp_path) as chat:
        chat.agree = 2
        assert chat("Which?", on_event=events.append) == "2"
        assert len(backend.requests) == 4 and len(chat.branches(all=True)) == 4
        assert chat.messages()[2].tool_calls[0].arguments == '{"code": "print(2)"}'  # the earliest of the two
    assert events[-2].text == "answer printed by 2 of 4 attempts"
    backend = RecordingBackend(["```python\nprint(1)\n```", "```python\nprint(2)\n```"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        chat.attempts, chat.agree = 2, 2
        assert chat("Which?") == "1"  # no majority: the earliest (greedy) attempt


def test_losing_attempts_leave_nothing_in_the_kernel_for_the_next_prompt(tmp_path):
    backend = RecordingBackend(["```python\nleak = 1\nprint(leak / 0)\n```", "```python\nkept = 2\nprint(11)\n```",
                                "```python\nprint('leak' in globals(), kept)\n```"])
    with Chat(backend=backend, workspace=tmp_path, progress=False) as chat:
        assert chat("First?") == "11"
        assert chat("Second?") == "False 2"  # the kernel was brought to the winning branch


def test_an_explicit_temperature_of_zero_means_one_attempt(tmp_path):
    backend = RecordingBackend(["```python\nprint(totl)\n```", "```python\nprint(42)\n```"])
    with Chat(backend=backend, workspace=tmp_path, temperature=0) as chat:
        assert chat("What is 6 times 7?") == "[stopped after 1 attempt without printing a value]"
        assert backend.temperatures == [0]


@pytest.mark.parametrize("code", ["print(reversed('abc'))", "print(x for x in 'abc')", "x = 1", "print(len)",
                                  "print(str)", "print(lambda: 1)", "print(1 / 0)"])
def test_an_objects_repr_or_no_output_is_no_value(tmp_path, code):
    backend = RecordingBackend([f"```python\n{code}\n```", "```python\nprint('abc'[::-1])\n```"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        assert chat("What is the string 'abc' reversed?") == "cba"


def test_a_displayed_last_expression_is_a_value(tmp_path):
    backend = RecordingBackend(["```python\n6 * 7\n```", "```python\nprint(42)\n```"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        assert chat("What is 6 times 7?") == "42"


# -- grounded decoding with the real tokenizer and model ------------------------------------------------

@pytest.mark.slow
def test_grounded_numbers_masks_digits_that_leave_the_allowed_numbers(local_backend):
    tok = local_backend.tokenizer
    proc = GroundedCode(tok, 0, {"1", "10", "1000"})
    digit = {str(d): tok.convert_tokens_to_ids(str(d)) for d in range(10)}

    def allowed(text):
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        scores = proc(ids, torch.zeros(1, len(tok)))[0]
        return {d for d, i in digit.items() if scores[i] > float("-inf")}, scores

    assert allowed("some prose 7")[0] == set(digit)                    # outside code: free
    assert allowed("```python\nprint(")[0] == {"1"}                   # a literal starts: only 1...
    after_one, scores = allowed("```python\nprint(1")
    assert after_one == {"0"} and scores[tok.convert_tokens_to_ids(")")] == 0  # 1 is whole; 10... go on
    inside, scores = allowed("```python\nprint(10")
    assert inside == {"0"} and scores[tok.convert_tokens_to_ids(")")] == 0   # 10 is whole too
    partial, scores = allowed("```python\nprint(100")
    assert partial == {"0"} and scores[tok.convert_tokens_to_ids(")")] == float("-inf")  # 100 is not
    assert allowed("```python\nx1 = f'{y:.")[0] == set(digit)          # names and formats are free
    assert allowed("```python\nprint(1)\n```\nThe answer is ")[0] == set(digit)  # the block is closed


@pytest.mark.slow
def test_the_examples_tokens_get_a_bonus_in_code_only(local_backend):
    tok = local_backend.tokenizer
    favoured = tok("print('abc'[::-1])", add_special_tokens=False)["input_ids"]
    proc = GroundedCode(tok, 0, None, favoured, bonus=3.0)

    def scores(text):
        return proc(torch.tensor([tok(text, add_special_tokens=False)["input_ids"]]), torch.zeros(1, len(tok)))[0]

    inside, outside = scores("```python\nprint("), scores("Let me think: ")
    assert set(torch.nonzero(inside).flatten().tolist()) == set(favoured) and inside[favoured[0]] == 3.0
    assert not outside.any()  # prose is left alone
    assert local_backend._guides(0, None, "x", 0.0) == [] and local_backend._guides(0, None, None, 3.0) == []


@pytest.mark.slow
def test_the_real_model_writes_only_grounded_numbers(local_backend):
    assert local_backend.capabilities.grounds_numbers
    question = "What is the sum of the integers from 1 to 1000?"
    allowed = CONSTANTS | numbers_in(question)
    shots = [Message(role=r, content=t) for q, a in pick(question) for r, t in (("user", q), ("assistant", a))]
    messages = [Message(role="system", content="Answer with one Python code block."), *shots,
                Message(role="user", content=question)]
    reply = local_backend.complete(messages, [SCHEMA], max_tokens=80, numbers=allowed)
    code = reply.message.tool_calls[0].parsed_arguments()["code"]  # the fenced block, as a python call
    assert numbers_in(code) <= allowed, code
