"""The `kernelchat` command line.

    kernelchat                                   the terminal chat (same flags as the one shot)
    kernelchat "What is 2**100? Use Python."     one shot: the answer, with each cell and its output
    kernelchat --notebook NB.ipynb "Plot it"     start from a notebook: its code cells run first
    kernelchat exec "print(1)"                   run code in the sandbox
    kernelchat tokens REQUEST.json --model M     count a request's prompt tokens
    kernelchat models                            what models are configured and available
    kernelchat run TASK.toml [MORE.toml ...]     run task files, check the outcomes, write a report
    kernelchat conversations                     the saved conversations; `kernelchat --resume [ID]` continues one
    kernelchat mcp [--http HOST:PORT]            the sandboxed kernel as an MCP server (stdio, or streamable HTTP)
    kernelchat --version                         the installed version (`python -m agent` works the same)

Every value is checked before a model loads or a kernel starts; a bad one is one sentence on stderr
(and `{"error": ...}` on stdout with --json) and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import logging
import os
import sys
import tomllib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from agent.frontends import config
from agent.frontends.options import (add_budget_args, add_mcp_arg, add_model_args, add_notebook_arg,
                                     add_sandbox_args, chat_options, check_options, check_sandbox_options, conversation_path,
                                     kernel_options)
from agent.frontends.render import SafeLogHandler, safe_line, safe_text

if TYPE_CHECKING:
    from sandbox import ExecResult
    from agent.frontends.warmup import EarlyKernel, Timings


def cmd_exec(args: argparse.Namespace) -> int:
    """Run Python in the sandbox and show what it produced (the kernel's control codes made visible)."""
    from sandbox import Kernel

    console = Console()
    code = sys.stdin.read() if args.code == "-" else args.code
    check_sandbox_options(args)  # before the kernel starts: its own errors are worded for Python callers
    with Kernel(kernel_options(args)) as kernel:
        res = kernel.execute(code)
    if args.json:
        print(json.dumps(res.model_dump(mode="json"), indent=2))  # ASCII only: no raw C1 or bidi control
    else:
        show_exec_result(console, code, res)
    if kernel.kept_workspace is not None:  # a temporary workspace the code left files in stays: say where
        Console(stderr=True).print(Text(f"files kept in {safe_line(str(kernel.kept_workspace))}", style="dim"),
                                   soft_wrap=True)  # on stderr, as the one-shot does: stdout stays the result
    return 0 if res.ok else 1


def show_exec_result(console: Console, code: str, res: "ExecResult") -> None:
    """`kernelchat exec`'s cell and result panels."""
    from agent.frontends.render import code_panel

    console.print(code_panel(code, title="cell", border_style="none"))
    body = res.stdout + (res.stderr if res.stderr else "")
    if res.result is not None:
        body += ("" if not body or body.endswith("\n") else "\n") + f"Out: {res.result}"
    if res.traceback:
        body += res.traceback
    for path in res.images:
        body += f"\n[image saved: {safe_line(str(path))}]"
    if res.message:
        body += f"\n{res.message}"
    style = "green" if res.ok else "red"
    console.print(Panel(Text(safe_text(body.rstrip()) or "(no output)"), border_style=style,
                        title=Text(f"{safe_line(res.status)} in {res.duration * 1000:.0f} ms"), title_align="left"))


def cmd_prompt(args: argparse.Namespace) -> int:
    """One shot: run the loop on PROMPT and print the answer (with each cell), or one JSON object."""
    from agent.core.budget import BudgetExceeded
    from agent.core.events import AnswerEvent, ToolResultEvent
    from agent.frontends.render import EventPrinter

    if args.prompt is None:  # no prompt: the terminal chat, with the same flags
        if args.json:
            raise ValueError("--json needs a prompt")
        check_options(args)  # before the model loads: a bad value is one sentence at once
        if args.resume is not None:
            from agent.frontends.conversations import find_conversation

            find_conversation(args.resume or None)  # no match: one sentence before the model loads
        from agent.frontends.repl import main as chat_main

        return chat_main(args)
    if args.resume is not None:
        raise ValueError("--resume continues a conversation in the terminal chat; leave out the prompt")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise ValueError("the prompt is empty; ask a question, or run kernelchat without one for the chat")
    check_options(args)  # before the model loads: a bad value is one sentence at once
    from agent.frontends.warmup import EarlyKernel, Timings

    timings = Timings()  # printed with --timings
    options = chat_options(args)
    early = EarlyKernel(options.pop("kernel"))  # comes up while the model loads; the Chat gets it, not its options
    try:
        chat = load_chat(args, options, early, timings)
    except BaseException:
        early.close()
        raise
    printer = None if args.json else EventPrinter(Console(stderr=False))
    calls: list[dict] = []
    answer, steps, stopped = "", 0, None
    with chat:
        if args.confirm:  # ask before each cell, as the terminal chat does
            from agent.frontends.repl import confirm_cell

            chat.approve = confirm_cell
        path = None if args.no_save else conversation_path(chat, args.save, prompt)
        existed = path is not None and path.exists()
        events = chat.run(prompt)
        if args.notebook:  # its cells first, shown as the model's are (and listed in --json's tool_calls)
            from agent.core.notebook_import import notebook_events

            events = itertools.chain(notebook_events(chat, args.notebook), events)
        try:
            for ev in events:
                if printer:
                    printer(ev)
                if isinstance(ev, ToolResultEvent):
                    calls.append({"name": ev.name, "code": ev.code, "status": ev.status, "output": ev.output,
                                  "images": ev.images})
                timings.add_event(ev)
                if isinstance(ev, AnswerEvent):
                    answer, steps = ev.text, ev.steps
        except BudgetExceeded as e:
            stopped = str(e)
            steps = chat.tracker.steps
        finally:
            if path is not None and not existed and chat.tracker.steps == 0:
                path.unlink(missing_ok=True)  # nothing reached the model: no conversation to keep
                chat.path = None
        u = chat.usage
        if args.json:
            print(json.dumps({"answer": answer, "steps": steps, "tool_calls": calls, "model": chat.model,
                              "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                                        "cached_tokens": u.cached_tokens, "cost_usd": round(u.cost_usd, 6),
                                        "seconds": round(u.seconds, 3)},
                              "budget_exceeded": stopped, "conversation": str(chat.path) if chat.path else None},
                             indent=2))
        elif stopped:
            Console(stderr=True).print(Text(f"kernelchat: stopped: {safe_text(stopped)}", style="red"))
        elif chat.path:
            Console(stderr=True).print(Text(f"saved: {safe_line(str(chat.path))}", style="dim"), soft_wrap=True)
    from agent.frontends.workspaces import say_kept_workspace

    say_kept_workspace(chat, Console(stderr=True))  # closed now: a temporary workspace with files stays
    if args.timings:
        if early.seconds is not None:
            timings.add("kernel_start", early.seconds)
        print(timings.line(), file=sys.stderr)
    return 3 if stopped else 0


