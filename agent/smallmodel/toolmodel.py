"""The small-model mode for models with tool training (Qwen2.5-Coder 0.5B and 1.5B, measured): they
call `python` natively and usually compute the right value in their first cell, then lose it: they
call the same code again after its result, write dozens of identical calls in one reply, answer
"Thank you for providing the correct answer." (Qwen's template shows a tool result inside a user
turn), or call a tool named after the question. So, as for models without tool training, the
answer is the value the code printed, and the loop keeps the model from going round in circles.

What this variant does, each rule taken from recorded replies of those models (tests/data/recorded/):
- identical calls in one reply run once, and a reply runs at most `max_calls` calls;
- a call identical to one already run in the turn is not run again: the model reads that it has
  the result already; when it keeps repeating (`max_repeats`), the turn ends with the printed value;
  so does a second cell printing the value an earlier one printed (the model confirming); a reply
  that only repeats calls which printed nothing, or an empty reply before any call, is asked again,
  sampled (`resamples`);
- a call to a tool that does not exist, whose arguments hold code, runs as `python` (when that is
  the only code tool), and the model reads that it did;
- a non-answer after a printed value (empty, thanks, the call written out again, code) is answered
  with the value; an answer that does not mention the value gets it added.
Tool-trained models repair from a traceback, so failed cells are repaired (the plain loop's way),
not regenerated; the worked examples and number grounding of the template-less mode stay off.
"""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING, Any, Iterator

from sandbox import ExecResult

from agent.core.events import AnswerEvent, Event, NoticeEvent, ToolCallEvent, ToolResultEvent
from agent.core.loop import request, run_call
from agent.core.messages import Message, ToolCall, tool_result
from agent.core.tree import TurnOutcome
from agent.smallmodel import shots
from agent.smallmodel.shots_outputs import OUTPUTS
from agent.smallmodel.strategy import SAMPLE_TEMPERATURE, SmallModelStrategy, last_prompt, value_of

if TYPE_CHECKING:
    from agent.core.session import Session

# A reply of these models needs one call (the kernel keeps state: the next cell can wait for the
# next step); a few allow "load, then compute" in one reply. 3 caps a degenerate reply (57 calls of
# `2**100` in one reply were measured) at three cells' time.
MAX_CALLS_PER_REPLY = 3
# One repeat is answered "you have this already"; the next one ends the turn with the value.
MAX_REPEATS = 1
# A reply that only repeats calls which printed no value (a syntax error, `1 + 2 + ... + 1000`) is
# the greedy path again: asked afresh, sampled, up to this many times a turn.
RESAMPLES = 2
# A reply in prose right after a failed cell, before any value: the 1.5B explains the traceback
# ("The error occurs because ...") and the turn ends with the task undone (recorded on Titanic). It
# is set aside and the model asked to fix the code, this many times a turn.
FIX_REQUESTS = 2
FIX_REQUEST = ("Your last cell failed (its error is above). Fix the code and run it again with the python "
               "tool; answer only when it has run.")
# Only a close example helps: a task's long prompt (Titanic's) matches some arithmetic example at
# 0.3-0.45 and the example is noise there; the bench's questions match theirs at 0.5-1.
EXAMPLE_LEAST = 0.5
ALREADY_RAN = "You already ran this exact call"
CODE_KEYS = ("code", "python", "script", "source", "program", "cell")
THANKS = re.compile(r"\b(thank(s| you)|you'?re welcome|glad (i|to)|happy to help)\b", re.IGNORECASE)
FACTORIAL = re.compile(r"\b(\d+)!(?!=)")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", re.IGNORECASE)
# `df['Age'].fillna(df['Age'].median(), inplace=True)`: what these models learned from pre-3.0
# pandas (recorded on Titanic, in every cleaning cell). Under copy-on-write (pandas >= 3) it is a
# silent no-op: the column keeps its NaNs and training fails three steps later. As an assignment
# it does what the model meant with every pandas version.
CHAINED_INPLACE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<target>[A-Za-z_]\w*(?:\[[^\[\]\n]+\])+)\."
    r"(?P<method>fillna|replace|ffill|bfill|interpolate|clip|where|mask)"
    r"\((?:(?P<args>.*?),\s*)?inplace\s*=\s*True\s*\)(?P<rest>[ \t]*(?:#.*)?)$", re.MULTILINE)


