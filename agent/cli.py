"""The `kernelchat` command line.

    kernelchat                                   the terminal chat (same flags as the one shot)
    kernelchat "What is 2**100? Use Python."     one shot: the answer, with each cell and its output
    kernelchat exec "print(1)"                   run code in the sandbox
    kernelchat tokens REQUEST.json --model M     count a request's prompt tokens
    kernelchat models                            what models are configured and available
    kernelchat run TASK.toml [MORE.toml ...]     run task files, check the outcomes, write a report
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from .render import safe_line, safe_text


def gateway_options(args: argparse.Namespace) -> dict:
    """Kernel options for --gateway URL / --gateway-token (else KERNELCHAT_GATEWAY_URL / _TOKEN)."""
    if getattr(args, "gateway", None) or getattr(args, "isolation", None) == "gateway":
        return {"isolation": "gateway", "gateway_url": args.gateway, "gateway_token": args.gateway_token}
    return {}


def _sandbox_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sandbox")
    g.add_argument("--isolation", choices=["bwrap", "none", "gateway"], default=None,
                   help="bwrap (default where it runs), none (trusted code only), or gateway (see --gateway)")
    g.add_argument("--gateway", metavar="URL", default=None,
                   help="run the kernel on a Jupyter Kernel Gateway / Enterprise Gateway (implies --isolation gateway)")
    g.add_argument("--gateway-token", metavar="TOKEN", default=None,
                   help="the gateway's auth token (or KERNELCHAT_GATEWAY_TOKEN)")
    g.add_argument("--network", action="store_true", help="let the kernel reach the network")
    g.add_argument("--gpu", action="store_true", help="pass the NVIDIA devices through")
    g.add_argument("--workspace", default=None, help="the kernel's working folder (default: a temporary one)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per cell (default 120)")
    g.add_argument("--memory-mb", type=int, default=-1, help="memory limit for the kernel")
    g.add_argument("--disk-mb", type=int, default=-1,
                   help="disk quota for the workspace (default: what it holds plus 25%% of the free space)")


def _kernel_from(args: argparse.Namespace):
    from sandbox import Kernel

    return Kernel(**{**dict(workspace=args.workspace, isolation=args.isolation, network=args.network, gpu=args.gpu,
                            timeout=args.timeout, memory_mb=args.memory_mb, disk_mb=args.disk_mb),
                **gateway_options(args)})


def cmd_exec(args: argparse.Namespace) -> int:
    """Run Python in the sandbox and show what it produced (the kernel's control codes made visible)."""
    from .render import code_panel

    console = Console()
    code = sys.stdin.read() if args.code == "-" else args.code
    with _kernel_from(args) as kernel:
        res = kernel.execute(code)
    if args.json:
        print(json.dumps(res.model_dump(mode="json"), indent=2))  # ASCII only: no raw C1 or bidi control
        return 0 if res.ok else 1
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
    return 0 if res.ok else 1


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None,
                   help="gpt-4o-mini, openai:NAME, hf:smollm2 (default without OPENAI_API_KEY), hf:NAME, a folder or .gguf")
    g.add_argument("--base-url", default=None, help="an OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...)")
    g.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY")
    g.add_argument("--system", default=None, help="replace the default system prompt")
    b = p.add_argument_group("budget")
    b.add_argument("--max-steps", type=int, default=10, help="model requests per prompt (default 10)")
    b.add_argument("--max-tokens", type=int, default=None, help="token budget for the conversation")
    b.add_argument("--max-usd", type=float, default=None, help="money budget in USD")
    b.add_argument("--max-seconds", type=float, default=None, help="time budget")
    p.add_argument("--confirm", action="store_true", help="ask before each cell runs: run, skip, or edit it")


def _chat_from(args: argparse.Namespace):
    from .budget import Budget
    from .chat import Chat

    budget = Budget(max_tokens=args.max_tokens, max_usd=args.max_usd, max_seconds=args.max_seconds)
    sandbox = {**dict(workspace=args.workspace, isolation=args.isolation, network=args.network, gpu=args.gpu,
                      timeout=args.timeout, memory_mb=args.memory_mb, disk_mb=args.disk_mb),
                **gateway_options(args)}
    return Chat(args.model, system=args.system, base_url=args.base_url, api_key=args.api_key, budget=budget,
                max_steps=args.max_steps, progress=not getattr(args, "json", False), **sandbox)


