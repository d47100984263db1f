"""The loop: send, run the tool calls, append the results, repeat until a final answer,
`max_steps`, or the budget. Yields one event stream for every front end."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Iterator

from tools.python_tool import render
from tools.text import clip

from agent.core.budget import BudgetExceeded, fit_context
from agent.core.events import (AnswerEvent, Event, NoticeEvent, TextEvent, ToolCallEvent, ToolOutputEvent,
                     ToolResultEvent, UsageEvent)
from agent.core.messages import Done, Message, Reply, TextDelta, ToolCall, tool_result
from agent.smallmodel.shots import CONSTANTS, numbers_in
from agent.models.toolparse import parse_tool_calls
from agent.core.tree import CellRecord, figures_of

if TYPE_CHECKING:
    from agent.chat import Chat

COMPLETION_ALLOWANCE = 1024  # tokens asked for per step by default, clipped by the budget
SAMPLE_TEMPERATURE = 0.7  # for a small model's attempts after the first (greedy) one
MIN_CELL_SECONDS = 0.5  # a cell the time budget leaves less for still starts, and stops at once


def run_turn(chat: "Chat") -> Iterator[Event]:
    """Run the loop from the active leaf (which ends with a user or tool message)."""
    if chat.answer_from_output and chat.use_python:
        yield from _attempts(chat)
    else:
        yield from _steps(chat)


def _steps(chat: "Chat") -> Iterator[Event]:
    """Model steps: each reply's tool calls run and their results go back, until a final answer."""
    schemas = chat.tool_schemas()
    last_text = ""
    for step in range(1, chat.max_steps + 1):
        reply = yield from _request(chat, schemas, chat.temperature)
        msg = _fence_fallback(chat, reply.message)
        chat._append(msg, usage=reply.usage)
        yield UsageEvent(usage=reply.usage, total=chat.usage)
        last_text = msg.content or last_text
        if not msg.tool_calls:
            yield AnswerEvent(text=(msg.content or "").strip(), steps=step)
            return
        for call in msg.tool_calls:
            yield from _run_call(chat, call)
    text = (last_text.strip() + "\n\n" if last_text.strip() else "") + \
        f"[stopped after {chat.max_steps} steps without a final answer]"
    yield NoticeEvent(text=f"max_steps ({chat.max_steps}) reached")
    yield AnswerEvent(text=text, steps=chat.max_steps)


def _attempts(chat: "Chat") -> Iterator[Event]:
    """A small model regenerates instead of repairing: shown its traceback, a 135M model writes the
    same code again or wanders, so each attempt starts afresh from the question, on a sibling
    branch (the model never sees the others). The first is greedy, the rest sampled; the answer is
    the value most attempts printed (the earliest on a tie), decided once `chat.agree` agree."""
    schemas = chat.tool_schemas()
    start = chat.tree.leaf
    # An explicit temperature of 0 asks for determinism: a second greedy attempt would only repeat.
    n = 1 if chat.temperature == 0 else min(chat.attempts, chat.max_steps)
    printed: list[tuple[str, str]] = []  # (value, the node holding it) per attempt that printed one
    for attempt in range(1, n + 1):
        if attempt > 1:
            chat.tree.leaf = start
        temperature = chat.temperature if chat.temperature or attempt == 1 else SAMPLE_TEMPERATURE
        reply = yield from _request(chat, schemas, temperature)
        msg = _fence_fallback(chat, reply.message)
        chat._append(msg, usage=reply.usage)
        yield UsageEvent(usage=reply.usage, total=chat.usage)
        value = None
        for call in msg.tool_calls:
            result = yield from _run_call(chat, call, follow_branch=attempt == 1)
            if result is not None and result.value is not None:
                value = result.value
                break
        if value is not None:
            printed.append((value, chat.tree.leaf))
            votes = sum(v == value for v, _ in printed)
            if votes >= chat.agree:
                break
        if attempt < n:
            why = "printed no value" if msg.tool_calls else "wrote no code"
            if value is not None:
                why = f"printed {value[:40]!r}, not yet confirmed"
            yield NoticeEvent(text=f"attempt {attempt} {why}: attempt {attempt + 1} of at most {n}, afresh")
    if not printed:
        yield NoticeEvent(text=f"no attempt of {n} printed a value")
        yield AnswerEvent(text=f"[stopped after {n} attempt{'s' * (n > 1)} without printing a value]", steps=n)
        return
    values = [v for v, _ in printed]
    value, node = max(printed, key=lambda p: (values.count(p[0]), -values.index(p[0])))
    if len(printed) > 1:
        yield NoticeEvent(text=f"answer printed by {values.count(value)} of {attempt} attempts")
    chat.tree.leaf = node  # the kernel catches up (restart and replay) before this branch's next cell
    # Small models garble what they copy: the value the code computed is the answer.
    chat._append(Message(role="assistant", content=value))
    yield AnswerEvent(text=value, steps=attempt)


