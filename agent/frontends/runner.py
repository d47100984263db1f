"""`kernelchat run TASK.toml ...`: run task files, check the outcomes, write a report folder.

Each task gets its own workspace (inside the report folder) and kernel. Per task the folder holds
transcript.json, transcript.md, transcript.ipynb (a Jupyter notebook), report.html (plots inline)
and usage.json; beside them summary.json and summary.md. Exit code: 0 all passed, 1 some failed,
2 invalid input or setup error.

The workspace (OUT/TASK/workspace) is the only part of the report folder the sandbox can write: bwrap
binds just that folder (and its runtime folder) into the kernel, and `/` is read-only there, so the
reports beside it are the host's alone. A rerun with the same --out empties the workspace first
(the last run's code may have left links and FIFOs at the names of the task's files, and leftovers
would pass `file_exists` checks); the task's files are then copied in through sandbox.safefs.
With isolation="none" the kernel runs as this user: a task file may only tighten the run's sandbox,
and its base_url and model are checked likewise (task_models.py).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from agent.core import export, store
from agent.core.notebook_export import notebook_json
from agent.core.budget import BudgetExceeded
from agent.models import Cassette, CassetteError, RecordingBackend, ReplayBackend
from agent.frontends.checks import CheckResult, run_check
from agent.frontends.options import (add_constrain_calls_arg, add_engine_arg, add_images_arg, add_keep_alive_arg,
                                     add_mcp_arg, add_sandbox_args, keep_alive, mcp_server_specs)
from agent.core.events import AnswerEvent, Event, ToolCallEvent, UsageEvent
from agent.frontends.render import safe_line, safe_text
from agent.frontends.task_models import check_task_files, check_task_models, local_model, task_mcp_servers
from agent.frontends.task_sandbox import (TRUST_ALIAS, TRUST_FLAG, UserSandbox, check_task_sandboxes, copy_task_files,
                                          fresh_workspace, run_sandbox, task_options)
from agent.frontends.tasks import Task, TaskError, load_tasks

Status = Literal["passed", "failed", "error"]
BackendFactory = Callable[[Task, Path], Any]


class TaskResult(BaseModel):
    task: str
    file: str | None = None
    status: Status
    answers: list[str] = Field(default_factory=list)
    # How each prompt's turn ended, beside `answers`: "answered", or what stopped it, e.g.
    # "stopped after 5 attempts without printing a value", "max_steps reached", "budget exceeded: ..."
    outcomes: list[str] = Field(default_factory=list)
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


# -- one task ------------------------------------------------------------------------------------

class _Bar:
    """A task's line in the live progress display (or nothing)."""

    def __init__(self, progress: Progress | None, task: Task):
        # The description is markup (the status colours): a name like "a[/b]" must be escaped.
        self.progress, self.name, self.n = progress, escape(safe_line(task.name)), len(task.prompts)
        self.id = progress.add_task(self.name, total=self.n + 1, start=False) if progress else None

    def update(self, text: str, advance: int = 0) -> None:
        if self.progress is not None:
            self.progress.start_task(self.id)
            self.progress.update(self.id, description=f"{self.name}: {text}", advance=advance)


