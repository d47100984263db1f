"""`kernelchat run TASK.toml ...`: run task files, check the outcomes, write a report folder.

Each task gets its own workspace (inside the report folder) and kernel. Per task the folder holds
transcript.json, transcript.md, report.html (plots inline) and usage.json; beside them summary.json
and summary.md. Exit code: 0 all passed, 1 some failed, 2 invalid input or setup error.
"""

from __future__ import annotations

import argparse
import ast
import html
import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import store
from .budget import BudgetExceeded
from .cassette import Cassette, CassetteError, RecordingBackend, ReplayBackend
from .events import AnswerEvent, Event, ToolCallEvent, UsageEvent
from .tasks import Check, Task, TaskError, load_tasks

Status = Literal["passed", "failed", "error"]
BackendFactory = Callable[[Task, Path], Any]


class CheckResult(BaseModel):
    check: str
    passed: bool
    detail: str = ""


class TaskResult(BaseModel):
    task: str
    file: str | None = None
    status: Status
    answers: list[str] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    model: str | None = None
    error: str | None = None
    report: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class SetupError(RuntimeError):
    """A task could not be set up (model, cassette, kernel): exit code 2."""


def has_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


# -- checks --------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d[\d,_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _numbers(text: str) -> list[float]:
    out = []
    for m in _NUMBER.findall(text):
        try:
            out.append(float(m.replace(",", "").replace("_", "")))
        except ValueError:
            pass
    return out


def _kernel_check(chat, expr: str) -> CheckResult:
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
        ok = re.search(value, answer, flags) is not None
        return CheckResult(check=label, passed=ok, detail="" if ok else f"answer: {answer[:200]!r}")
    if kind == "answer_number":
        nums = _numbers(answer)
        close = [x for x in nums if abs(x - value) <= check.tolerance]
        return CheckResult(check=label, passed=bool(close),
                           detail=f"found {close[0]:g}" if close else f"numbers in the answer: {nums[:10]}")
    if kind == "file_exists":
        path = (workspace / value).resolve()
        ok = path.is_relative_to(workspace.resolve()) and path.exists()
        return CheckResult(check=label, passed=ok, detail="" if ok else "not in the workspace")
    if kind == "kernel":
        return _kernel_check(chat, value)
    cost = chat.usage.cost_usd
    return CheckResult(check=label, passed=cost <= value, detail=f"cost ${cost:.4f}")


# -- one task ------------------------------------------------------------------------------------

class _Bar:
    """A task's line in the live progress display (or nothing)."""

    def __init__(self, progress: Progress | None, task: Task):
        self.progress, self.name, self.n = progress, task.name, len(task.prompts)
        self.id = progress.add_task(task.name, total=self.n + 1, start=False) if progress else None

    def update(self, text: str, advance: int = 0) -> None:
        if self.progress is not None:
            self.progress.start_task(self.id)
            self.progress.update(self.id, description=f"{self.name}: {text}", advance=advance)


def _copy_files(task: Task, workspace: Path) -> None:
    for src in task.source_files():
        dest = workspace / src.name
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)