def _fence_fallback(chat: "Chat", msg: Message) -> Message:
    """A server without tool support (or a model without tool training) answers with ```python
    blocks: when the python tool is offered, those become calls of it."""
    if msg.tool_calls or not chat.use_python or "```" not in (msg.content or ""):
        return msg
    text, calls = parse_tool_calls(msg.content or "", ["python"])
    if not calls:
        return msg
    return msg.model_copy(update={"content": text or None, "tool_calls": calls})


# `<reversed object at 0x..>`, `<generator object <genexpr> at 0x..>`, `<built-in function len>`,
# `<class 'int'>`: a printed object, not a value
_OBJECT_REPR = re.compile(r"<(?:[\w.-]+ )+(?:<[\w.]+> )?(?:at 0x[0-9a-fA-F]+|'?[\w.]+'?)>")


def _printed_value(res) -> str | None:
    """The short value a cell printed (or its last expression showed), or None: not after an error,
    not an object's repr, not a long text."""
    out = (res.stdout or "").strip() or (res.result or "").strip()
    ok = res.status == "ok" and out and not res.stdout_file and len(out) <= 300 and out.count("\n") < 3
    return out if ok and not _OBJECT_REPR.search(out) else None


def _request(chat: "Chat", schemas: list[dict], temperature: float | None) -> Iterator[Event]:
    backend = chat.backend
    conversation = messages = chat.messages()
    extra: dict = {}
    if chat.answer_from_output and chat.use_python:
        question = _question(chat)
        examples = chat.examples(question) if callable(chat.examples) else chat.examples
        turns = [Message(role=r, content=t) for q, a in examples for r, t in (("user", q), ("assistant", a))]
        messages = conversation[:1] + turns + conversation[1:]
        if chat.ground_numbers and getattr(backend, "grounds_numbers", False):
            given = [numbers_in(m.content or "") for m in conversation if m.role in ("user", "tool")]
            extra["numbers"] = set(CONSTANTS).union(*given)
        if chat.example_bonus and getattr(backend, "favours_tokens", False):
            # The example's tokens (and the question's) get a bonus in the code: copy its shape.
            extra["favour"] = "\n".join([a for _, a in examples] + [question])
            extra["bonus"] = chat.example_bonus
    count = lambda ms: backend.count_prompt_tokens(ms, schemas)  # noqa: E731
    messages = fit_context(messages, count, backend.context_window,
                           reserve=min(COMPLETION_ALLOWANCE, backend.context_window // 4))
    estimate = count(messages)
    try:
        max_tokens = chat.tracker.check(estimate, chat.max_tokens_per_step)
    except BudgetExceeded as e:
        yield NoticeEvent(text=f"budget exceeded: {e}")
        raise
    reply: Reply | None = None
    for ev in backend.stream(messages, schemas or None, max_tokens=max_tokens, temperature=temperature,
                             **extra):
        if isinstance(ev, TextDelta):
            yield TextEvent(text=ev.text)
        elif isinstance(ev, Done):
            reply = ev.reply
    if reply is None:
        raise RuntimeError("the backend's stream ended without a reply")
    if reply.usage.estimated_prompt_tokens is None:
        reply.usage.estimated_prompt_tokens = estimate
    if not reply.usage.prompt_tokens:
        reply.usage.prompt_tokens = estimate  # servers that report no usage: our count stands in
    chat.tracker.record(reply.usage)
    if reply.usage.completion_tokens > max_tokens:  # billed as reported; the next check stops if need be
        yield NoticeEvent(text=f"the server reported {reply.usage.completion_tokens:,} completion tokens for a "
                               f"request capped at {max_tokens:,}: counted as reported")
    return reply


def _run_call(chat: "Chat", call: ToolCall, follow_branch: bool = True) -> Iterator[Event]:
    tool = chat.tools.get(call.name)
    if call.name == "python":
        try:
            args = call.parsed_arguments()
            code = args.get("code")
            if not isinstance(code, str):
                raise ValueError('Error: the python tool takes {"code": "<python source>"}: '
                                 f"`code` must be a string, got {type(code).__name__}")
        except ValueError as e:
            return (yield from _answer_call(chat, call, str(e), "invalid"))
        return (yield from _run_python(chat, call, code, follow_branch))
    if tool is None:
        names = ", ".join(sorted(["python", *chat.tools])) if chat.use_python else ", ".join(sorted(chat.tools))
        return (yield from _answer_call(chat, call, f"Error: there is no tool named {call.name!r}. "
                                                   f"Available tools: {names}.", "invalid"))
    yield ToolCallEvent(id=call.id, name=call.name, arguments=call.arguments)
    try:
        value = tool(call.arguments)
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        status = "ok"
    except ValueError as e:  # validation: worded for the model
        text, status = str(e), "invalid"
    except Exception as e:  # noqa: BLE001 - the tool's failure goes back to the model
        text, status = f"Error: {call.name} raised {type(e).__name__}: {e}", "error"
    return (yield from _answer_call(chat, call, text, status, announce=False))


def _answer_call(chat: "Chat", call: ToolCall, text: str, status: str, announce: bool = True) -> Iterator[Event]:
    if announce:
        yield ToolCallEvent(id=call.id, name=call.name, arguments=call.arguments)
    text = clip(text)  # a tool's return value (or error) of any size becomes one bounded message
    chat._append(tool_result(call.id, text, name=call.name))
    ev = ToolResultEvent(id=call.id, name=call.name, status=status, output=text)
    yield ev
    return ev


def _run_python(chat: "Chat", call: ToolCall, code: str, follow_branch: bool = True) -> Iterator[Event]:
    yield ToolCallEvent(id=call.id, name="python", code=code, arguments=call.arguments)
    if chat.approve is not None:
        decision = chat.approve(code)
        if decision is False or decision is None:
            text = "The user did not allow this code to run. Ask them, or try a different approach."
            chat._append(tool_result(call.id, text, name="python"),
                         cell=CellRecord(code=code, status="rejected", output=text, executed=False))
            ev = ToolResultEvent(id=call.id, name="python", status="rejected", output=text, code=code)
            yield ev
            return ev
        if isinstance(decision, str):
            code = decision
    # A small model's later attempts run in the kernel as the first left it: restarting it for each
    # would cost more than the attempt. chat._kernel_cells records them, so the branch's next cell
    # brings the kernel to the branch first.
    kernel = chat.kernel(follow_branch=follow_branch)
    timeout, cut_by_budget = _cell_timeout(chat)
    # The kernel calls back on its own schedule; a thread plus a queue turns that into events.
    q: queue.Queue = queue.Queue()
    box: dict = {}

    def work() -> None:
        try:
            box["res"] = kernel.execute(code, timeout=timeout,
                                        on_output=lambda kind, data: q.put((kind, data)))
        except BaseException as e:  # noqa: BLE001 - re-raised below on the caller's thread
            box["err"] = e
        finally:
            _close_thread_loop()
        q.put(None)

    threading.Thread(target=work, daemon=True, name="kernelchat-cell").start()
    while (item := q.get()) is not None:
        kind, data = item
        text = data if isinstance(data, str) else (data.path or data.text or "")
        yield ToolOutputEvent(id=call.id, stream=kind, text=text)
    if "err" in box:
        raise box["err"]
    res = box["res"]
    if chat.answer_from_output and (module := _missing_module(res)):
        # The commonest small-model slip: `math.factorial` without `import math`. Add the import
        # and say so, rather than spend a whole model step on it.
        code = f"import {module}\n{code}"
        yield ToolOutputEvent(id=call.id, stream="notice", text=f"added `import {module}` and ran it again")
        timeout, cut_by_budget = _cell_timeout(chat)
        res = kernel.execute(code, timeout=timeout)
    if res.status == "timeout" and cut_by_budget:
        why = (f"The cell was given {timeout:.1f} s, all the time budget (max_seconds="
               f"{chat.tracker.budget.max_seconds:g}) had left, and was stopped when it ran out.")
        res = res.model_copy(update={"message": f"{res.message} {why}" if res.message else why})
        yield ToolOutputEvent(id=call.id, stream="notice", text=why)
    if res.state_lost:
        chat._kernel_cells = []  # the kernel restarted: nothing before this cell is in it
    text = render(res)
    value = _printed_value(res) if chat.answer_from_output else None
    node = chat._append(tool_result(call.id, text, name="python"),
                        cell=CellRecord(code=code, status=res.status, output=text, images=res.images,
                                        figures=figures_of(res), duration=res.duration,
                                        executed=res.status != "died"))
    if res.status != "died":
        chat._kernel_cells.append(node.id)
    ev = ToolResultEvent(id=call.id, name="python", status=res.status, output=text, code=code,
                         images=res.images, duration=res.duration, value=value)
    yield ev
    return ev


def _cell_timeout(chat: "Chat") -> tuple[float, bool]:
    """The cell's timeout, and whether the time budget shortened it: a cell gets at most what is left."""
    left = chat.tracker.seconds_left()
    if left is None or left >= chat.timeout:
        return chat.timeout, False
    return max(left, MIN_CELL_SECONDS), True


def _close_thread_loop() -> None:
    """jupyter_client's blocking calls leave an asyncio loop in each thread that makes them; one left
    to the garbage collector at interpreter exit prints `Invalid file descriptor: -1`."""
    try:
        with warnings.catch_warnings():  # the policy API is deprecated from Python 3.14 on
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:  # this thread has none
        return
    if not loop.is_running():
        loop.close()
    asyncio.set_event_loop(None)


def _question(chat: "Chat") -> str:
    """The user's last prompt on the active branch."""
    users = chat.tree.user_nodes()
    return (users[-1].message.content or "") if users else ""


def _missing_module(res) -> str | None:
    """`name 'math' is not defined` where math is a standard-library module."""
    if res.status != "error" or res.error_name != "NameError":
        return None
    m = re.match(r"name '(\w+)' is not defined", res.error_value or "")
    return m.group(1) if m and m.group(1) in sys.stdlib_module_names else None


def user_message(text: str) -> Message:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the prompt must be a non-empty string")
    return Message(role="user", content=text)
