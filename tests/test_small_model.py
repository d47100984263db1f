"""What makes the 135M model useful: examples picked per question, grounded numbers in its code, and
a repair step that says what went wrong in one line. Scripted models for the loop's logic, the real
tokenizer and model for the decoding constraint, real kernels throughout."""

import pytest
import torch

from agent import Chat
from agent.backends.grounding import GroundedNumbers
from agent.backends.scripted import ScriptedBackend
from agent.loop import REPAIR_TEMPERATURE
from agent.messages import LOOP_NAME, Message
from agent.prompts import CODE_NUDGE
from agent.shots import BANK, CONSTANTS, numbers_in, pick
from tools.python_tool import SCHEMA


class RecordingBackend(ScriptedBackend):
    """A scripted model that, like the local backend, accepts `numbers=`; records what it was sent."""

    supports_tools = False
    grounds_numbers = True

    def __init__(self, replies):
        super().__init__(replies)
        self.numbers, self.temperatures = [], []

    def stream(self, messages, tools=None, *, max_tokens=None, temperature=None, numbers=None):
        self.numbers.append(numbers)
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
        assert chat("What is 23 factorial?") == "25852016738884976640000"
        sent = backend.requests[0]
        assert "math.factorial(" in sent[-2].content and sent[-1].content == "What is 23 factorial?"
        assert backend.numbers[0] == CONSTANTS | {"23"}
        assert [m.role for m in chat.messages()] == ["system", "user", "assistant", "tool", "assistant"]


def test_grounding_can_be_turned_off_and_examples_replaced(tmp_path):
    backend = RecordingBackend(["```python\nprint(6 * 7)\n```"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        chat.ground_numbers = False
        chat.examples = [("What is 2 times 3?", "```python\nprint(2 * 3)\n```")]
        assert chat("What is 6 times 7?") == "42"
        assert backend.numbers == [None] and backend.requests[0][1].content == "What is 2 times 3?"


def test_the_code_nudge_is_not_a_prompt(tmp_path):
    backend = RecordingBackend(["It is about 42.", "```python\nprint(6 * 7)\n```"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        assert chat("What is 6 times 7?") == "42"
        nudge = chat.messages()[3]
        assert nudge.content == CODE_NUDGE and nudge.name == LOOP_NAME
        assert [b.prompts for b in chat.branches()] == [["What is 6 times 7?"]]
        with pytest.raises(ValueError, match="prompts 0 to 0"):
            chat.edit(1, "What is 2 + 2?")
        assert "kernelchat: " + CODE_NUDGE in chat.export("md", tmp_path / "c.md").read_text()


def test_an_objects_repr_is_no_answer_and_the_repair_is_sampled(tmp_path):
    backend = RecordingBackend(["```python\nprint(reversed('abc'))\n```", "```python\nprint('abc'[::-1])\n```"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        assert chat("What is the string 'abc' reversed?") == "cba"
        repair = backend.requests[1][-1].content
        assert "an object, not its value" in repair and "The question was: What is the string 'abc'" in repair
        assert backend.temperatures == [None, REPAIR_TEMPERATURE]


def test_an_unquoted_word_gets_a_hint_to_quote_it(tmp_path):
    backend = RecordingBackend(["```python\nprint(mississippi.count('s'))\n```",
                                "```python\nprint('mississippi'.count('s'))\n```"])
    with Chat(backend=backend, workspace=tmp_path, temperature=0) as chat:
        assert chat("How many times does the letter s appear in the word mississippi?") == "4"
        repair = backend.requests[1][-1].content
        assert "NameError: name 'mississippi' is not defined" in repair and "in quotes: 'mississippi'" in repair
        assert backend.temperatures == [0, 0]  # an explicit temperature is kept for the repair


def test_printing_nothing_asks_for_a_print(tmp_path):
    backend = RecordingBackend(["```python\nx = 6 * 7\n```", "```python\nprint(x)\n```"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        assert chat("What is 6 times 7?") == "42"
        assert backend.requests[1][-1].content.startswith("The code printed nothing.")


# -- grounded decoding with the real tokenizer and model ------------------------------------------------

@pytest.mark.slow
def test_grounded_numbers_masks_digits_that_leave_the_allowed_numbers(local_backend):
    tok = local_backend.tokenizer
    proc = GroundedNumbers(tok, 0, {"1", "10", "1000"})
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
def test_the_real_model_writes_only_grounded_numbers(local_backend):
    assert local_backend.grounds_numbers
    question = "What is the sum of the integers from 1 to 1000?"
    allowed = CONSTANTS | numbers_in(question)
    shots = [Message(role=r, content=t) for q, a in pick(question) for r, t in (("user", q), ("assistant", a))]
    messages = [Message(role="system", content="Answer with one Python code block."), *shots,
                Message(role="user", content=question)]
    reply = local_backend.complete(messages, [SCHEMA], max_tokens=80, numbers=allowed)
    code = reply.message.tool_calls[0].parsed_arguments()["code"]  # the fenced block, as a python call
    assert numbers_in(code) <= allowed, code
