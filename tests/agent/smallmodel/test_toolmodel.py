"""The small-model mode for tool-trained models (SmallToolModelStrategy): scripted models for each rule,
real kernels throughout. Replies of the real Qwen2.5-Coder models are in test_recorded.py."""

import json

import pytest

from agent import Chat
from agent.chat import SMALL_TOOL_MODEL_PARAMETERS, is_small
from agent.core.backend import Capabilities
from agent.core.events import AnswerEvent, NoticeEvent, ToolResultEvent
from agent.core.loop import PLAIN
from agent.core.messages import Message, ToolCall
from agent.models.scripted import ScriptedBackend, python_call
from agent.smallmodel.shots_bank import BANK
from agent.smallmodel.shots_outputs import OUTPUTS
from agent.smallmodel.strategy import SmallModelStrategy
from agent.smallmodel.toolmodel import (MAX_CALLS_PER_REPLY, SmallToolModelStrategy, call_key, mentions,
                                        non_answer)

SMALL = Capabilities(streaming=False, parameters=494_000_000)


class GuidedBackend(ScriptedBackend):
    """A scripted small tool model that, like the local backend, takes `max_calls=`."""

    def __init__(self, replies):
        super().__init__(replies, capabilities=Capabilities(streaming=False, parameters=494_000_000,
                                                            stops_after_calls=True))
        self.guides, self.temperatures = [], []

    def stream(self, messages, tools=None, **kw):
        self.guides.append({k: v for k, v in kw.items() if k not in ("max_tokens", "temperature")})
        self.temperatures.append(kw.get("temperature"))
        yield from super().stream(messages, tools, max_tokens=kw.get("max_tokens"), temperature=kw.get("temperature"))


def calls(*codes, name="python"):
    return Message(role="assistant", tool_calls=[ToolCall(id=f"c{i}", name=name, arguments=json.dumps({"code": c}))
                                                 for i, c in enumerate(codes)])


def run(chat, prompt):
    events = list(chat.run(prompt))
    return events, events[-1]


def cells_run(events):
    return [e for e in events if isinstance(e, ToolResultEvent) and e.status in ("ok", "error")]


# -- which strategy --------------------------------------------------------------------------------

def test_the_strategy_follows_what_the_model_is(tmp_path):
    big = Capabilities(streaming=False, parameters=SMALL_TOOL_MODEL_PARAMETERS)
    with Chat(backend=ScriptedBackend([], capabilities=SMALL), workspace=tmp_path) as chat:
        assert isinstance(chat.strategy, SmallToolModelStrategy) and chat.answer_from_output
        assert chat.max_calls == MAX_CALLS_PER_REPLY and chat.max_tokens_per_step == 1024
        chat.resamples, chat.fix_requests = 0, 1
        assert (chat.strategy.resamples, chat.strategy.fix_requests) == (0, 1)
        chat.use_backend(ScriptedBackend([], capabilities=big))
        assert chat.strategy is PLAIN
        chat.use_backend(ScriptedBackend([], capabilities=Capabilities(tools=False, streaming=False)))
        assert type(chat.strategy) is SmallModelStrategy
    assert not is_small(ScriptedBackend([], capabilities=Capabilities()))  # size unknown: an API model
    with Chat(backend=ScriptedBackend([], capabilities=SMALL), workspace=tmp_path, answer_from_output=False) as chat:
        assert chat.strategy is PLAIN
    with Chat(backend=ScriptedBackend([], capabilities=big), workspace=tmp_path, answer_from_output=True) as chat:
        assert isinstance(chat.strategy, SmallToolModelStrategy)


# -- calls in one reply ------------------------------------------------------------------------------

def test_identical_calls_in_one_reply_run_once(tmp_path):
    backend = GuidedBackend([calls(*["print(2**100)"] * 50), "2**100 is 1267650600228229401496703205376."])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "What is 2**100? Use Python.")
    assert len(cells_run(events)) == 1
    assert any(isinstance(e, NoticeEvent) and "49 identical calls in one reply dropped" in e.text for e in events)
    assert answer.text == "2**100 is 1267650600228229401496703205376."
    assert backend.guides[0] == {"max_calls": MAX_CALLS_PER_REPLY}  # generation stops at call 4
    # the conversation holds the one call that ran, and its one result: servers want a result per call
    assert [len(m.tool_calls) for m in chat.messages() if m.role == "assistant"] == [1, 0]