def check_save_path(path: str | Path, what: str = "--save") -> Path:
    """Where a conversation is to be saved, checked before a model loads or anything runs: a file
    (not a folder) whose folder exists or can be made, and can be written (probed for real: as root,
    permission bits say nothing). Raises ValueError with one sentence."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{what} {path}: that is a folder; give a file name, e.g. {p / 'conversation.json'}")
    if p.is_symlink() or (p.exists() and not p.is_file()):
        raise ValueError(f"{what} {path}: that is not a regular file; give another file name")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:  # the folders still to be made
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{what} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".kernelchat-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write in {folder} ({e.strerror or e})") from None
    return p


def conversation_path(chat, save: str | Path | None) -> Path:
    """Point `chat` at its file without writing it: the file appears with the first prompt, so a
    run that never got that far (a model that fails to load, a kernel or budget refusal) leaves none."""
    from . import store

    chat.path = Path(save).expanduser() if save else store.conversations_dir() / f"{chat.id}.json"
    return chat.path


def cmd_prompt(args: argparse.Namespace) -> int:
    """One shot: run the loop on PROMPT and print the answer (with each cell), or one JSON object."""
    from .budget import BudgetExceeded
    from .events import AnswerEvent, ToolResultEvent
    from .render import EventPrinter

    if args.save and not args.no_save:
        check_save_path(args.save)  # before a model loads: a bad path is a one-line error at once
    if args.prompt is None:  # no prompt: the terminal chat, with the same flags
        if args.json:
            raise ValueError("--json needs a prompt")
        from .repl import main as chat_main

        return chat_main(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    printer = None if args.json else EventPrinter(Console(stderr=False))
    calls: list[dict] = []
    answer, steps, stopped = "", 0, None
    with _chat_from(args) as chat:
        if args.confirm:  # ask before each cell, as the terminal chat does
            from .repl import confirm_cell

            chat.approve = confirm_cell
        path = None if args.no_save else conversation_path(chat, args.save)
        existed = path is not None and path.exists()
        try:
            for ev in chat.run(prompt):
                if printer:
                    printer(ev)
                if isinstance(ev, ToolResultEvent):
                    calls.append({"name": ev.name, "code": ev.code, "status": ev.status, "output": ev.output,
                                  "images": ev.images})
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
            Console(stderr=True).print(Text(f"saved: {safe_line(str(chat.path))}", style="dim"))
    return 3 if stopped else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kernelchat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    e = sub.add_parser("exec", help="run Python code in the sandboxed kernel")
    e.add_argument("code", help="the code, or - to read it from stdin")
    e.add_argument("--json", action="store_true", help="print the ExecResult as JSON")
    _sandbox_args(e)
    e.set_defaults(func=cmd_exec)
    from .cli_models import register as register_model_commands  # `tokens`, `models`

    register_model_commands(sub)
    from .runner import register as register_run  # `run TASK.toml ...`

    register_run(sub)
    return p


def prompt_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kernelchat", description="Ask a question; the model answers, running "
                                "Python in a sandboxed kernel. Subcommands: exec, tokens, models, run (see "
                                "`kernelchat SUBCOMMAND --help`).")
    p.add_argument("prompt", nargs="?", default=None,
                   help="the question (- reads it from stdin); without one, the terminal chat opens")
    p.add_argument("--json", action="store_true", help="print one JSON object: answer, steps, tool_calls, usage")
    p.add_argument("--save", default=None, help="where to save the conversation (default: the conversations folder)")
    p.add_argument("--no-save", action="store_true", help="do not save the conversation")
    _model_args(p)
    _sandbox_args(p)
    p.set_defaults(func=cmd_prompt)
    return p


SUBCOMMANDS = {"exec", "tokens", "models", "run"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        args = prompt_parser().parse_args(argv)  # no prompt at all: the terminal chat
    else:
        args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:  # bad input, a failed setup: one line, exit 2
        message = safe_text(str(e) or type(e).__name__)
        Console(stderr=True).print(Text.assemble(("kernelchat:", "red"), " ", message))
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print(Text("kernelchat: interrupted", style="yellow"))
        return 130


if __name__ == "__main__":
    sys.exit(main())