def run_task(task: Task, folder: Path, backend: Any, progress: Progress | None = None,
             kernel_options: UserSandbox | None = None, trust_task_files: bool = False,
             mcp_servers: dict[str, Any] | None = None) -> TaskResult:
    """Run one task with its own workspace and kernel; write its transcript and report to `folder`.
    `kernel_options`: the run's sandbox, which the task may only tighten unless `trust_task_files`.
    `mcp_servers`: the run's (config.toml, --mcp), of which the task's chat starts those it names."""
    from agent.chat import Chat

    t0 = time.monotonic()
    bar = _Bar(progress, task)
    workspace = folder / "workspace"
    result = TaskResult(task=task.name, file=str(task.path) if task.path else None, status="failed",
                        report=str(folder), model=getattr(backend, "model", None))
    bar.update("starting the kernel")
    try:
        sandbox = task_options(task, kernel_options or {}, folder, workspace, trust_task_files)
        fresh_workspace(workspace)
        copy_task_files(task, workspace)
        chat = Chat(backend=backend, system=task.system, budget=task.budget.budget(), max_steps=task.max_steps,
                    temperature=task.temperature, constrain_calls=task.constrain_calls, progress=False, kernel=sandbox,
                    mcp_servers=task_mcp_servers(task, mcp_servers or {}) or None)
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
                step, answer, outcome = 0, "", "no answer"
                bar.update(f"prompt {i}/{bar.n}")
                for ev in chat.run(prompt):
                    step = _on_event(ev, bar, i, step)
                    if isinstance(ev, AnswerEvent):
                        answer = ev.text
                        outcome = outcome_text(ev.outcome, ev.text)
                result.answers.append(answer)
                result.outcomes.append(outcome)
                bar.update(f"prompt {i}/{bar.n} {'answered' if outcome == 'answered' else 'stopped'}", advance=1)
        except BudgetExceeded as e:
            result.error = f"budget exceeded: {e}"
        except CassetteError as e:
            result.status, result.error = "error", str(e)
        except Exception as e:  # noqa: BLE001 - a failure of this task, not of the run
            result.error = f"{type(e).__name__}: {e}"
        if result.error:  # the prompt it stopped, with what it had
            result.answers.append(answer)
            result.outcomes.append(result.error if result.error.startswith("budget") else f"failed: {result.error}")
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


NOTICES = {"max_steps": "max_steps reached", "budget": "budget exceeded", "interrupted": "interrupted",
           "failed": "failed", "stopped": "stopped without an answer"}


def outcome_text(status: str, text: str) -> str:
    """What a turn's outcome reads as in the table and summary.*: "answered", else the notice the
    answer ends with ("[stopped after 5 attempts without printing a value]" without brackets)."""
    if status == "answered":
        return "answered"
    last = text.rstrip().rsplit("\n", 1)[-1].strip()
    if last.startswith("[") and last.endswith("]"):
        return last[1:-1]
    return NOTICES.get(status, status)


def task_outcome(r: TaskResult) -> str:
    """One cell for a task: its turns' outcomes other than "answered" (with the prompt's number when
    there are several), "answered" when all were, "not run" when none ran (a setup error)."""
    if not r.outcomes:
        return "not run"
    odd = [(i, o) for i, o in enumerate(r.outcomes, 1) if o != "answered"]
    if not odd:
        return "answered"
    return "; ".join(f"prompt {i}: {o}" if len(r.outcomes) > 1 else o for i, o in odd)


def _on_event(ev: Event, bar: _Bar, i: int, step: int) -> int:
    if isinstance(ev, UsageEvent):
        step += 1
        bar.update(f"prompt {i}/{bar.n}, step {step}")
    elif isinstance(ev, ToolCallEvent):
        bar.update(f"prompt {i}/{bar.n}, step {step}: running {escape(safe_line(ev.name))}")
    return step


def _write_task_report(chat, task: Task, result: TaskResult, folder: Path) -> None:
    conv = chat.conversation()
    export.write_markdown(folder / "transcript.md", conv, header=_results_md(result) + "\n")
    page = export.to_html(conv).replace("<body>", "<body>" + _results_html(result), 1)
    store.atomic_write(folder / "report.html", page)
    store.atomic_write(folder / "transcript.ipynb", notebook_json(conv))
    usage = {"task": task.name, "model": chat.model, "steps": chat.tracker.steps, "seconds": round(result.seconds, 3),
             "total": chat.usage.model_dump(), "requests": [u.model_dump() for u in chat.tracker.usages]}
    store.atomic_write(folder / "usage.json", json.dumps(usage, indent=1))


