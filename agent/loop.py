"""The loop: send, run the tool calls, append the results, repeat until a final answer,
`max_steps`, or the budget. Yields one event stream for every front end."""

from __future__ import annotations

import json
import queue
import re
import sys
import threading
from typing import TYPE_CHECKING, Iterator

from tools.python_tool import render

from .budget import BudgetExceeded, fit_context
from .events import (AnswerEvent, Event, NoticeEvent, TextEvent, ToolCallEvent, ToolOutputEvent,
                     ToolResultEvent, UsageEvent)
from .messages import LOOP_NAME, Done, Message, Reply, TextDelta, ToolCall, tool_result
from .prompts import CODE_NUDGE, FIX_NUDGE
from .shots import CONSTANTS, numbers_in
from .toolparse import parse_tool_calls
from .tree import CellRecord

if TYPE_CHECKING:
    from .chat import Chat

COMPLETION_ALLOWANCE = 1024  # tokens asked for per step by default, clipped by the budget
REPAIR_TEMPERATURE = 0.7


def run_turn(chat: "Chat") -> Iterator[Event]:
    """Run model steps from the active leaf (which ends with a user or tool message)."""
    schemas = chat.tool_schemas()
    last_text = ""
    nudged = failed = False
    for step in range(1, chat.max_steps + 1):
        # A greedy small model asked to repair its code writes the same code again: sample instead.
        temperature = chat.temperature
        if failed and chat.answer_from_output and temperature is None:
            temperature = REPAIR_TEMPERATURE
        reply = yield from _request(chat, schemas, temperature)
        msg = _fence_fallback(chat, reply.message)
        chat._append(msg, usage=reply.usage)
        yield UsageEvent(usage=reply.usage, total=chat.usage)
        last_text = msg.content or last_text
        if not msg.tool_calls:
            if chat.answer_from_output and chat.use_python and not nudged and step < chat.max_steps:
                # A small model that answered from its head: ask once for code instead.
                nudged = True
                chat._append(Message(role="user", content=CODE_NUDGE, name=LOOP_NAME))
                yield NoticeEvent(text="asked the model to compute the answer with code")
                continue
            yield AnswerEvent(text=(msg.content or "").strip(), steps=step)
            return
        for call in msg.tool_calls:
            result = yield from _run_call(chat, call)
            failed = result is not None and (result.status != "ok" or (
                chat.answer_from_output and result.name == "python" and result.value is None))
            if result is not None and result.value is not None:
                # Small models garble what they copy: once code has computed a short result,
                # that result is the answer (and the model is not asked to repeat it).
                chat._append(Message(role="assistant", content=result.value))
                yield AnswerEvent(text=result.value, steps=step)
                return
    text = (last_text.strip() + "\n\n" if last_text.strip() else "") + \
        f"[stopped after {chat.max_steps} steps without a final answer]"
    yield NoticeEvent(text=f"max_steps ({chat.max_steps}) reached")
    yield AnswerEvent(text=text, steps=chat.max_steps)


def _fence_fallback(chat: "Chat", msg: Message) -> Message:
    """A server without tool support (or a model without tool training) answers with ```python
    blocks: when the python tool is offered, those become calls of it."""
    if msg.tool_calls or not chat.use_python or "```" not in (msg.content or ""):
        return msg
    text, calls = parse_tool_calls(msg.content or "", ["python"])
    if not calls:
        return msg
    return msg.model_copy(update={"content": text or None, "tool_calls": calls})


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _printed_value(res, rendered: str) -> str | None:
    """A short printed value (not an error, not an object's repr, not a note of ours), or None."""
    out = rendered.strip()
    ok = (res.status == "ok" and out and not out.startswith("[") and len(out) <= 300 and out.count("\n") < 3
          and not _OBJECT_REPR.search(out))
    return out if ok else None