def run_task(task: Task, folder: Path, backend: Any, progress: Progress | None = None,
             kernel_options: dict[str, Any] | None = None) -> TaskResult:
    """Run one task with its own workspace and kernel; write its transcript and report to `folder`."""
    from .chat import Chat

    t0 = time.monotonic()
    bar = _Bar(progress, task)
    workspace = folder / "workspace"
    sb = task.sandbox
    result = TaskResult(task=task.name, file=str(task.path) if task.path else None, status="failed",
                        report=str(folder), model=getattr(backend, "model", None))
    bar.update("starting the kernel")
    try:
        workspace.mkdir(parents=True, exist_ok=True)
        _copy_files(task, workspace)
        sandbox = dict(workspace=workspace, isolation=sb.isolation, network=sb.network,
                       gpu=has_gpu() if sb.gpu == "auto" else sb.gpu, timeout=sb.timeout,
                       memory_mb=sb.memory_mb if sb.memory_mb is not None else -1)
        sandbox.update(kernel_options or {})  # --gateway: every task's kernel on the gateway
        chat = Chat(backend=backend, system=task.system, budget=task.budget.budget(), max_steps=task.max_steps,
                    temperature=task.temperature, progress=False, **sandbox)
    except Exception as e:  # noqa: BLE001 - reported per task
        result.status, result.error = "error", f"setup: {type(e).__name__}: {e}"
        result.seconds = time.monotonic() - t0
        bar.update("[red]setup error[/]", advance=bar.n + 1)
        return result
    try:
        chat.kernel()  # started now: a sandbox that cannot start is a setup error, not a failed task
    except Exception as e:  # noqa: BLE001
        chat.close()
        result.status, result.error = "error", f"setup: the kernel did not start: {type(e).__name__}: {e}"
        result.seconds = time.monotonic() - t0
        bar.update("[red]setup error[/]", advance=bar.n + 1)
        return result
    with chat:
        chat.save(folder / "transcript.json")
        answer = ""
        try:
            for i, prompt in enumerate(task.prompts, 1):
                step = 0
                bar.update(f"prompt {i}/{bar.n}")
                for ev in chat.run(prompt):
                    step = _on_event(ev, bar, i, step)
                    if isinstance(ev, AnswerEvent):
                        answer = ev.text
                result.answers.append(answer)
                bar.update(f"prompt {i}/{bar.n} answered", advance=1)
        except BudgetExceeded as e:
            result.error = f"budget exceeded: {e}"
        except CassetteError as e:
            result.status, result.error = "error", str(e)
        except Exception as e:  # noqa: BLE001 - a failure of this task, not of the run
            result.error = f"{type(e).__name__}: {e}"
        if result.status != "error":
            bar.update("checks")
            try:
                result.checks = [run_check(c, chat, answer, workspace) for c in task.checks]
            except Exception as e:  # noqa: BLE001
                result.error = (result.error + "; " if result.error else "") + f"checks: {type(e).__name__}: {e}"
            ok = result.error is None and all(c.passed for c in result.checks)
            result.status = "passed" if ok else "failed"
        u = chat.usage
        result.steps, result.cost_usd = chat.tracker.steps, u.cost_usd
        result.prompt_tokens, result.completion_tokens = u.prompt_tokens, u.completion_tokens
        result.seconds = time.monotonic() - t0
        _write_task_report(chat, task, result, folder)
    bar.update(f"[{'green' if result.status == 'passed' else 'red'}]{result.status}[/]", advance=1)
    return result


def _on_event(ev: Event, bar: _Bar, i: int, step: int) -> int:
    if isinstance(ev, UsageEvent):
        step += 1
        bar.update(f"prompt {i}/{bar.n}, step {step}")
    elif isinstance(ev, ToolCallEvent):
        bar.update(f"prompt {i}/{bar.n}, step {step}: running {ev.name}")
    return step


def _write_task_report(chat, task: Task, result: TaskResult, folder: Path) -> None:
    conv = chat.conversation()
    store.atomic_write(folder / "transcript.md", _results_md(result) + "\n" + store.to_markdown(conv))
    page = store.to_html(conv).replace("<body>", "<body>" + _results_html(result), 1)
    store.atomic_write(folder / "report.html", page)
    usage = {"task": task.name, "model": chat.model, "steps": chat.tracker.steps, "seconds": round(result.seconds, 3),
             "total": chat.usage.model_dump(), "requests": [u.model_dump() for u in chat.tracker.usages]}
    store.atomic_write(folder / "usage.json", json.dumps(usage, indent=1))


def _results_md(r: TaskResult) -> str:
    lines = [f"# Task {r.task}: {r.status.upper()}", ""]
    lines += [f"- [{'x' if c.passed else ' '}] {c.check}" + (f" ({c.detail})" if c.detail else "") for c in r.checks]
    if r.error:
        lines.append(f"\nError: {r.error}")
    return "\n".join(lines) + "\n"