def _results_md(r: TaskResult) -> str:
    """The head of transcript.md; the task's, the model's and the kernel's words inert (export.inert_line)."""
    inert = export.inert_line
    lines = [f"# Task {inert(r.task)}: {r.status.upper()}", "",
             f"Model: {inert(r.model or '?')}; outcome: {inert(task_outcome(r))}", ""]
    lines += [f"- [{'x' if c.passed else ' '}] {inert(c.check)}" + (f" ({inert(c.detail)})" if c.detail else "")
              for c in r.checks]
    if r.error:
        lines.append(f"\nError: {inert(r.error)}")
    return "\n".join(lines) + "\n"


def _results_html(r: TaskResult) -> str:
    colour = "#2a7" if r.status == "passed" else "#c33"
    rows = "".join(f"<tr><td>{'✔' if c.passed else '✘'}</td><td><code>{html.escape(c.check)}</code></td>"
                   f"<td>{html.escape(c.detail)}</td></tr>" for c in r.checks)
    err = f"<p><b>Error:</b> {html.escape(r.error)}</p>" if r.error else ""
    return (f"<section><h1>Task {html.escape(r.task)}: <span style='color:{colour}'>{r.status}</span></h1>"
            f"<p>Model: {html.escape(r.model or '?')}; outcome: {html.escape(task_outcome(r))}</p>"
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
                  record: str | Path | None = None, replay: str | Path | None = None,
                  keep_alive: float = 0.0, fallback: tuple[str | None, str | None] = (None, None),
                  trust_task_files: bool = False, engine: str | None = None,
                  images: bool | None = None) -> dict[str, Any]:
    """One backend per task, built before anything runs: a setup problem stops the run (exit 2).
    `keep_alive` > 0: local models are served by a resident process. `fallback`: the configuration
    file's (model, base_url), for tasks that name no model; `engine` and `images` beat the tasks'. A task's
    base_url or model path beyond what these name raises TaskError first, unless `trust_task_files`."""
    from agent.models import get_backend

    # the key goes with every request: to no server of a task file's choosing
    check_task_models(tasks, trust=trust_task_files, model=model, base_url=base_url, config_base_url=fallback[1],
                      replay=bool(replay))
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
            chosen = model or (t.model if base_url or t.base_url else local_model(t))
            inner = get_backend(chosen or fallback[0], base_url=base_url or t.base_url or (
                None if chosen else fallback[1]), progress=False, keep_alive=keep_alive, workspace=_workspace(out, t),
                engine=engine or t.engine, images=t.images if images is None else images)
            backends[t.name] = (RecordingBackend(inner, cassette, task=t.name, workspace=_workspace(out, t))
                                if cassette else inner)
        if cassette:
            cassette.save()
    except (CassetteError, ValueError, RuntimeError, ImportError, OSError) as e:
        raise SetupError(str(e)) from None
    return backends


def model_line(task: Task, *, model: str | None = None, replay: str | Path | None = None,
               fallback: str | None = None) -> str:
    """Which model a task runs on, and why when no one chose it (said before the task starts).
    `fallback`: the configuration file's model."""
    from agent.models import EMBEDDED, default_model

    if replay:
        return f"{task.name}: the replies of {replay} (no model is asked)"
    if model:
        return f"{task.name}: model {model} (--model)"
    if task.model:
        return f"{task.name}: model {task.model} (the task file)"
    if fallback:
        return f"{task.name}: model {fallback} (no model in the task: the configuration file)"
    chosen = default_model()
    if os.environ.get("KERNELCHAT_MODEL"):
        why = "no model in the task: KERNELCHAT_MODEL"
    elif chosen == EMBEDDED:
        why = f"no model in the task and no OPENAI_API_KEY: using the embedded {EMBEDDED}"
    else:
        why = "no model in the task: the default"
        if os.environ.get("OPENAI_API_KEY"):
            why += " with OPENAI_API_KEY"
    return f"{task.name}: model {chosen} ({why})"


def _workspace(out: Path, task: Task) -> Path:
    return (out / task.name / "workspace").resolve()