class SmallToolModelStrategy(SmallModelStrategy):
    """The knobs: `examples`, `max_calls` per reply, `max_repeats` before a repeating turn ends,
    `resamples` of a reply that repeats a call which printed nothing, `fix_requests` after a reply in
    prose right after a failed cell. The template-less mode's
    grounding is off (`ground_numbers`, `example_bonus`)."""

    def __init__(self) -> None:
        super().__init__(on=False)
        # Worked examples before the question, as whole exchanges (call, result, answer): a function
        # of the question giving (question, code) or (question, code, output), or a list of them.
        self.examples = functools.partial(shots.pick_code, least=EXAMPLE_LEAST)
        self.max_calls, self.max_repeats, self.resamples = MAX_CALLS_PER_REPLY, MAX_REPEATS, RESAMPLES
        self.fix_requests = FIX_REQUESTS
        self.turn = TurnState()

    def run_turn(self, session: "Session") -> Iterator[Event]:
        self.turn = TurnState()
        return tool_steps(self, session)

    def prepare_request(self, session: "Session", messages: list[Message]) -> tuple[list[Message], dict[str, Any]]:
        extra = {"max_calls": self.max_calls} if session.backend.capabilities.stops_after_calls else {}
        if not session.use_python:
            return messages, extra
        question = last_prompt(session)
        examples = self.examples(question) if callable(self.examples) else self.examples
        # The request to fix a failed cell goes to this request only: the tree keeps what was said.
        fix, self.turn.fix = ([Message(role="user", content=FIX_REQUEST)] if self.turn.fix else []), False
        return messages[:1] + example_turns(examples) + messages[1:] + fix, extra

    def revise_reply(self, session: "Session", msg: Message) -> tuple[Message, list[str]]:
        if msg.tool_calls:
            return self.revise_calls(session, msg)
        return self.revise_answer(msg)

    def revise_calls(self, session: "Session", msg: Message) -> tuple[Message, list[str]]:
        tools = session.all_tools()
        notes, calls, keys = [], [], set()
        for call in msg.tool_calls:
            as_python = python_call_from(call, tools)
            if as_python is not None:
                notes.append(f"the model called {call.name!r}, which is no tool: its code runs as python")
                self.turn.renamed[call.id] = call.name
                call = as_python
            call, mended = mend_chained_inplace(call)
            if mended:
                notes.append(f"rewrote {mended} chained `inplace=True` call{'s' * (mended > 1)} as assignment "
                             "(a no-op under pandas' copy-on-write)")
            key = call_key(call)
            if key in keys:
                continue
            keys.add(key)
            calls.append(call)
        dropped = len(msg.tool_calls) - len(calls)
        if dropped:
            notes.append(f"{dropped} identical call{'s' * (dropped > 1)} in one reply dropped")
        if len(calls) > self.max_calls:
            notes.append(f"{len(calls) - self.max_calls} more calls in one reply not run "
                         f"(at most {self.max_calls} per reply)")
            calls = calls[:self.max_calls]
        return msg.model_copy(update={"tool_calls": calls}), notes

    def revise_answer(self, msg: Message) -> tuple[Message, list[str]]:
        value, text = self.turn.value, (msg.content or "").strip()
        if value is None:
            return msg, []
        if non_answer(text, self.turn.codes):
            shown = f": {text[:60]!r}" if text else ""
            return msg.model_copy(update={"content": value}), [f"answered with the value the code printed "
                                                              f"(the model's reply was no answer{shown})"]
        if mentions(text, value):
            return msg, []
        return msg.model_copy(update={"content": f"{text}\n\n{value}"}), []

    def revise_cell(self, code: str, result: ExecResult) -> tuple[str, str] | None:
        # Besides the missing import: the JSON's closing brace written into the code
        # (`print(1 * 2 * ... * 10)}`, recorded from the 0.5B, repeated and resampled alike).
        if result.status != "error" or result.error_name != "SyntaxError":
            return super().revise_cell(code, result)
        if (result.error_value or "").startswith("unmatched '}'") and code.rstrip().endswith("}"):
            return code.rstrip().rstrip("}"), "removed a stray `}` at the end of the code and ran it again"
        if FACTORIAL.search(code):  # `print(100! / 98!)`, `17! = 17 * 16 * ...` (recorded, resampled alike)
            return ("import math\n" + FACTORIAL.sub(r"math.factorial(\1)", code),
                    "wrote `N!` as `math.factorial(N)` and ran it again")
        return None

    def result_text(self, session: "Session", call: ToolCall, text: str) -> str:
        name = self.turn.renamed.get(call.id)
        if name is None:
            return text
        return f"(There is no tool named {name!r}: your code ran with the `python` tool.)\n{text}"