def _results_html(r: TaskResult) -> str:
    colour = "#2a7" if r.status == "passed" else "#c33"
    rows = "".join(f"<tr><td>{'✔' if c.passed else '✘'}</td><td><code>{html.escape(c.check)}</code></td>"
                   f"<td>{html.escape(c.detail)}</td></tr>" for c in r.checks)
    err = f"<p><b>Error:</b> {html.escape(r.error)}</p>" if r.error else ""
    return (f"<section><h1>Task {html.escape(r.task)}: <span style='color:{colour}'>{r.status}</span></h1>"
            f"<table>{rows}</table>{err}<p>{r.steps} steps, {r.tokens:,} tokens, ${r.cost_usd:.4f}, "
            f"{r.seconds:.1f} s</p></section><hr>")


# -- many tasks ----------------------------------------------------------------------------------

def default_out() -> Path:
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def make_backends(tasks: list[Task], out: Path, *, model: str | None = None, base_url: str | None = None,
                  record: str | Path | None = None, replay: str | Path | None = None) -> dict[str, Any]:
    """One backend per task, built before anything runs: a setup problem stops the run (exit 2)."""
    from .backends import get_backend

    backends: dict[str, Any] = {}
    try:
        if replay:
            cassette = Cassette.load(replay)
            for t in tasks:
                backends[t.name] = ReplayBackend(cassette, task=t.name, workspace=_workspace(out, t))
            return backends
        cassette = None
        if record:
            cassette = Cassette.load(record) if Path(record).is_file() else Cassette(record)
        for t in tasks:
            inner = get_backend(model or t.model, base_url=base_url or t.base_url, progress=False)
            backends[t.name] = (RecordingBackend(inner, cassette, task=t.name, workspace=_workspace(out, t))
                                if cassette else inner)
        if cassette:
            cassette.save()
    except (CassetteError, ValueError, RuntimeError, ImportError, OSError) as e:
        raise SetupError(str(e)) from None
    return backends


def _workspace(out: Path, task: Task) -> Path:
    return (out / task.name / "workspace").resolve()


def run_tasks(tasks: list[Task], out: Path, backends: dict[str, Any], parallel: int = 1,
              console: Console | None = None, show_progress: bool = True,
              kernel_options: dict[str, Any] | None = None) -> list[TaskResult]:
    """Run the tasks (`parallel` at a time), with a live progress bar per task."""
    console = console or Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=not show_progress)
    lock = threading.Lock()
    results: dict[str, TaskResult] = {}

    def one(task: Task) -> None:
        r = run_task(task, out / task.name, backends[task.name], progress, kernel_options)
        with lock:
            results[task.name] = r

    with progress:
        if parallel <= 1:
            for t in tasks:
                one(t)
        else:
            with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="kernelchat-task") as pool:
                for f in [pool.submit(one, t) for t in tasks]:
                    f.result()
    return [results[t.name] for t in tasks]


def exit_code(results: list[TaskResult]) -> int:
    if any(r.status == "error" for r in results):
        return 2
    return 0 if all(r.status == "passed" for r in results) else 1


def summary_table(results: list[TaskResult]) -> Table:
    t = Table(title="kernelchat run")
    for col, just in (("task", "left"), ("result", "left"), ("checks", "right"), ("steps", "right"),
                      ("tokens", "right"), ("cost", "right"), ("time", "right")):
        t.add_column(col, justify=just)
    for r in results:
        style = {"passed": "green", "failed": "red", "error": "bold red"}[r.status]
        t.add_row(r.task, f"[{style}]{r.status}[/]", f"{sum(c.passed for c in r.checks)}/{len(r.checks)}",
                  str(r.steps), f"{r.tokens:,}", f"${r.cost_usd:.4f}", f"{r.seconds:.1f} s")
    return t


