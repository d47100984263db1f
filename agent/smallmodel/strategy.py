"""The small-model mode as one turn strategy: models without tool training (like the embedded
SmolLM2-135M) write ```python blocks and garble what they copy, so the answer is the short value
their code printed, and the loop helps them: worked examples before the question, numbers in code
grounded in the conversation, a missing standard import added, and a failed attempt regenerated
afresh instead of repaired."""

from __future__ import annotations

import re
import sys
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sandbox import ExecResult

from agent.core.events import AnswerEvent, Event, NoticeEvent, ToolResultEvent
from agent.core.loop import TurnStrategy, request, run_call, steps
from agent.core.messages import Message
from agent.core.tree import TurnOutcome
from agent.smallmodel import shots

if TYPE_CHECKING:
    from agent.core.session import Session

# Short, concrete and one instruction: small models follow examples far better than rules (the
# examples come from the bank, per question: see shots.py).
SMALL_MODEL_SYSTEM = """\
You are a helpful assistant. Answer every question with one Python code block that computes \
the answer and prints it. Use the exact numbers and words from the question.
"""

EXAMPLE_BONUS = 2.0  # best of 0 to 5 on bench/small_model_accuracy.py: see docs/performance.md
SAMPLE_TEMPERATURE = 0.7  # for the attempts after the first (greedy) one
MAX_TOKENS_PER_STEP = 384  # a code block is short; a small model that runs on is rambling, and each token costs time

Examples = Callable[[str], list[tuple[str, str]]] | list[tuple[str, str]]

# `<reversed object at 0x..>`, `<generator object <genexpr> at 0x..>`, `<built-in function len>`,
# `<class 'int'>`: a printed object, not a value
OBJECT_REPR = re.compile(r"<(?:[\w.-]+ )+(?:<[\w.]+> )?(?:at 0x[0-9a-fA-F]+|'?[\w.]+'?)>")


class ValueResultEvent(ToolResultEvent):
    """A tool's result as the small-model strategies report it: with the short value its code
    printed (None: none), which they take as the answer (see `printed_value`)."""

    value: str | None = None


def value_of(ev: ToolResultEvent) -> str | None:
    """The value a result's code printed; None for one reported without (no cell ran, a repeat)."""
    return ev.value if isinstance(ev, ValueResultEvent) else None


class SmallModelStrategy(TurnStrategy):
    """The knobs are attributes; `on=False` gives the ones of a model with tool training (none of
    the help), for a strategy kept while another is in use."""

    def __init__(self, on: bool = True):
        # Worked examples sent before the question: a list of (question, answer) turns, or a
        # function of the question that picks them (the default: the closest from a bank).
        self.examples: Examples = shots.pick if on else []
        # Number literals in the code limited to the conversation's numbers and common constants,
        # where the backend can do it (local models whose digits are single tokens).
        self.ground_numbers = on
        # A logit bonus in the code for the tokens of the examples and the question (0: none).
        self.example_bonus = EXAMPLE_BONUS if on else 0.0
        # A failed attempt is regenerated, not repaired: up to `attempts` per prompt, until `agree`
        # of them print the same value (a vote measured no better than 1).
        self.attempts, self.agree = 5, 1

    def run_turn(self, session: "Session") -> Iterator[Event]:
        return attempts(self, session) if session.use_python else steps(session)

    def prepare_request(self, session: "Session", messages: list[Message]) -> tuple[list[Message], dict[str, Any]]:
        if not session.use_python:
            return messages, {}
        question = last_prompt(session)
        examples = self.examples(question) if callable(self.examples) else self.examples
        turns = [Message(role=r, content=t) for q, a in examples for r, t in (("user", q), ("assistant", a))]
        extra: dict[str, Any] = {}
        can = session.backend.capabilities
        if self.ground_numbers and can.grounds_numbers:
            given = [shots.numbers_in(m.content or "") for m in messages if m.role in ("user", "tool")]
            extra["numbers"] = set(shots.CONSTANTS).union(*given)
        if self.example_bonus and can.favours_tokens:
            # The example's tokens (and the question's) get a bonus in the code: copy its shape.
            extra["favour"] = "\n".join([a for _, a in examples] + [question])
            extra["bonus"] = self.example_bonus
        return messages[:1] + turns + messages[1:], extra

    def revise_cell(self, code: str, result: ExecResult) -> tuple[str, str] | None:
        # The commonest small-model slip: `math.factorial` without `import math`. Add the import
        # and say so, rather than spend a whole model step on it.
        module = missing_module(result)
        return (f"import {module}\n{code}", f"added `import {module}` and ran it again") if module else None

    def result_event(self, session: "Session", event: ToolResultEvent, result: ExecResult | None) -> ToolResultEvent:
        value = printed_value(result) if result is not None else None
        return ValueResultEvent(**event.model_dump(), value=value)