class TurnState:
    """What a turn has done so far: results by call, the last printed value, repeats."""

    def __init__(self) -> None:
        self.results: dict[str, ToolResultEvent] = {}
        self.codes: list[str] = []
        self.value: str | None = None
        self.repeats = 0
        self.renamed: dict[str, str] = {}  # call id -> the tool name the model used
        self.failed = False  # the last cell failed (an error or a timeout)
        self.fix = False  # the next request asks to fix it


def tool_steps(strategy: SmallToolModelStrategy, session: "Session") -> Iterator[Event]:
    """The plain loop's steps with the rules above."""
    schemas = session.tool_schemas()
    turn = strategy.turn
    temperature, resampled, fixes = session.temperature, 0, 0
    for step in range(1, session.max_steps + 1):
        msg = yield from request(session, schemas, temperature)
        temperature = session.temperature
        if not msg.tool_calls and turn.failed and turn.value is None and fixes < strategy.fix_requests:
            fixes += 1
            turn.fix = True
            yield from set_aside(session, "answered in prose right after a failed cell", "asked to fix the code")
            continue
        why = resample_reason(session, turn, msg) if resampled < strategy.resamples else None
        if why is not None:
            resampled += 1
            yield from set_aside(session, why, "asked again, sampled")
            temperature = session.temperature or SAMPLE_TEMPERATURE
            continue
        if not msg.tool_calls:
            session.end_turn("answered")
            yield AnswerEvent(text=(msg.content or "").strip(), steps=step)
            return
        for call in msg.tool_calls:
            key = call_key(call)
            if key in turn.results:
                turn.repeats += 1
                yield from already_ran(session, call, turn.results[key])
                continue
            ev = yield from run_call(session, call)
            turn.results[key] = ev
            turn.failed = ev.status in ("error", "timeout")
            if ev.code is not None:
                turn.codes.append(ev.code)
            value = value_of(ev)
            if turn.value is not None and value is not None and ALREADY_RAN in value:
                # `print('You already ran this exact call; ... HelloHelloHello')` (recorded): the note
                # copied into code is no new value.
                yield from answer_with_value(session, turn.value, step, "the model printed the loop's note")
                return
            if value is not None and value == turn.value:
                # Other code printing the same value again (`print(1267650600228229401496703205376)`
                # after `print(2**100)`, recorded): the model is confirming, not computing on.
                yield from answer_with_value(session, turn.value, step, "two cells printed the same value")
                return
            if value is not None:
                turn.value = value
        if turn.repeats > strategy.max_repeats:
            yield from end_repeating(session, turn, step)
            return
    note = f"stopped after {session.max_steps} steps without a final answer"
    session.end_turn("max_steps", note)
    text = f"{turn.value}\n\n[{note}]" if turn.value else f"[{note}]"
    yield AnswerEvent(text=text, steps=session.max_steps, outcome="max_steps")


def resample_reason(session: "Session", turn: TurnState, msg: Message) -> str | None:
    """Why `msg` is the greedy path again, to be asked afresh and sampled (None: it is not). An
    explicit temperature of 0 asks for determinism: no sampled second try."""
    if session.temperature == 0:
        return None
    if not msg.tool_calls:
        # An empty reply before any call (the 1.5B's first token an end of turn on Titanic's second
        # prompt, recorded). After a cell that printed nothing (`x = 5`), it is the model being done.
        return "gave an empty reply" if not (msg.content or "").strip() and not turn.results else None
    if turn.value is None and all(call_key(c) in turn.results for c in msg.tool_calls):
        return "repeated a call that printed no value"
    return None


def set_aside(session: "Session", why: str, then: str) -> Iterator[Event]:
    """The reply just appended becomes a branch not taken (set aside, as a template-less model's
    attempts, but not marked as an alternative: the tree lists it): the next request starts again
    from before it."""
    node = session.tree.nodes[session.tree.leaf]
    node.outcome = TurnOutcome(status="set_aside", note=why)
    session.tree.switch(node.parent)
    yield NoticeEvent(text=f"the model {why}: {then}")


def example_turns(examples: list[tuple[str, ...]]) -> list[Message]:
    """Worked examples as the exchanges a tool-trained model knows: the question, a python call,
    its output, and the output as the answer. Examples whose output is unknown are left out."""
    turns: list[Message] = []
    for n, (question, code, *given) in enumerate(examples, 1):
        output = given[0] if given else OUTPUTS.get(code)
        if output is None:
            continue
        call = ToolCall(id=f"example_{n}", name="python", arguments=json.dumps({"code": code}))
        turns += [Message(role="user", content=question), Message(role="assistant", tool_calls=[call]),
                  tool_result(call.id, output, name="python"), Message(role="assistant", content=output)]
    return turns