def test_a_reply_runs_at_most_max_calls_distinct_calls(tmp_path):
    backend = ScriptedBackend([calls(*[f"print({i})" for i in range(6)]), "done: 0 1 2"], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, _ = run(chat, "Print 0 to 5. Use Python.")
    assert [e.output.strip() for e in cells_run(events)] == ["0", "1", "2"]
    assert any(isinstance(e, NoticeEvent) and "3 more calls in one reply not run (at most 3 per reply)" in e.text
               for e in events)


# -- repeats after a result -----------------------------------------------------------------------------

def test_a_repeated_call_is_not_run_again_and_the_model_is_told(tmp_path):
    backend = ScriptedBackend([python_call("a, b = 12345, 6789\nprint(a * b)"),
                               python_call("a, b = 12345, 6789\nprint(a * b)  "),  # the same, but for blanks
                               "The product is 83810205."], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "What is 12345 * 6789? Use Python.")
    assert len(cells_run(events)) == 1
    assert [e.status for e in events if isinstance(e, ToolResultEvent)] == ["ok", "repeat"]
    told = backend.requests[2][-1]
    assert told.role == "tool" and "You already ran this exact call" in told.content and "83810205" in told.content
    assert answer.text == "The product is 83810205." and answer.outcome == "answered"


def test_a_turn_that_keeps_repeating_ends_with_the_printed_value(tmp_path):
    backend = ScriptedBackend([python_call("print(17 * 3)")] * 5, capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "What is 17 * 3? Use Python.")
        assert answer.text == "51" and answer.steps == 3 and len(backend.replies) == 2  # two requests saved
        assert len(cells_run(events)) == 1 and chat.last_outcome.status == "answered"
        assert chat.messages()[-1] == Message(role="assistant", content="51")


def test_a_repeating_turn_without_a_value_stops(tmp_path):
    backend = ScriptedBackend([python_call("x = 1")] * 5, capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "Set x. Use Python.")
    assert answer.outcome == "stopped" and "kept repeating" in answer.text and not backend.replies
    assert sum(isinstance(e, NoticeEvent) and "asked again, sampled" in e.text for e in events) == 2


def test_a_repeated_failing_call_is_asked_again_sampled_on_a_branch_not_taken(tmp_path):
    """Recorded from Qwen2.5-Coder-0.5B: `1 + 2 + 3 + ... + 1000` fails, and the greedy reply repeats it."""
    backend = GuidedBackend([python_call("1 + 2 + 3 + ... + 1000"), python_call("1 + 2 + 3 + ... + 1000"),
                             python_call("print(sum(range(1, 1001)))"), "500500"])
    with Chat(backend=backend, workspace=tmp_path, temperature=None) as chat:
        events, answer = run(chat, "What is the sum of the integers from 1 to 1000? Use Python.")
        assert answer.text == "500500"
        assert [e.status for e in events if isinstance(e, ToolResultEvent)] == ["error", "ok"]
        assert [m.role for m in chat.messages()] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                                     "assistant"]
        assert any(b.outcome and b.outcome.status == "set_aside" for b in chat.tree.nodes.values())
    assert backend.temperatures == [None, None, 0.7, None]


def test_examples_go_before_the_question_as_whole_exchanges(tmp_path):
    backend = ScriptedBackend([python_call("import math\nprint(math.factorial(17))"), "355687428096000"],
                              capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        run(chat, "What is 17 factorial? Use Python.")
    sent = backend.requests[0]
    assert [m.role for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert "factorial" in sent[1].content and "math.factorial" in sent[2].tool_calls[0].arguments
    assert sent[3].content == sent[4].content == OUTPUTS[json.loads(sent[2].tool_calls[0].arguments)["code"]]


def test_the_examples_outputs_are_what_their_code_prints(shared_kernel):
    for code, output in OUTPUTS.items():
        res = shared_kernel.execute(code)
        assert res.status == "ok" and res.stdout.rstrip("\n") == output, code
    assert {code for _, code in BANK} == set(OUTPUTS)


def test_the_same_call_in_a_later_turn_runs(tmp_path):
    """Repeats are counted per turn: the user may ask again after changing something."""
    backend = ScriptedBackend([python_call("print(len(open('f').read()))"), "3",
                               python_call("print(len(open('f').read()))"), "5"], capabilities=SMALL)
    (tmp_path / "f").write_text("abc")
    with Chat(backend=backend, workspace=tmp_path) as chat:
        run(chat, "How long is f? Use Python.")
        (tmp_path / "f").write_text("abcde")
        events, answer = run(chat, "And now? Use Python.")
    assert [e.output.strip() for e in cells_run(events)] == ["5"] and answer.text == "5"


# -- non-answers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply", ["", "Thank you for providing the correct answer.", '{"response": "83810205"}',
                                   "print(a * b)", "<tool_call>\n{\"name\": \"python\", \"arguments\": {\"code"])
def test_a_non_answer_after_a_result_is_answered_from_the_output(tmp_path, reply):
    backend = ScriptedBackend([python_call("a, b = 12345, 6789\nprint(a * b)"), reply], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "What is 12345 * 6789? Use Python.")
        assert answer.text == "83810205" and chat.messages()[-1].content == "83810205"
    assert any(isinstance(e, NoticeEvent) and "answered with the value the code printed" in e.text for e in events)