def attempts(strategy: SmallModelStrategy, session: "Session") -> Iterator[Event]:
    """A small model regenerates instead of repairing: shown its traceback, a 135M model writes the
    same code again or wanders, so each attempt starts afresh from the question, on a sibling
    branch (the model never sees the others). The first is greedy, the rest sampled; the answer is
    the value most attempts printed (the earliest on a tie), decided once `agree` agree.

    The tree keeps every attempt: its first reply is labelled "attempt N" and marked as the start
    of an alternative, and the end of each one not taken has the outcome "set_aside" (so the tree
    folds it under the turn in `branches()`)."""
    schemas = session.tool_schemas()
    start = session.tree.leaf
    earlier = earlier_answers(session)
    # An explicit temperature of 0 asks for determinism: a second greedy attempt would only repeat.
    n = 1 if session.temperature == 0 else min(strategy.attempts, session.max_steps)
    printed: list[tuple[str, str]] = []  # (value, the node holding it) per attempt that printed one
    ends: list[str] = []  # each attempt's last message
    for attempt in range(1, n + 1):
        if attempt > 1:
            session.tree.switch(start)
        temperature = session.temperature if session.temperature or attempt == 1 else SAMPLE_TEMPERATURE
        msg = yield from request(session, schemas, temperature)
        first = session.tree.nodes[session.tree.leaf]
        first.label, first.alternative = f"attempt {attempt}", True
        value = None
        for call in msg.tool_calls:
            # Every attempt's cells run on its branch: the kernel follows it before each cell, which
            # costs nothing when it is already there (attempt 1, or after attempts that ran no
            # code) and a restart and replay when an earlier attempt left its variables behind.
            value = value_of((yield from run_call(session, call)))
            if value is not None:
                value = without_stale(value, earlier)
                break
        ends.append(session.tree.leaf)
        if value is not None:
            printed.append((value, session.tree.leaf))
            if sum(v == value for v, _ in printed) >= strategy.agree:
                break
        why = "printed no value" if msg.tool_calls else "wrote no code"
        if value is not None:
            why = f"printed {value[:40]!r}, not yet confirmed"
        session.tree.nodes[session.tree.leaf].outcome = TurnOutcome(status="set_aside", note=f"attempt {attempt} {why}")
        if attempt < n:
            yield NoticeEvent(text=f"attempt {attempt} {why}: attempt {attempt + 1} of at most {n}, afresh")
    if not printed:
        note = f"stopped after {n} attempt{'s' * (n > 1)} without printing a value"
        session.end_turn("stopped", note)  # on the last attempt's end: the branch shown
        yield AnswerEvent(text=f"[{note}]", steps=n, outcome="stopped")
        return
    values = [v for v, _ in printed]
    value, node = max(printed, key=lambda p: (values.count(p[0]), -values.index(p[0])))
    if len(printed) > 1:
        yield NoticeEvent(text=f"answer printed by {values.count(value)} of {attempt} attempts")
    session.tree.nodes[node].outcome = None  # the attempt taken: its turn goes on to the answer
    session.tree.switch(node)  # the kernel catches up (restart and replay) before this branch's next cell
    # Small models garble what they copy: the value the code computed is the answer.
    session.append(Message(role="assistant", content=value))
    session.end_turn("answered")
    yield AnswerEvent(text=value, steps=attempt)


def earlier_answers(session: "Session") -> set[str]:
    """The answers of the earlier turns on the branch: a small model often copies an earlier cell
    into its new one, and the value that prints again is not this turn's answer."""
    path = session.tree.path()
    return {line.strip() for node in path[:-1] if node.message.role == "assistant" and not node.message.tool_calls
            for line in (node.message.content or "").splitlines() if line.strip()}


def without_stale(value: str, earlier: set[str]) -> str:
    """`value` without the lines an earlier turn answered, unless nothing else is left (the same
    number can be the right answer twice)."""
    fresh = [line for line in value.splitlines() if line.strip() not in earlier]
    return "\n".join(fresh).strip() if fresh and len(fresh) < len(value.splitlines()) else value


def printed_value(res: ExecResult) -> str | None:
    """The short value a cell printed (or its last expression showed), or None: not after an error,
    not an object's repr, not a long text. A cell that drew a figure (and printed nothing else)
    has the figure as its value: "Plot sin(x)" is answered by the plot."""
    out = (res.stdout or "").strip() or (res.result or "").strip()
    if res.status == "ok" and res.images and (not out or OBJECT_REPR.search(out)):
        return "[figure: " + ", ".join(PurePath(p).name for p in res.images) + "]"
    ok = res.status == "ok" and out and not res.stdout_file and len(out) <= 300 and out.count("\n") < 3
    return out if ok and not OBJECT_REPR.search(out) else None


def missing_module(res: ExecResult) -> str | None:
    """`name 'math' is not defined` where math is a standard-library module."""
    if res.status != "error" or res.error_name != "NameError":
        return None
    m = re.match(r"name '(\w+)' is not defined", res.error_value or "")
    return m.group(1) if m and m.group(1) in sys.stdlib_module_names else None


def last_prompt(session: "Session") -> str:
    """The user's last prompt on the active branch."""
    users = session.tree.user_nodes()
    return (users[-1].message.content or "") if users else ""
