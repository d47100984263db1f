"""The built-in `python` tool: runs code in the sandbox kernel, answers in text the model can use."""

from __future__ import annotations

import asyncio
import queue
import threading
import warnings
from typing import TYPE_CHECKING, Generator

from sandbox import ExecResult

from tools.schema import Outcome, Output, ToolContext, parse_arguments
from tools.text import MAX_MESSAGE_CHARS, clip

if TYPE_CHECKING:  # only named in annotations: a reader of tool results needs no kernel client
    from sandbox import Kernel

DESCRIPTION = ("Run Python code in a persistent Jupyter kernel and get its output. State persists between "
               "calls: variables, imports and files are kept. The working directory is your workspace; "
               "print() what you need to see, and the value of the last expression is shown.")

SCHEMA = {"type": "function", "function": {
    "name": "python", "description": DESCRIPTION,
    "parameters": {"type": "object", "properties": {"code": {"type": "string", "description": "Python code to run"}},
                   "required": ["code"]}}}

MAX_TRACEBACK_LINES = 12


def trim_traceback(tb: str) -> str:
    """Keep the frames nearest the error: the model needs the failing line, not the IPython plumbing."""
    lines = [line for line in tb.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    if len(lines) <= MAX_TRACEBACK_LINES:
        return "\n".join(lines)
    return "\n".join(["[... earlier traceback lines omitted ...]", *lines[-MAX_TRACEBACK_LINES:]])


def render(res: ExecResult, max_chars: int = MAX_MESSAGE_CHARS) -> str:
    """An ExecResult as the tool message the model reads, at most `max_chars` characters long
    (the sandbox caps each field; their sum, with many displays, still needs a bound)."""
    parts: list[str] = []
    if res.stdout:
        parts.append(res.stdout.rstrip("\n"))
    if res.stderr:
        parts.append("[stderr]\n" + res.stderr.rstrip("\n"))
    if res.result is not None:
        parts.append(f"Out: {res.result}")
    for o in res.outputs:
        if o.path:
            parts.append(f"[image saved: {o.path}]")
        elif o.mime == "text/markdown" and o.text:
            parts.append(o.text)
    if res.status == "error":
        parts.append(trim_traceback(res.traceback or f"{res.error_name}: {res.error_value}"))
    parts += notes_of(res)
    if not parts:
        parts.append("[done, no output]" if res.ok else f"[{res.status}]")
    return clip("\n".join(parts), max_chars)


def notes_of(res: ExecResult) -> list[str]:
    """The lines the tool message ends with: where cut streams went, and what happened, in words."""
    notes = [f"[{label} was long and was cut; the full text is in {path}]"
             for label, path in (("stdout", res.stdout_file), ("stderr", res.stderr_file)) if path]
    return notes + ([f"[{res.message}]"] if res.message else [])


REJECTED = "The user did not allow this code to run. Ask them, or try a different approach."


class PythonTool:
    """The `python` tool: a call's code runs in the kernel the context lends, its output streams as
    it comes, and the result is rendered for the model. The user may refuse or edit the code first."""

    name = "python"
    schema = SCHEMA

    def code(self, arguments: str) -> str | None:
        try:
            return code_of(arguments)
        except ValueError:
            return None

    def run(self, arguments: str, context: ToolContext) -> Generator[Output, None, Outcome]:
        try:
            code = code_of(arguments)
        except ValueError as e:
            return Outcome(str(e), "invalid")
        if context.approve is not None:
            decision = context.approve(code)
            if decision is False or decision is None:
                return Outcome(REJECTED, "rejected", code=code)
            if isinstance(decision, str):
                code = decision
        if context.kernel is None:
            raise RuntimeError("the python tool needs a kernel in its context")
        kernel = context.kernel()
        timeout, short_because = context.timeout()
        res = yield from execute(kernel, code, timeout)
        if context.revise is not None and (revised := context.revise(code, res)):
            code, notice = revised
            yield "notice", notice
            timeout, short_because = context.timeout()
            res = kernel.execute(code, timeout=timeout)
        if res.status == "timeout" and short_because:
            why = f"The cell was given {timeout:.1f} s, {short_because}, and was stopped when it ran out."
            res = res.model_copy(update={"message": f"{res.message} {why}" if res.message else why})
            yield "notice", why
        return Outcome(render(res), res.status, code=code, cell=res)


def code_of(arguments: str) -> str:
    """The code of a call's arguments; ValueError worded for the model."""
    code = parse_arguments("python", arguments).get("code")
    if not isinstance(code, str):
        raise ValueError('Error: the python tool takes {"code": "<python source>"}: '
                         f"`code` must be a string, got {type(code).__name__}")
    return code


def execute(kernel: Kernel, code: str, timeout: float | None) -> Generator[Output, None, ExecResult]:
    """Run a cell, yielding its output as it comes; return its result."""
    # The kernel calls back on its own schedule; a thread plus a queue turns that into a stream.
    q: queue.Queue = queue.Queue()
    box: dict = {}

    def work() -> None:
        try:
            box["res"] = kernel.execute(code, timeout=timeout, on_output=lambda kind, data: q.put((kind, data)))
        except BaseException as e:  # noqa: BLE001 - re-raised below on the caller's thread
            box["err"] = e
        finally:
            close_thread_loop()
        q.put(None)

    threading.Thread(target=work, daemon=True, name="kernelchat-cell").start()
    while (item := q.get()) is not None:
        kind, data = item
        yield kind, data if isinstance(data, str) else (data.path or data.text or "")
    if "err" in box:
        raise box["err"]
    return box["res"]


def close_thread_loop() -> None:
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