def load_chat(args: argparse.Namespace, options: dict[str, Any], early: "EarlyKernel", timings: "Timings") -> Any:
    """The one shot's Chat (`options`: chat_options less the kernel's) on the early kernel, the model's
    import and load timed apart."""
    from agent.frontends.options import keep_alive
    from agent.models import choose_engine, default_model, is_local_model, preload_transformers

    model = args.model or default_model()
    with timings.phase("import"):  # torch and transformers for a local model: seconds, while the kernel starts
        if (is_local_model(model) and not args.base_url and not keep_alive(args)
                and choose_engine(model, args.engine or "auto")[0] == "transformers"):
            preload_transformers()  # not for a resident model (its server has them), nor for llama.cpp
        from agent.chat import Chat
    with timings.phase("model_load"):
        return Chat(kernel=early.kernel, **options)


class UsageError(ValueError):
    """A command line argparse refused; `main` reports it (as JSON too with --json)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised rather than printed, so --json can report it too.
    (Subcommand parsers are made of the same class.)"""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def version() -> str:
    """The installed distribution's version, else (run from a checkout) pyproject.toml's."""
    try:
        return importlib.metadata.version("kernelchat")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def build_parser(cfg: config.ConfigFile | None = None) -> argparse.ArgumentParser:
    p = Parser(prog="kernelchat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    e = sub.add_parser("exec", help="run Python code in the sandboxed kernel")
    e.add_argument("code", help="the code, or - to read it from stdin")
    e.add_argument("--json", action="store_true", help="print the ExecResult as JSON")
    add_sandbox_args(e)
    e.set_defaults(func=cmd_exec)
    if cfg is not None:  # the configuration file's sandbox values
        config.apply(e, cfg, config.SANDBOX_KEYS)
    from agent.frontends.cli_models import register as register_model_commands  # `tokens`, `models`

    register_model_commands(sub)
    from agent.frontends.runner import register as register_run  # `run TASK.toml ...`

    run = register_run(sub)
    if cfg is not None:  # the file's keep_alive, and its model (with base_url) for tasks that name none
        config.apply(run, cfg, config.SANDBOX_KEYS)  # the run's sandbox: what a task file may tighten
        values = config.defaults(cfg)
        run.set_defaults(keep_alive=values.get("keep_alive"), images=values.get("images"),
                         config_model=values.get("model"), config_base_url=values.get("base_url"), mcp_servers=values.get("mcp_servers"))
    from agent.frontends.conversations import register as register_conversations  # `conversations`

    register_conversations(sub)
    from agent.frontends.mcp_server import register as register_mcp  # `mcp`: the kernel as an MCP server

    mcp = register_mcp(sub)
    if cfg is not None:  # the one shot's sandbox: the file's [sandbox] values
        config.apply(mcp, cfg, config.SANDBOX_KEYS)
    return p


def prompt_parser() -> argparse.ArgumentParser:
    p = Parser(prog="kernelchat", formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Ask a question; the model answers, running Python in a sandboxed kernel.\n"
               "Without a question, the terminal chat opens (same flags).", epilog=SUBCOMMAND_HELP)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("prompt", nargs="?", default=None,
                   help="the question (- reads it from stdin); without one, the terminal chat opens")
    p.add_argument("--json", action="store_true", help="print one JSON object: answer, steps, tool_calls, usage")
    p.add_argument("--save", default=None, help="where to save the conversation (default: the conversations folder)")
    p.add_argument("--no-save", action="store_true", help="do not save the conversation")
    p.add_argument("--confirm", action="store_true", help="ask before each cell runs: run, skip, or edit it")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="ID|PATH",
                   help="continue a saved conversation in the chat: the newest, or this id (a prefix will do) or file")
    p.add_argument("--timings", action="store_true",
                   help="print where the time went (startup, import, model load, kernel start, generation, "
                        "execution) to stderr")
    add_notebook_arg(p)
    add_model_args(p)
    add_mcp_arg(p)
    add_budget_args(p)
    add_sandbox_args(p)
    p.set_defaults(func=cmd_prompt)
    return p