def write_summary(results: list[TaskResult], out: Path, extra: dict | None = None) -> None:
    data = {"format": "kernelchat.run/1", **(extra or {}), "exit_code": exit_code(results),
            "passed": sum(r.status == "passed" for r in results), "total": len(results),
            "tasks": [{**r.model_dump(), "tokens": r.tokens} for r in results]}
    store.atomic_write(out / "summary.json", json.dumps(data, indent=1))
    lines = ["| task | result | checks | steps | tokens | cost | time |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.task} | {r.status} | {sum(c.passed for c in r.checks)}/{len(r.checks)} | {r.steps} | "
                     f"{r.tokens:,} | ${r.cost_usd:.4f} | {r.seconds:.1f} s |")
    for r in results:
        failed = [c for c in r.checks if not c.passed]
        if r.error or failed:
            lines.append(f"\n**{r.task}**: " + "; ".join(([r.error] if r.error else [])
                                                        + [f"{c.check} failed ({c.detail})" for c in failed]))
    store.atomic_write(out / "summary.md", "\n".join(lines) + "\n")


# -- the command ---------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    """Run task files; print the summary; exit 0 / 1 / 2."""
    err = Console(stderr=True, soft_wrap=True)
    if args.record and args.replay:
        err.print("[red]kernelchat run:[/red] --record and --replay exclude each other", highlight=False)
        return 2
    if args.parallel < 1:
        err.print("[red]kernelchat run:[/red] --parallel must be at least 1", highlight=False)
        return 2
    try:
        tasks = load_tasks(args.tasks)
    except TaskError as e:
        err.print(f"[red]kernelchat run: invalid task file[/red]\n{e}", highlight=False, markup=True)
        return 2
    out = Path(args.out) if args.out else default_out()
    try:
        backends = make_backends(tasks, out, model=args.model, base_url=args.base_url, record=args.record,
                                 replay=args.replay)
    except SetupError as e:
        err.print(f"[red]kernelchat run: setup failed:[/red] {e}", highlight=False)
        return 2
    started = datetime.now().isoformat(timespec="seconds")
    from .cli import gateway_options

    results = run_tasks(tasks, out, backends, parallel=args.parallel, console=err,
                        kernel_options=gateway_options(args),
                        show_progress=not args.no_progress)
    write_summary(results, out, {"started": started, "replay": str(args.replay) if args.replay else None,
                                 "record": str(args.record) if args.record else None})
    console = Console()
    console.print(summary_table(results))
    say = lambda text: console.print(text, highlight=False, soft_wrap=True)  # noqa: E731
    for r in results:
        if r.error:
            say(f"[red]{r.task}:[/red] {r.error}")
        for c in r.checks:
            if not c.passed:
                say(f"[red]{r.task}: check failed:[/red] {c.check} ({c.detail})")
    say(f"report: {out}")
    if args.record:
        say(f"cassette: {args.record}")
    return exit_code(results)


def register(sub: Any) -> None:
    """Add the `run` subcommand to the CLI's subparsers."""
    p = sub.add_parser("run", help="run task files (TOML) and check their outcomes",
                       description="Run task files: prompts, checks, a report folder. Exit code 0 all passed, "
                                   "1 some failed, 2 invalid input or setup error.")
    p.add_argument("tasks", nargs="+", help="task files (TOML)")
    p.add_argument("--out", default=None, help="report folder (default runs/<timestamp>/)")
    p.add_argument("--parallel", type=int, default=1, help="tasks run at once, each with its own kernel")
    p.add_argument("--record", default=None, metavar="CASSETTE", help="save every model request and reply")
    p.add_argument("--replay", default=None, metavar="CASSETTE", help="serve the replies from a cassette: "
                   "offline, free, no model loaded")
    p.add_argument("--model", "-m", default=None, help="override the tasks' model")
    p.add_argument("--base-url", default=None, help="an OpenAI-compatible server")
    p.add_argument("--no-progress", action="store_true", help="no live progress bars")
    p.add_argument("--gateway", metavar="URL", default=None,
                   help="run every task's kernel on this Jupyter Kernel Gateway / Enterprise Gateway")
    p.add_argument("--gateway-token", metavar="TOKEN", default=None, help="the gateway's auth token")
    p.set_defaults(func=cmd_run)


__all__ = ["run_task", "run_tasks", "run_check", "make_backends", "TaskResult", "CheckResult", "register",
           "cmd_run", "exit_code"]