def already_ran(session: "Session", call: ToolCall, earlier: ToolResultEvent) -> Iterator[Event]:
    """A call the turn already ran: not run again; the model reads its earlier output."""
    text = (f"{ALREADY_RAN}; it was not run again. Its output was:\n{earlier.output}\n"
            "Answer the user's question with this output now, or call the tool with different code.")
    yield ToolCallEvent(id=call.id, name=call.name, arguments=call.arguments, code=earlier.code)
    session.append(tool_result(call.id, text, name=call.name))
    yield ToolResultEvent(id=call.id, name=call.name, status="repeat", output=text, code=earlier.code)


def end_repeating(session: "Session", turn: TurnState, step: int) -> Iterator[Event]:
    """The model keeps calling what it already ran: the value its code printed is the answer."""
    if turn.value is None:
        note = "stopped: the model kept repeating a call it had already run"
        session.end_turn("stopped", note)
        yield AnswerEvent(text=f"[{note}]", steps=step, outcome="stopped")
        return
    yield from answer_with_value(session, turn.value, step, "the model kept repeating a call it had already run")


def answer_with_value(session: "Session", value: str, step: int, why: str) -> Iterator[Event]:
    yield NoticeEvent(text=f"{why}: the value its code printed is the answer")
    session.append(Message(role="assistant", content=value))
    session.end_turn("answered")
    yield AnswerEvent(text=value, steps=step)


def call_key(call: ToolCall) -> str:
    """Calls are the same when their tool and arguments are (code compared without outer blanks)."""
    try:
        args: Any = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return f"{call.name}\0{call.arguments.strip()}"
    if isinstance(args, dict):
        args = {k: v.strip() if isinstance(v, str) else v for k, v in args.items()}
    return f"{call.name}\0{json.dumps(args, sort_keys=True)}"


def python_call_from(call: ToolCall, tools: dict[str, Any]) -> ToolCall | None:
    """A call of a tool that does not exist whose arguments hold code, as a call of `python` (when
    python is offered and no other tool takes code); else None."""
    if call.name in tools or "python" not in tools or any(takes_code(t) for n, t in tools.items() if n != "python"):
        return None
    try:
        args = call.parsed_arguments()
    except ValueError:
        return None
    code = next((args[k] for k in CODE_KEYS if isinstance(args.get(k), str) and args[k].strip()), None)
    if code is None:
        return None
    return ToolCall(id=call.id, name="python", arguments=json.dumps({"code": code}))


def mend_chained_inplace(call: ToolCall) -> tuple[ToolCall, int]:
    """A python call with `df[col].fillna(v, inplace=True)` lines, as `df[col] = df[col].fillna(v)`,
    and how many lines changed."""
    if call.name != "python":
        return call, 0
    try:
        args = call.parsed_arguments()
    except ValueError:
        return call, 0
    code = args.get("code")
    if not isinstance(code, str) or "inplace" not in code:
        return call, 0
    mended, n = CHAINED_INPLACE.subn(
        lambda m: f"{m['indent']}{m['target']} = {m['target']}.{m['method']}({m['args'] or ''}){m['rest']}", code)
    if not n:
        return call, 0
    return call.model_copy(update={"arguments": json.dumps({**args, "code": mended})}), n


def takes_code(tool: Any) -> bool:
    """A tool with a parameter named like code (then an unknown call's code could be meant for it)."""
    params = tool.schema.get("function", tool.schema).get("parameters", {}).get("properties", {})
    return any(k in params for k in CODE_KEYS)


def mentions(text: str, value: str) -> bool:
    """The answer text holds the value: as written, or each number in it (18.0 counts as 18;
    separators ignored)."""
    flat, want = text.replace(",", "").replace("_", ""), value.replace(",", "").replace("_", "")
    if want.strip() and want.strip().lower() in flat.lower():
        return True
    numbers = NUMBER.findall(want)
    if not numbers:
        return False
    have = {canonical(n) for n in NUMBER.findall(flat)}
    return all(canonical(n) in have for n in numbers)


def canonical(number: str) -> str:
    if "." in number and "e" not in number.lower():
        number = number.rstrip("0").rstrip(".")
    return number


def non_answer(text: str, codes: list[str]) -> bool:
    """Text that answers nothing: empty, thanks, code or a call written out, or the code again."""
    if not text or THANKS.search(text) or "```" in text or "<tool_call>" in text or ALREADY_RAN in text:
        return True
    stripped = text.strip()
    if stripped[:1] in "{[" and stripped[-1:] in "}]":  # JSON: a call or a restatement, not prose
        return True
    code_lines = {line.strip() for code in codes for line in code.splitlines() if line.strip()}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return all(line in code_lines for line in lines)  # the code (or part of it) written out again