def run_tasks(tasks: list[Task], out: Path, backends: dict[str, Any], parallel: int = 1,
              console: Console | None = None, show_progress: bool = True,
              kernel_options: UserSandbox | None = None, trust_task_files: bool = False,
              mcp_servers: dict[str, Any] | None = None) -> list[TaskResult]:
    """Run the tasks (`parallel` at a time), with a live progress bar per task. `kernel_options`: the
    run's sandbox; a task asking for a looser one raises TaskError before anything runs, unless
    `trust_task_files`."""
    check_task_sandboxes(tasks, kernel_options or {}, out, trust_task_files)
    for t in tasks:
        task_mcp_servers(t, mcp_servers or {})
    console = console or Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=not show_progress)
    lock = threading.Lock()
    results: dict[str, TaskResult] = {}

    def one(task: Task) -> None:
        r = run_task(task, out / task.name, backends[task.name], progress, kernel_options, trust_task_files,
                     mcp_servers)
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
    t = Table(title="kernelchat run", box=None, header_style="bold")  # no rules: room for 9 columns
    for col, just in (("task", "left"), ("model", "left"), ("result", "left"), ("outcome", "left"),
                      ("checks", "right"), ("steps", "right"), ("tokens", "right"), ("cost", "right"),
                      ("time", "right")):
        # numbers on one line; names and outcomes fold rather than end in "…" on a narrow terminal
        t.add_column(col, justify=just, no_wrap=col not in ("task", "model", "outcome"), overflow="fold")
    for r in results:
        style = {"passed": "green", "failed": "red", "error": "bold red"}[r.status]
        outcome = task_outcome(r)
        t.add_row(Text(safe_line(r.task)), Text(safe_line(r.model or "?")), Text(r.status, style=style),
                  Text(safe_line(outcome), style="" if outcome == "answered" else "yellow"),
                  f"{sum(c.passed for c in r.checks)}/{len(r.checks)}",
                  str(r.steps), f"{r.tokens:,}", f"${r.cost_usd:.4f}", f"{r.seconds:.1f} s")
    return t


def write_summary(results: list[TaskResult], out: Path, extra: dict | None = None) -> None:
    data = {"format": "kernelchat.run/1", **(extra or {}), "exit_code": exit_code(results),
            "passed": sum(r.status == "passed" for r in results), "total": len(results),
            "tasks": [{**r.model_dump(), "tokens": r.tokens} for r in results]}
    store.atomic_write(out / "summary.json", json.dumps(data, indent=1))
    lines = ["| task | model | result | outcome | checks | steps | tokens | cost | time |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {_cell(r.task)} | {_cell(r.model or '?')} | {r.status} | {_cell(task_outcome(r))} | "
                     f"{sum(c.passed for c in r.checks)}/{len(r.checks)} | {r.steps} | "
                     f"{r.tokens:,} | ${r.cost_usd:.4f} | {r.seconds:.1f} s |")
    for r in results:
        failed = [c for c in r.checks if not c.passed]
        if r.error or failed:
            lines.append(f"\n**{export.inert_line(r.task)}**: " + export.inert_line("; ".join(
                ([r.error] if r.error else []) + [f"{c.check} failed ({c.detail})" for c in failed])))
    store.atomic_write(out / "summary.md", safe_text("\n".join(lines)) + "\n")  # often cat in a terminal


