"""The checks of a task file, evaluated at the end of a task: against the final answer, the
workspace, the kernel or the usage.

Two of them must not trust what they look at: `answer_matches` runs a pattern from the task file on
text from the model (a catastrophic pattern would hang the runner: it runs in a child process with
a time limit), and `file_exists` looks into a workspace whose names the sandboxed code chose (a link
there must neither make the check pass nor tell which host paths exist).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from sandbox import entry_kind

from agent.frontends.tasks import Check

REGEX_SECONDS = 2.0  # what one answer_matches check may take

# Runs in `python -I -S` (no site, no user paths): the same `re` as here, started in about 10 ms.
_MATCHER = ("import json, re, sys\n"
            "pattern, text, flags = json.load(sys.stdin)\n"
            "sys.stdout.write('1' if re.search(pattern, text, flags) else '0')\n")


class CheckResult(BaseModel):
    check: str
    passed: bool
    detail: str = ""


class RegexTimeout(RuntimeError):
    """A pattern ran longer than its time limit (catastrophic backtracking, most likely)."""


def regex_search(pattern: str, text: str, flags: int = 0, seconds: float = REGEX_SECONDS) -> bool:
    """`re.search(pattern, text, flags) is not None`, in a child process killed after `seconds`.
    Python's `re` holds the GIL and cannot be interrupted, so a thread could not be abandoned."""
    try:
        out = subprocess.run([sys.executable, "-I", "-S", "-c", _MATCHER], input=json.dumps([pattern, text, flags]),
                             capture_output=True, text=True, encoding="utf-8", timeout=seconds)
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        raise RegexTimeout(f"the pattern took longer than {seconds:g} s") from None
    if out.returncode != 0 or out.stdout not in ("0", "1"):
        raise RuntimeError(f"the pattern could not be run: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return out.stdout == "1"


_NUMBER = re.compile(r"[-+]?(?:\d[\d,_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def numbers_in(text: str) -> list[float]:
    out = []
    for m in _NUMBER.findall(text):
        try:
            out.append(float(m.replace(",", "").replace("_", "")))
        except ValueError:
            pass
    return out


def kernel_check(chat, expr: str) -> CheckResult:
    names = sorted({n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)})
    probe = (f"(bool({expr}), {{__n: repr(__v)[:60] for __n, __v in globals().items() if __n in {names!r}}})")
    res = chat.kernel().execute(probe, timeout=60)
    label = f"kernel: {expr}"
    if res.status != "ok":
        why = f"{res.error_name}: {res.error_value}" if res.error_name else (res.message or res.status)
        return CheckResult(check=label, passed=False, detail=why)
    try:
        ok, values = ast.literal_eval(res.result or "")
    except (ValueError, SyntaxError):
        return CheckResult(check=label, passed=False, detail=f"unexpected result {res.result!r}")
    return CheckResult(check=label, passed=bool(ok), detail=", ".join(f"{k} = {v}" for k, v in values.items()))


def run_check(check: Check, chat, answer: str, workspace: Path) -> CheckResult:
    """Evaluate one check against the final answer, the workspace, the kernel or the usage."""
    kind, value = check.kind, getattr(check, check.kind)
    label = check.describe()
    flags = re.IGNORECASE if check.ignore_case else 0
    if kind == "answer_contains":
        ok = value.lower() in answer.lower() if check.ignore_case else value in answer
        return CheckResult(check=label, passed=ok, detail="" if ok else f"answer: {answer[:200]!r}")
    if kind == "answer_matches":
        try:
            ok = regex_search(value, answer, flags)
        except RuntimeError as e:
            return CheckResult(check=label, passed=False, detail=str(e))
        return CheckResult(check=label, passed=ok, detail="" if ok else f"answer: {answer[:200]!r}")
    if kind == "answer_number":
        nums = numbers_in(answer)
        close = [x for x in nums if abs(x - value) <= check.tolerance]
        return CheckResult(check=label, passed=bool(close),
                           detail=f"found {close[0]:g}" if close else f"numbers in the answer: {nums[:10]}")
    if kind == "file_exists":
        ok = entry_kind(workspace, value) is not None
        return CheckResult(check=label, passed=ok,
                           detail="" if ok else "not in the workspace (links, FIFOs and devices do not count)")
    if kind == "kernel":
        return kernel_check(chat, value)
    cost = chat.usage.cost_usd
    return CheckResult(check=label, passed=cost <= value, detail=f"cost ${cost:.4f}")


__all__ = ["CheckResult", "RegexTimeout", "regex_search", "run_check", "REGEX_SECONDS"]