SUBCOMMANDS = {"exec", "tokens", "models", "run", "conversations", "mcp"}
SUBCOMMAND_HELP = """subcommands (see `kernelchat SUBCOMMAND --help`):
  exec CODE               run Python in the sandbox
  tokens REQUEST.json     count a request's prompt tokens
  models                  what models are configured and available
  run TASK.toml ...       run task files, check the outcomes, write a report
  conversations           the saved conversations, newest first (--resume ID continues one)
  mcp [--http HOST:PORT]  the sandboxed kernel as an MCP server, for Claude Desktop, Cursor, VS Code

exit codes: 0 done, 1 a cell failed (exec), 2 bad input or a failed setup, 3 a budget stopped the run,
130 interrupted"""


def wants_json(argv: list[str]) -> bool:
    """--json among the options (not after `--`, where it would be a prompt)."""
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def report(message: str, as_json: bool) -> int:
    """A setup error: one sentence on stderr, and `{"error": ...}` on stdout with --json. Exit code 2."""
    if as_json:
        print(json.dumps({"error": message}))
    Console(stderr=True).print(Text.assemble(("kernelchat:", "red"), " ", safe_text(message)),
                               soft_wrap=True)  # one line even when piped: easy to grep
    return 2


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """kernelchat's own warnings (e.g. a model loaded in the command because the resident server's
    folder is unsafe) as one yellow line, not Python's file:line form; others as Python shows them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        Console(stderr=True).print(Text(f"kernelchat: {safe_text(str(message))}", style="yellow"), soft_wrap=True)
    else:  # as Python's own showwarning writes it, controls shown (a library may quote a server)
        (file or sys.stderr).write(safe_text(warnings.formatwarning(message, category, filename, lineno, line)))


OUT_OF_MEMORY = "ran out of memory (the process's limit or the machine's); free some memory or raise the limit"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.showwarning = show_warning
    if not logging.root.handlers:  # else Python's last resort writes warnings raw (names from a workspace)
        logging.root.addHandler(SafeLogHandler(logging.WARNING))
    try:
        if not argv or argv[0] not in SUBCOMMANDS:  # a prompt, or none (the chat), or --help / --version
            parser = prompt_parser()
            config.apply(parser, config.load_config())  # the file's values become the flags' defaults
        else:
            parser = build_parser(config.load_config() if argv[0] in ("exec", "run", "mcp") else None)
        args = parser.parse_args(argv)
    except UsageError as e:
        e.parser.print_usage(sys.stderr)
        return report(e.message, wants_json(argv))
    except ValueError as e:  # the configuration file: one sentence naming it and the key
        return report(str(e), wants_json(argv))
    except MemoryError:
        return report(OUT_OF_MEMORY, wants_json(argv))
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:  # bad input, a failed setup: one line, exit 2
        return report(str(e) or type(e).__name__, getattr(args, "json", False))
    except MemoryError:  # a file or a value too large for the memory this process may use
        return report(OUT_OF_MEMORY, getattr(args, "json", False))
    except KeyboardInterrupt:
        Console(stderr=True).print(Text("kernelchat: interrupted", style="yellow"))
        return 130


def run() -> NoReturn:
    """The `kernelchat` command (and `python -m agent`): `main`, then every kernel closed, then exit
    without the interpreter's teardown of torch and transformers, which measured 1.5 s of every
    one-shot's wall time (os._exit: no other exit handler runs, and none is needed once the output
    is flushed; a background fp16 packing simply stops with the process)."""
    from sandbox import close_all_kernels

    code = main()
    close_all_kernels()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
