"""The built-in `python` tool: runs code in the sandbox kernel, answers in text the model can use."""

from __future__ import annotations

from sandbox import ExecResult, Kernel

from .text import MAX_MESSAGE_CHARS, clip

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
    for label, path in (("stdout", res.stdout_file), ("stderr", res.stderr_file)):
        if path:
            parts.append(f"[{label} was long and was cut; the full text is in {path}]")
    if res.message:
        parts.append(f"[{res.message}]")
    if not parts:
        parts.append("[done, no output]" if res.ok else f"[{res.status}]")
    return clip("\n".join(parts), max_chars)


def run_python(kernel: Kernel, code: str, timeout: float | None = None, on_output=None) -> tuple[str, ExecResult]:
    res = kernel.execute(code, timeout=timeout, on_output=on_output)
    return render(res), res
