"""The loop: send, run the tool calls, append the results, repeat until a final answer,
`max_steps`, or the budget. Yields one event stream for every front end.

How a turn goes is a `TurnStrategy`'s: the plain one here is the tool loop; another (the
small-model mode) plugs in through the same few hooks and reuses `request` and `run_call`.

The loop works on a `LoopSession`: what it uses of `agent.core.session.Session`, named here so
that this module needs nothing from the session module, which imports it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, runtime_checkable

from sandbox import ExecResult, Kernel
from tools.schema import Outcome, Runnable, ToolContext
from tools.text import clip

from agent.core.backend import Backend
from agent.core.budget import BudgetExceeded, BudgetTracker, fit_context
from agent.core.events import (AnswerEvent, Event, NoticeEvent, TextEvent, ToolCallEvent, ToolOutputEvent,
                               ToolResultEvent, UsageEvent)
from agent.core.messages import Done, Message, Reply, TextDelta, ToolCall, Usage, tool_result
from agent.core.tree import CellRecord, Node, OutcomeStatus, TurnOutcome, figures_of, returned

COMPLETION_ALLOWANCE = 1024  # tokens asked for per step by default, clipped by the budget
MIN_CELL_SECONDS = 0.5  # a cell the time budget leaves less for still starts, and stops at once


@runtime_checkable
class LoopSession(Protocol):
    """What the loop (and a notebook start) use of a session; `agent.core.session.Session` is the
    one there is. A strategy that needs more of it (agent.smallmodel) takes the Session itself."""

    backend: Backend
    tracker: BudgetTracker  # the budgets, and the time and tokens spent
    strategy: TurnStrategy
    max_steps: int
    max_tokens_per_step: int
    temperature: float | None
    constrain_calls: bool | None  # calls under a grammar, where the backend can (None: its default)
    timeout: float  # a cell's, in seconds
    use_python: bool
    approve: Callable[[str], bool | str | None] | None  # may a cell run (see Session)

    @property
    def usage(self) -> Usage: ...

    def messages(self) -> list[Message]: ...

    def all_tools(self) -> dict[str, Runnable]: ...

    def tool_schemas(self) -> list[dict]: ...

    def kernel(self, follow_branch: bool = True) -> Kernel: ...

    def append(self, message: Message, **meta: Any) -> Node: ...

    def end_turn(self, status: OutcomeStatus, note: str = "") -> TurnOutcome: ...

    def record_cell(self, node_id: str) -> None: ...

    def forget_kernel_cells(self) -> None: ...


class TurnStrategy:
    """How a turn runs. This one is the plain tool loop; subclasses override the hooks they need."""

    def run_turn(self, session: LoopSession) -> Iterator[Event]:
        """Run the loop from the active leaf (which ends with a user or tool message)."""
        return steps(session)

    def prepare_request(self, session: LoopSession, messages: list[Message]) -> tuple[list[Message], dict[str, Any]]:
        """The messages to send for the conversation `messages`, and extra arguments for the
        backend's `stream` (the decoding guides its capabilities declare)."""
        return messages, {}

    def revise_reply(self, session: LoopSession, msg: Message) -> tuple[Message, list[str]]:
        """A model's reply before it joins the conversation: the message to keep instead, and
        notices for the user saying what changed (the plain loop keeps every reply as it came)."""
        return msg, []

    def revise_cell(self, code: str, result: ExecResult) -> tuple[str, str] | None:
        """After a cell ran: the code to run instead, and a notice saying so; None: keep the result."""
        return None

    def result_text(self, session: LoopSession, call: ToolCall, text: str) -> str:
        """The text the model reads for a tool's result (the plain loop: the tool's own)."""
        return text

    def result_event(self, session: LoopSession, event: ToolResultEvent, result: ExecResult | None) -> ToolResultEvent:
        """The event a tool's result is reported as: `event` itself, or a subclass of it with what
        the strategy reads from the cell's `result` (None: no cell ran)."""
        return event


PLAIN = TurnStrategy()


def steps(session: LoopSession) -> Iterator[Event]:
    """Model steps: each reply's tool calls run and their results go back, until a final answer."""
    schemas = session.tool_schemas()
    last_text = ""
    for step in range(1, session.max_steps + 1):
        msg = yield from request(session, schemas, session.temperature)
        last_text = msg.content or last_text
        if not msg.tool_calls:
            session.end_turn("answered")
            yield AnswerEvent(text=(msg.content or "").strip(), steps=step)
            return
        for call in msg.tool_calls:
            yield from run_call(session, call)
    note = f"stopped after {session.max_steps} steps without a final answer"
    session.end_turn("max_steps", note)
    text = (last_text.strip() + "\n\n" if last_text.strip() else "") + f"[{note}]"
    yield AnswerEvent(text=text, steps=session.max_steps, outcome="max_steps")


def request(session: LoopSession, schemas: list[dict], temperature: float | None) -> Iterator[Event]:
    """One model request within the budget, streamed as events; its reply is appended to the
    conversation and returned."""
    reply = yield from _send(session, schemas, temperature)
    msg, notes = session.strategy.revise_reply(session, reply.message)
    for note in notes:
        yield NoticeEvent(text=note)
    session.append(msg, usage=reply.usage)
    yield UsageEvent(usage=reply.usage, total=session.usage)
    return msg


