"""The `kernelchat` command line."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax


def _sandbox_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sandbox")
    g.add_argument("--isolation", choices=["bwrap", "none"], default=None,
                   help="bwrap (default where it runs) or none (trusted code only)")
    g.add_argument("--network", action="store_true", help="let the kernel reach the network")
    g.add_argument("--gpu", action="store_true", help="pass the NVIDIA devices through")
    g.add_argument("--workspace", default=None, help="the kernel's working folder (default: a temporary one)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per cell (default 120)")
    g.add_argument("--memory-mb", type=int, default=-1, help="memory limit for the kernel")


def _kernel_from(args: argparse.Namespace):
    from sandbox import Kernel

    return Kernel(workspace=args.workspace, isolation=args.isolation, network=args.network, gpu=args.gpu,
                  timeout=args.timeout, memory_mb=args.memory_mb)


def cmd_exec(args: argparse.Namespace) -> int:
    """Run Python in the sandbox and show what it produced."""
    console = Console()
    code = sys.stdin.read() if args.code == "-" else args.code
    with _kernel_from(args) as kernel:
        res = kernel.execute(code)
    if args.json:
        print(res.model_dump_json(indent=2))
        return 0 if res.ok else 1
    console.print(Panel(Syntax(code, "python", theme="ansi_dark"), title="cell", title_align="left"))
    body = res.stdout + (res.stderr if res.stderr else "")
    if res.result is not None:
        body += ("" if not body or body.endswith("\n") else "\n") + f"Out: {res.result}"
    if res.traceback:
        body += res.traceback
    for path in res.images:
        body += f"\n[image saved: {path}]"
    if res.message:
        body += f"\n{res.message}"
    style = "green" if res.ok else "red"
    from rich.text import Text

    console.print(Panel(Text(body.rstrip() or "(no output)"), border_style=style,
                        title=f"{res.status} in {res.duration * 1000:.0f} ms", title_align="left"))
    return 0 if res.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kernelchat", description=__doc__)
    sub = p.add_subparsers(dest="command")
    e = sub.add_parser("exec", help="run Python code in the sandboxed kernel")
    e.add_argument("code", help="the code, or - to read it from stdin")
    e.add_argument("--json", action="store_true", help="print the ExecResult as JSON")
    _sandbox_args(e)
    e.set_defaults(func=cmd_exec)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as e:
        Console(stderr=True).print(f"[red]kernelchat:[/red] {e}", markup=True, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