def _small_model_problem(res, rendered: str, question: str) -> str | None:
    """What is wrong with a small model's cell, in one line, or None."""
    if res.status in ("error", "timeout"):
        error = f"{res.error_name}: {res.error_value}" if res.error_name else (res.message or res.status)
        words = _unquoted_text(res, question)
        return f"Error: {error}" + (f". To use the text, write it in quotes: '{words}'" if words else "")
    if res.status == "ok" and (m := _OBJECT_REPR.search(rendered)):
        return f"The code printed {m.group(0)}, an object, not its value (use list(...) or ''.join(...))."
    if res.status == "ok" and rendered == "[done, no output]":
        return "The code printed nothing."
    return None


def _request(chat: "Chat", schemas: list[dict], temperature: float | None) -> Iterator[Event]:
    backend = chat.backend
    conversation = messages = chat.messages()
    extra: dict = {}
    if chat.answer_from_output and chat.use_python:
        examples = chat.examples(_question(chat)) if callable(chat.examples) else chat.examples
        turns = [Message(role=r, content=t) for q, a in examples for r, t in (("user", q), ("assistant", a))]
        messages = conversation[:1] + turns + conversation[1:]
        if chat.ground_numbers and getattr(backend, "grounds_numbers", False):
            given = [numbers_in(m.content or "") for m in conversation if m.role in ("user", "tool")]
            extra["numbers"] = set(CONSTANTS).union(*given)
    count = lambda ms: backend.count_prompt_tokens(ms, schemas)  # noqa: E731
    messages = fit_context(messages, count, backend.context_window,
                           reserve=min(COMPLETION_ALLOWANCE, backend.context_window // 4))
    estimate = count(messages)
    try:
        max_tokens = chat.tracker.check(estimate, chat.max_tokens_per_step, chat.price)
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
    return reply


def _run_call(chat: "Chat", call: ToolCall) -> Iterator[Event]:
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
        return (yield from _run_python(chat, call, code))
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
    chat._append(tool_result(call.id, text, name=call.name))
    ev = ToolResultEvent(id=call.id, name=call.name, status=status, output=text)
    yield ev
    return ev


def _run_python(chat: "Chat", call: ToolCall, code: str) -> Iterator[Event]:
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
    kernel = chat.kernel()
    # The kernel calls back on its own schedule; a thread plus a queue turns that into events.
    q: queue.Queue = queue.Queue()
    box: dict = {}

    def work() -> None:
        try:
            box["res"] = kernel.execute(code, timeout=chat.timeout,
                                        on_output=lambda kind, data: q.put((kind, data)))
        except BaseException as e:  # noqa: BLE001 - re-raised below on the caller's thread
            box["err"] = e
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
        res = kernel.execute(code, timeout=chat.timeout)
    if res.state_lost:
        chat._kernel_cells = []  # the kernel restarted: nothing before this cell is in it
    text = render(res)
    value = _printed_value(res, text) if chat.answer_from_output else None
    question = _question(chat) if chat.answer_from_output else ""
    if chat.answer_from_output and (problem := _small_model_problem(res, text, question)):
        # Small models lose the thread in a long traceback: the problem in one line, the question again.
        text = f"{problem}\n\n{FIX_NUDGE} The question was: {question}"
    node = chat._append(tool_result(call.id, text, name="python"),
                        cell=CellRecord(code=code, status=res.status, output=text, images=res.images,
                                        duration=res.duration, executed=res.status != "died"))
    if res.status != "died":
        chat._kernel_cells.append(node.id)
    ev = ToolResultEvent(id=call.id, name="python", status=res.status, output=text, code=code,
                         images=res.images, duration=res.duration, value=value)
    yield ev
    return ev


def _question(chat: "Chat") -> str:
    """The user's last prompt on the active branch."""
    users = chat.tree.user_nodes()
    return (users[-1].message.content or "") if users else ""


def _unquoted_text(res, question: str) -> str | None:
    """`name 'mississippi' is not defined` where the question says "the word mississippi" (or quotes
    it; `the_lazy_dog` for 'the lazy dog'): the model meant the text."""
    m = re.match(r"name '(\w+)' is not defined", res.error_value or "") if res.error_name == "NameError" else None
    if not m:
        return None
    words = re.escape(m.group(1).replace("_", " "))
    found = re.search(rf"""(?:\b(?:word|string|sentence|text|phrase|name)\s+|['"])({words})\b""", question,
                      re.IGNORECASE)
    return found.group(1) if found else None


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