def _send(session: LoopSession, schemas: list[dict], temperature: float | None) -> Iterator[Event]:
    backend = session.backend
    messages, extra = session.strategy.prepare_request(session, session.messages())
    if session.constrain_calls is not None and backend.capabilities.constrains_calls:
        extra = {**extra, "constrain_calls": session.constrain_calls}
    count = lambda ms: backend.count_prompt_tokens(ms, schemas)  # noqa: E731
    messages = fit_context(messages, count, backend.context_window,
                           reserve=min(COMPLETION_ALLOWANCE, backend.context_window // 4))
    estimate = count(messages)
    try:
        max_tokens = session.tracker.check(estimate, session.max_tokens_per_step)
    except BudgetExceeded as e:
        yield NoticeEvent(text=f"budget exceeded: {e}")
        raise
    reply: Reply | None = None
    received: list[str] = []
    with session.tracker.busy():
        try:
            for ev in backend.stream(messages, schemas or None, max_tokens=max_tokens, temperature=temperature,
                                     **extra):
                if isinstance(ev, TextDelta):
                    received.append(ev.text)
                    yield TextEvent(text=ev.text)
                elif isinstance(ev, Done):
                    reply = ev.reply
        except BaseException:  # stopped (Ctrl-C, the consumer let go) or failed mid-stream
            if reply is None and received:
                session.tracker.record(stopped_usage(session, estimate, "".join(received)))
            raise
    if reply is None:
        raise RuntimeError("the backend's stream ended without a reply")
    if reply.usage.estimated_prompt_tokens is None:
        reply.usage.estimated_prompt_tokens = estimate
    if not reply.usage.prompt_tokens:
        reply.usage.prompt_tokens = estimate  # servers that report no usage: our count stands in
    session.tracker.record(reply.usage)
    if reply.usage.completion_tokens > max_tokens:  # billed as reported; the next check stops if need be
        yield NoticeEvent(text=f"the server reported {reply.usage.completion_tokens:,} completion tokens for a "
                               f"request capped at {max_tokens:,}: counted as reported")
    return reply


def stopped_usage(session: LoopSession, prompt_tokens: int, text: str) -> Usage:
    """What an answer stopped mid-stream cost: the provider bills the prompt and the tokens it
    generated, and sent no usage, so the prompt estimate and a local count of the text stand in."""
    completion = max(session.backend.count_prompt_tokens([Message(role="assistant", content=text)])
                     - session.backend.count_prompt_tokens([Message(role="assistant", content="")]), 1)
    price = session.tracker.price
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, estimated_prompt_tokens=prompt_tokens,
                 cost_usd=price.cost(prompt_tokens, completion) if price is not None else 0.0)


def run_call(session: LoopSession, call: ToolCall, follow_branch: bool = True) -> Iterator[Event]:
    """Run one tool call, streaming its output; its result is appended and returned as an event.
    `follow_branch=False`: a cell runs in the kernel as it is (see Session.kernel)."""
    tools = session.all_tools()
    tool = tools.get(call.name)
    yield ToolCallEvent(id=call.id, name=call.name, arguments=call.arguments,
                        code=tool.code(call.arguments) if tool else None)
    if tool is None:
        outcome = Outcome(f"Error: there is no tool named {call.name!r}. Available tools: {', '.join(sorted(tools))}.",
                          "invalid")
    else:
        context = ToolContext(kernel=lambda: session.kernel(follow_branch=follow_branch),
                              timeout=lambda: cell_timeout(session), approve=session.approve,
                              revise=session.strategy.revise_cell)
        with session.tracker.busy():  # the cell's time (and a replay before it) is the time budget's
            run = tool.run(call.arguments, context)
            while True:
                try:
                    stream, text = next(run)
                except StopIteration as stop:
                    outcome = stop.value
                    break
                yield ToolOutputEvent(id=call.id, stream=stream, text=text)
    return (yield from _record(session, call, outcome))


def _record(session: LoopSession, call: ToolCall, outcome: Outcome) -> Iterator[Event]:
    """The outcome into the conversation (a cell also into the tree's record of the kernel)."""
    # A tool's return value (or error) of any size becomes one bounded message.
    text = session.strategy.result_text(session, call, clip(outcome.text))
    res = outcome.cell
    cell = None
    if outcome.code is not None:  # a cell: run (res), or refused by the user
        ran = dict(images=res.images, figures=figures_of(res), duration=res.duration,
                   execution_count=res.execution_count, **returned(res)) if res else {}
        status = outcome.status
        if res is not None and res.status == "error" and res.error_name == "KeyboardInterrupt":
            status = "interrupted"  # the kernel reports an interrupt as an error: replay must tell them apart
        cell = CellRecord(code=outcome.code, status=status, output=text,
                          executed=res is not None and res.status != "died", **ran)
    if res is not None and res.state_lost:
        session.forget_kernel_cells()  # the kernel restarted: nothing before this cell is in it
    # A tool's images that no cell record keeps (an MCP server's) travel on its message.
    images = figures_of(res) if res is not None and cell is None else []
    node = session.append(tool_result(call.id, text, name=call.name, images=images), cell=cell)
    if cell is not None and cell.executed:
        session.record_cell(node.id)
    ev = ToolResultEvent(id=call.id, name=call.name, status=outcome.status, output=text, code=outcome.code,
                         images=res.images if res else [], duration=res.duration if res else 0.0,
                         execution_count=res.execution_count if res else None)
    ev = session.strategy.result_event(session, ev, res)
    yield ev
    return ev


def cell_timeout(session: LoopSession) -> tuple[float, str | None]:
    """A cell's timeout, and why the time budget shortened it: a cell gets at most what is left."""
    left = session.tracker.seconds_left()
    if left is None or left >= session.timeout:
        return session.timeout, None
    return max(left, MIN_CELL_SECONDS), (f"all the time budget (max_seconds={session.tracker.budget.max_seconds:g}) "
                                         "had left")


def user_message(text: str) -> Message:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the prompt must be a non-empty string")
    return Message(role="user", content=text)