def _cell(text: str) -> str:
    """Text for one Markdown table cell, inert (export.inert_line): a `|` would start another."""
    return export.inert_line(text).replace("|", "\\|")


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
        if args.constrain_calls is not None:  # the flag beats the task files
            tasks = [t.model_copy(update={"constrain_calls": args.constrain_calls}) for t in tasks]
    except TaskError as e:
        err.print(Text.assemble(("kernelchat run: invalid task file", "red"), "\n", safe_text(str(e))))
        return 2
    out = Path(args.out) if args.out else default_out()
    sandbox = run_sandbox(args)
    try:  # before any model loads or kernel starts: the sandbox, the server and the model are the user's
        servers = mcp_server_specs(args) or {}
        for t in tasks:
            task_mcp_servers(t, servers)
        check_task_files(tasks, sandbox, out, trust=args.trust_task_files, model=args.model, base_url=args.base_url,
                         config_base_url=getattr(args, "config_base_url", None), replay=bool(args.replay))
    except (TaskError, ValueError) as e:  # ValueError: a --mcp file
        err.print(Text.assemble(("kernelchat run: ", "red"), safe_text(str(e))), soft_wrap=True)
        return 2
    for t in tasks:  # before any weights load: a fallback to the embedded model is no surprise
        err.print(Text(safe_line(model_line(t, model=args.model, replay=args.replay,
                                            fallback=getattr(args, "config_model", None))), style="dim"))
    try:
        backends = make_backends(tasks, out, model=args.model, base_url=args.base_url, record=args.record,
                                 replay=args.replay, keep_alive=keep_alive(args),
                                 fallback=(getattr(args, "config_model", None), getattr(args, "config_base_url", None)),
                                 trust_task_files=args.trust_task_files, engine=args.engine,
                                 images=args.images)
    except SetupError as e:
        err.print(Text.assemble(("kernelchat run: setup failed:", "red"), " ", safe_text(str(e))))
        return 2
    started = datetime.now().isoformat(timespec="seconds")
    results = run_tasks(tasks, out, backends, parallel=args.parallel, console=err,
                        kernel_options=sandbox, trust_task_files=args.trust_task_files,
                        show_progress=not args.no_progress, mcp_servers=servers)
    write_summary(results, out, {"started": started, "replay": str(args.replay) if args.replay else None,
                                 "record": str(args.record) if args.record else None})
    console = Console()
    console.print(summary_table(results))
    def say(red: str, text: str) -> None:  # model, kernel and task text: no markup, controls shown
        console.print(Text.assemble((safe_line(red), "red"), safe_text(text)), highlight=False, soft_wrap=True)

    for r in results:
        if r.error:
            say(f"{r.task}: ", r.error)
        for c in r.checks:
            if not c.passed:
                say(f"{r.task}: check failed: ", f"{c.check} ({c.detail})")
    say("", f"report: {out}")
    if args.record:
        say("", f"cassette: {args.record}")
    return exit_code(results)


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the `run` subcommand to the CLI's subparsers."""
    p = sub.add_parser("run", help="run task files (TOML) and check their outcomes",
                       description="Run task files: prompts, checks, a report folder. Exit code 0 all passed, "
                                   "1 some failed, 2 invalid input or setup error.")
    p.add_argument("tasks", nargs="+", help="task files (TOML)")
    p.add_argument("--out", default=None, help="report folder (default runs/<timestamp>/)")
    p.add_argument("--parallel", type=int, default=1, help="tasks run at once, each with its own kernel")
    p.add_argument("--record", default=None, metavar="CASSETTE", help="save every model request and reply")
    p.add_argument("--replay", default=None, metavar="CASSETTE", help="serve a cassette's replies: offline, no model")
    p.add_argument("--model", "-m", default=None, help="override the tasks' model")
    p.add_argument("--base-url", default=None, help="an OpenAI-compatible server")
    p.add_argument("--no-progress", action="store_true", help="no live progress bars")
    add_keep_alive_arg(p)
    add_engine_arg(p)
    add_images_arg(p)
    add_constrain_calls_arg(p)
    add_mcp_arg(p)
    p.add_argument(TRUST_FLAG, action="store_true", dest="trust_task_files",
                   help="accept the task files' settings as written (for files you wrote): a [sandbox] looser than "
                        "this run's (isolation, network, GPU, larger limits), a base_url you did not name (it gets your "
                        "OPENAI_API_KEY), a model path outside the file's folder; without it such a file stops the run")
    p.add_argument(TRUST_ALIAS, action="store_true", dest="trust_task_files", help=argparse.SUPPRESS)
    add_sandbox_args(p, workspace=False)  # the run's sandbox; a task file may only tighten it
    p.set_defaults(func=cmd_run)
    return p


__all__ = ["run_task", "run_tasks", "run_check", "make_backends", "TaskResult", "CheckResult", "register",
           "cmd_run", "exit_code"]