def test_an_answer_without_the_value_gets_it_added(tmp_path):
    backend = ScriptedBackend([python_call("print(2**10)"), "The answer is one thousand and twenty four."],
                              capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        _, answer = run(chat, "What is 2**10? Use Python.")
    assert answer.text == "The answer is one thousand and twenty four.\n\n1024"


def test_an_answer_with_the_value_or_without_a_value_stays():
    assert mentions("The square root is 123.", "123.0") and mentions("It is 1,024.", "1024")
    assert mentions("mean 18 and max 99", "18.0 99") and not mentions("12", "123")
    assert mentions("It is HelloHelloHello", "HelloHelloHello") and not mentions("nothing", "")
    assert non_answer("", []) and non_answer("Thanks!", []) and non_answer("[1, 2]", [])
    assert not non_answer("The result is 42.", ["print(6 * 7)"])
    assert call_key(ToolCall(id="a", name="python", arguments='{"code": "x "}')) == \
        call_key(ToolCall(id="b", name="python", arguments='{ "code":"x"}'))


def test_no_value_printed_means_no_answer_from_output(tmp_path):
    backend = ScriptedBackend([python_call("x = 5"), ""], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        _, answer = run(chat, "Set x to 5. Use Python.")
    assert answer.text == ""


# -- invented tools ----------------------------------------------------------------------------------------

def test_an_unknown_tool_holding_code_runs_as_python_and_the_model_is_told(tmp_path):
    backend = ScriptedBackend([calls("print(98765 - 43210)", name="subtract_numbers"), "55555"], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "What is 98765 minus 43210? Use Python.")
        assert chat.messages()[2].tool_calls[0].name == "python"
    assert [e.output.strip() for e in cells_run(events)][0].endswith("55555") and answer.text == "55555"
    told = backend.requests[1][-1]
    assert told.content.startswith("(There is no tool named 'subtract_numbers': your code ran with the `python` tool.)")
    assert any(isinstance(e, NoticeEvent) and "'subtract_numbers', which is no tool" in e.text for e in events)


def test_an_unknown_tool_is_not_run_as_python_when_another_tool_takes_code(tmp_path):
    def run_sql(code: str) -> str:
        """Run SQL."""
        return "rows"

    backend = ScriptedBackend([calls("SELECT 1", name="sql"), "ok"], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path, tools=[run_sql]) as chat:
        events, _ = run(chat, "Query. Use SQL.")
    result = next(e for e in events if isinstance(e, ToolResultEvent))
    assert result.status == "invalid" and "there is no tool named 'sql'" in result.output


def test_a_second_cell_printing_the_same_value_ends_the_turn(tmp_path):
    """Recorded from Qwen2.5-Coder-0.5B: print(2**100), then print(<its value>) again and again."""
    value = str(2**100)
    backend = ScriptedBackend([python_call("print(2**100)"), python_call(f"print({value})"),
                               python_call(f"print({value})")], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "What is 2**100? Use Python.")
    assert answer.text == value and len(cells_run(events)) == 2 and len(backend.replies) == 1


def test_a_stray_closing_brace_is_removed_and_the_cell_runs_again(tmp_path):
    """Recorded from Qwen2.5-Coder-0.5B: the JSON's `}` inside the code, a SyntaxError every time."""
    backend = ScriptedBackend([python_call("print(1 * 2 * 3 * 4 * 5 * 6 * 7 * 8 * 9 * 10)}"), ""],
                              capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "What is the product of the integers from 1 to 10? Use Python.")
    assert answer.text == "3628800"
    assert any("removed a stray `}`" in getattr(e, "text", "") for e in events)


def test_the_loops_note_printed_by_the_model_is_no_new_value(tmp_path):
    """Recorded from Qwen2.5-Coder-0.5B: told it already ran print('Hello' * 3), it printed the note."""
    note = "print('You already ran this exact call; it was not run again. Its output was: HelloHelloHello')"
    backend = ScriptedBackend([python_call("print('Hello' * 3)"), python_call("print('Hello' * 3)"),
                               python_call(note), python_call(note)], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        _, answer = run(chat, "What is 'Hello' repeated 3 times? Use Python.")
    assert answer.text == "HelloHelloHello" and len(backend.replies) == 1


def test_factorials_written_as_math_are_rewritten(tmp_path):
    """Recorded from Qwen2.5-Coder-0.5B: `print(100! / 98!)`, repeated and resampled alike."""
    backend = ScriptedBackend([python_call("print(100! / 98!)"), "9900"], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "What is 100 factorial divided by 98 factorial? Use Python.")
    assert answer.text == "9900" and cells_run(events)[0].output.strip().endswith("9900.0")
    assert any("as `math.factorial(N)`" in getattr(e, "text", "") for e in events)


def test_chained_inplace_calls_become_assignments(tmp_path):
    """Recorded from Qwen2.5-Coder-1.5B on Titanic: `df['Age'].fillna(..., inplace=True)`, a silent
    no-op under pandas' copy-on-write (the NaNs stayed and training failed later)."""
    code = ("import pandas as pd\nimport numpy as np\ndf = pd.DataFrame({'Age': [1.0, np.nan], 'Sex': ['m', 'f']})\n"
            "df['Age'].fillna(df['Age'].median(), inplace=True)\n"
            "for c in ['Sex']:\n    df[c].replace({'m': 0, 'f': 1}, inplace = True)  # numeric\n"
            "df.fillna(0, inplace=True)\nprint(int(df['Age'].isna().sum()), df['Sex'].tolist())")
    backend = ScriptedBackend([python_call(code), "done"], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "Fill the missing ages and encode Sex.")
        cell = cells_run(events)[0]
        assert cell.output.strip().endswith("0 [0, 1]") and "ChainedAssignmentError" not in cell.output
        assert "df['Age'] = df['Age'].fillna(df['Age'].median())" in cell.code
        assert "df.fillna(0, inplace=True)" in cell.code  # not chained: left as written
    assert any("2 chained `inplace=True` calls" in getattr(e, "text", "") for e in events)


def test_prose_right_after_a_failed_cell_is_set_aside_and_the_model_asked_to_fix_it(tmp_path):
    """Recorded from Qwen2.5-Coder-1.5B on Titanic: the fit fails on a text column and the reply
    explains the traceback instead of fixing it, which ended the task undone."""
    explain = "The error occurs because the column `Name` holds strings, which the model cannot use."
    backend = ScriptedBackend([python_call("import pandas as pd\nX = pd.DataFrame({'a': ['x']})\nprint(X['a'].astype(float))"),
                               explain, python_call("X = pd.DataFrame({'a': [1.5]})\nprint(float(X['a'].sum()))"),
                               "The sum is 1.5."], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        events, answer = run(chat, "Sum the column.")
        assert answer.text == "The sum is 1.5."
        assert [e.status for e in cells_run(events)] == ["error", "ok"]
        # the explanation stays in the tree, as a branch not taken; the fix follows the error
        assert [m.role for m in chat.messages()] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                                     "assistant"]
        aside = [n for n in chat.tree.nodes.values() if n.outcome and n.outcome.status == "set_aside"]
        assert [n.message.content for n in aside] == [explain]
    fix = backend.requests[2][-1]
    assert fix.role == "user" and "Fix the code" in fix.content
    assert all("Fix the code" not in (m.content or "") for m in backend.requests[3])  # for that request only
    assert any("asked to fix the code" in getattr(e, "text", "") for e in events)


def test_fix_requests_are_bounded_and_never_follow_a_value(tmp_path):
    fail = python_call("print(undefined_name)")
    backend = ScriptedBackend([fail, "It failed.", "It failed again.", "It cannot be done."], capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        _, answer = run(chat, "Print the variable.")
    assert answer.text == "It cannot be done." and len(backend.requests) == 4
    # a value already printed: a later failure's prose is an answer (as the arithmetic bench needs)
    backend = ScriptedBackend([python_call("print(2**10)"), python_call("print(undefined_name)"), "It is 1024."],
                              capabilities=SMALL)
    with Chat(backend=backend, workspace=tmp_path) as chat:
        _, answer = run(chat, "What is 2**10?")
    assert answer.text == "It is 1024." and len(backend.requests) == 3


def test_an_empty_reply_before_any_value_is_asked_again_sampled(tmp_path):
    """Recorded from Qwen2.5-Coder-1.5B on Titanic's second prompt: one token, the end of turn."""
    backend = GuidedBackend(["", python_call("accuracy = 0.8\nprint(accuracy)"), "The accuracy is 0.8."])
    with Chat(backend=backend, workspace=tmp_path, temperature=None) as chat:
        events, answer = run(chat, "Train a model and print its accuracy.")
        assert answer.text == "The accuracy is 0.8."
        assert [m.role for m in chat.messages()] == ["system", "user", "assistant", "tool", "assistant"]
    assert backend.temperatures == [None, 0.7, None]
    assert any("gave an empty reply: asked again, sampled" in getattr(e, "text", "") for e in events)
    # at temperature 0 an empty reply is the answer: nothing is sampled
    backend = GuidedBackend([""])
    with Chat(backend=backend, workspace=tmp_path, temperature=0) as chat:
        _, answer = run(chat, "Train a model and print its accuracy.")
    assert answer.text == "" and len(backend.requests) == 1
