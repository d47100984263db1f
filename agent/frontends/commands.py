"""Slash commands of the terminal chat: a pure parser (`parse`) and the handlers (`handle`).

The parser knows nothing about the chat, so it is unit-testable on its own; a bad command raises
CommandError with a one-line explanation and the conversation goes on.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree as RichTree

from agent.frontends.options import check_save_path
from agent.frontends.render import safe_line, safe_text

if TYPE_CHECKING:
    from agent.chat import Chat
    from agent.core.consent import FileCells
    from agent.core.events import Event


class ChatView(Protocol):
    """What the commands need of the terminal chat they run in (repl.Repl is one)."""

    chat: Chat
    console: Console
    confirm: bool  # --confirm: each cell is asked about before it runs

    def consent(self, cells: FileCells) -> bool:
        """Show cells from a file and ask once whether they may run."""

    def notice(self, text: str) -> None: ...

    def flush_notices(self) -> None: ...

    def start_edit(self, n: int, text: str) -> None: ...

    def run_turn(self, events: Iterator[Event]) -> None: ...

    def switch_model(self, name: str) -> None: ...

    def set_system(self, text: str) -> None: ...

    def load(self, path: Path) -> None: ...

    def quit(self) -> None: ...


class CommandError(ValueError):
    """A slash command that cannot run as typed; the message is one line for the user."""


@dataclass(frozen=True)
class Command:
    """A parsed slash command: its canonical name and its validated arguments."""

    name: str
    index: int | None = None          # /edit N (1-based, as shown in "You [N]")
    arg: str | None = None            # /switch ID, /model NAME, /system TEXT, /save PATH, /load PATH, ...
    fmt: str | None = None            # /export md|html|ipynb
    options: dict[str, Any] = field(default_factory=dict)  # /budget set key=value ...


# name: (usage, one-line help). The order is the order of /help.
COMMANDS: dict[str, tuple[str, str]] = {
    "edit": ("/edit [N]", "put prompt N (default: the last) back in the input; Enter regenerates on a new branch"),
    "undo": ("/undo", "step back over the last exchange (it stays in the tree)"),
    "retry": ("/retry", "regenerate the last answer as a new branch"),
    "branches": ("/branches [--all]", "the conversation tree, the active branch marked (--all: with the "
                 "replies set aside: tried, not taken)"),
    "switch": ("/switch ID", "make another branch (an id or unique prefix from /branches) the active one"),
    "tokens": ("/tokens", "tokens and cost per request and in total"),
    "budget": ("/budget [set KEY=VALUE ...]", "show the budget, or set max_usd, max_tokens, max_steps, max_seconds (none clears)"),
    "model": ("/model [NAME]", "show the model, or switch to another (gpt-4o-mini, hf:smollm2, ...)"),
    "system": ("/system [TEXT]", "show the system prompt, or replace it (the root of the tree: every branch)"),
    "save": ("/save [PATH]", "save the conversation (and after every message from now on)"),
    "load": ("/load PATH", "resume a saved conversation; its kernel is replayed"),
    "export": ("/export md|html|ipynb PATH", "write the conversation as Markdown, one HTML page or a notebook"),
    "kernel": ("/kernel restart|reset", "restart the kernel and replay the branch's cells, or start clean"),
    "files": ("/files", "the files in the kernel's workspace"),
    "tools": ("/tools", "the tools offered to the model (python, yours, MCP servers'), and the MCP servers"),
    "upload": ("/upload PATH", "copy a file or folder into the workspace"),
    "notebook": ("/notebook PATH", "run a Jupyter notebook's code cells on this branch; the model sees them"),
    "help": ("/help", "this list, and the keys"),
    "quit": ("/quit", "leave (Ctrl-D does too)"),
}
ALIASES = {"exit": "quit", "q": "quit", "h": "help", "?": "help", "e": "edit", "b": "branches"}
BUDGET_KEYS = {"max_usd": float, "max_tokens": int, "max_steps": int, "max_seconds": float}
_COMMAND_RE = re.compile(r"^/([A-Za-z?]+)(?:\s+(.*))?$", re.S)


def is_command(line: str) -> bool:
    """A slash command, not a prompt that happens to start with a path like /usr/bin."""
    return bool(_COMMAND_RE.match(line.strip()))


def _one_arg(name: str, rest: str, required: bool) -> str | None:
    if not rest:
        if required:
            raise CommandError(f"/{name} needs an argument: {COMMANDS[name][0]}")
        return None
    words = shlex.split(rest)
    if len(words) != 1:
        raise CommandError(f"/{name} takes one argument (quote paths with spaces): {COMMANDS[name][0]}")
    return words[0]


def _no_args(name: str, rest: str) -> None:
    if rest:
        raise CommandError(f"/{name} takes no arguments")


def _budget_options(rest: str) -> dict[str, Any]:
    words = rest.split()
    if words and words[0] == "set":
        words = words[1:]
        if not words:
            raise CommandError("/budget set needs KEY=VALUE, e.g. /budget set max_usd=0.5")
    out: dict[str, Any] = {}
    for w in words:
        key, eq, value = w.partition("=")
        if not eq:
            raise CommandError(f"/budget: expected KEY=VALUE, got {w!r} (e.g. max_usd=0.5)")
        if key not in BUDGET_KEYS:
            raise CommandError(f"/budget: unknown key {key!r}; use {', '.join(BUDGET_KEYS)}")
        if value.lower() in ("none", "off", ""):
            out[key] = None
            continue
        try:
            number = BUDGET_KEYS[key](value)
        except ValueError:
            raise CommandError(f"/budget: {key} must be a{'n integer' if BUDGET_KEYS[key] is int else ' number'}, "
                               f"got {value!r}") from None
        if number <= 0:
            raise CommandError(f"/budget: {key} must be positive (or none to clear it)")
        out[key] = number
    return out


def parse(line: str) -> Command:
    """Parse one slash command line; raises CommandError with a one-line explanation."""
    m = _COMMAND_RE.match(line.strip())
    if not m:
        raise CommandError(f"not a command: {line.strip()[:40]!r}; commands start with / (try /help)")
    name, rest = m.group(1).lower(), (m.group(2) or "").strip()
    name = ALIASES.get(name, name)
    if name not in COMMANDS:
        close = [c for c in COMMANDS if c.startswith(name[:2])]
        hint = f" (did you mean /{close[0]}?)" if close else ""
        raise CommandError(f"unknown command /{name}{hint}; /help lists them")
    try:
        return _parse(name, rest)
    except ValueError as e:  # shlex: unbalanced quotes
        if isinstance(e, CommandError):
            raise
        raise CommandError(f"/{name}: {e}") from None


def _parse(name: str, rest: str) -> Command:
    if name == "edit":
        if not rest:
            return Command("edit")
        if not rest.isdigit() or int(rest) < 1:
            raise CommandError(f"/edit takes a prompt number from 1 (as in You [N]), got {rest!r}")
        return Command("edit", index=int(rest))
    if name in ("system",):
        return Command(name, arg=rest or None)  # free text: no quoting needed
    if name in ("switch", "load", "upload", "notebook"):
        return Command(name, arg=_one_arg(name, rest, required=True))
    if name in ("model", "save"):
        return Command(name, arg=_one_arg(name, rest, required=False))
    if name == "export":
        words = shlex.split(rest)
        if len(words) != 2 or words[0] not in ("md", "html", "ipynb"):
            raise CommandError("/export needs a format and a path: /export md|html|ipynb PATH")
        return Command("export", fmt=words[0], arg=words[1])
    if name == "kernel":
        if rest not in ("restart", "reset"):
            raise CommandError("/kernel restart (replays the branch's cells) or /kernel reset (starts clean)")
        return Command("kernel", arg=rest)
    if name == "budget":
        return Command("budget", options=_budget_options(rest))
    if name == "branches":
        if rest not in ("", "--all"):
            raise CommandError(f"/branches takes no argument or --all, got {rest!r}")
        return Command("branches", arg=rest or None)
    _no_args(name, rest)
    return Command(name)


# -- handlers --------------------------------------------------------------------------------------


def handle(repl: ChatView, cmd: Command) -> None:
    """Run a parsed command against the terminal chat."""
    globals()[f"_do_{cmd.name}"](repl, cmd)


def _prompts(repl: ChatView) -> list[str]:
    return [n.message.content or "" for n in repl.chat.tree.user_nodes()]


def _do_edit(repl: ChatView, cmd: Command) -> None:
    prompts = _prompts(repl)
    if not prompts:
        raise CommandError("there is no prompt to edit yet")
    n = cmd.index or len(prompts)
    if n > len(prompts):
        raise CommandError(f"there is no prompt {n}: this branch has prompts 1 to {len(prompts)}")
    repl.start_edit(n, prompts[n - 1])


def _do_undo(repl: ChatView, cmd: Command) -> None:
    if not _prompts(repl):
        raise CommandError("nothing to undo")
    repl.chat.undo()
    repl.notice(f"undone: back at prompt {len(_prompts(repl))} (the old exchange stays in /branches)")


def _do_retry(repl: ChatView, cmd: Command) -> None:
    if not _prompts(repl):
        raise CommandError("nothing to retry yet")
    repl.run_turn(repl.chat.retry_events())


def _do_branches(repl: ChatView, cmd: Command) -> None:
    repl.console.print(branch_tree(repl.chat, all=cmd.arg == "--all"))


def branch_tree(chat, all: bool = False) -> RichTree:  # noqa: A002 - /branches --all
    """A compact tree: the prompts (You [N]) and each branch's end, the active path in bold; the
    branches set aside (tried, not taken: a small model's attempts) folded into a count under their
    prompt unless `all`."""
    tree = chat.tree
    active = {n.id for n in tree.path()}
    leaves = {n.id for n in tree.leaves()} | {tree.leaf}
    folds = {} if all else tree.folds()
    hidden = set().union(*(f.nodes for f in folds.values()))
    root = RichTree(Text("conversation", style="bold"), guide_style="dim")

    def walk(node_id: str, parent: RichTree, depth: int) -> None:
        for child in sorted(tree.children(node_id), key=lambda n: n.created):
            if child.id in hidden:
                continue
            branch, d = parent, depth
            on = child.id in active
            if child.message.role == "user":
                d = depth + 1
                text = safe_line((child.message.content or "").strip().replace("\n", " "))
                label = Text(f"You [{d}] ", style="green" if on else "dim") + \
                    Text(text[:70] + ("…" if len(text) > 70 else ""), style="bold" if on else "")
                aside = folds[child.id].count if child.id in folds else 0
                if aside:
                    label += Text(f"  (+{aside} attempt{'s' * (aside > 1)} not taken: /branches --all)",
                                  style="dim")
                branch = parent.add(label)
            if child.id in leaves:
                msg = child.message
                last = (msg.content or (f"[{len(msg.tool_calls)} tool call(s)]" if msg.tool_calls else "")).strip()
                last = safe_line(last.replace("\n", " "))
                mark = "● " if child.id == tree.leaf else "○ "
                outcome = tree.turn_outcome(child.id)
                status = Text("") if outcome is None or outcome.status == "answered" else \
                    Text(f"  [{outcome.status}]", style="yellow")
                branch.add(Text(mark + safe_line(child.id), style="bold cyan" if child.id == tree.leaf else "cyan") +
                           status + Text(f"  {last[:60]}", style="dim"))
            walk(child.id, branch, d)

    if tree.root is not None:
        walk(tree.root, root, 0)
    return root


def _do_switch(repl: ChatView, cmd: Command) -> None:
    repl.chat.switch(cmd.arg)
    repl.flush_notices()
    prompts = _prompts(repl)
    repl.notice(f"switched to {repl.chat.tree.leaf}: {len(prompts)} prompt(s)"
                + (f", the last: {prompts[-1][:60]!r}" if prompts else ""))


def _do_tokens(repl: ChatView, cmd: Command) -> None:
    usages = repl.chat.tracker.usages
    t = Table(title="tokens per request", title_justify="left", show_footer=True)
    total = repl.chat.usage
    t.add_column("#", footer="total")
    t.add_column("prompt", justify="right", footer=f"{total.prompt_tokens:,}")
    t.add_column("cached", justify="right", footer=f"{total.cached_tokens:,}")
    t.add_column("completion", justify="right", footer=f"{total.completion_tokens:,}")
    t.add_column("seconds", justify="right", footer=f"{total.seconds:.1f}")
    t.add_column("cost", justify="right", footer=f"${total.cost_usd:.4f}")
    for i, u in enumerate(usages, 1):
        t.add_row(str(i), f"{u.prompt_tokens:,}", f"{u.cached_tokens:,}", f"{u.completion_tokens:,}",
                  f"{u.seconds:.1f}", f"${u.cost_usd:.4f}")
    repl.console.print(t)


def _do_budget(repl: ChatView, cmd: Command) -> None:
    from agent.core.budget import Budget

    tracker = repl.chat.tracker
    if cmd.options:
        tracker.budget = Budget(**{**tracker.budget.model_dump(), **cmd.options})
    b, spent = tracker.budget, tracker.spent
    t = Table(title="budget", title_justify="left",
              caption="max_seconds counts time spent in model requests and cells (replays included), "
                      "not time at the prompt", caption_justify="left")
    for col in ("limit", "max", "spent", "left"):
        t.add_column(col, justify="left" if col == "limit" else "right")
    rows = [("max_usd", b.max_usd, spent.cost_usd, "${:.4f}"), ("max_tokens", b.max_tokens, spent.total_tokens, "{:,}"),
            ("max_steps", b.max_steps, tracker.steps, "{:,}"), ("max_seconds", b.max_seconds, tracker.elapsed, "{:.0f}")]
    for key, limit, used, f in rows:
        t.add_row(key, "none" if limit is None else f.format(limit), f.format(used),
                  "-" if limit is None else f.format(max(limit - used, 0)))
    repl.console.print(t)


def model_names() -> list[str]:
    """What /model completes: the priced models and the embedded one."""
    from agent.models import EMBEDDED, prices

    return sorted({EMBEDDED, *prices()})


def _do_model(repl: ChatView, cmd: Command) -> None:
    if cmd.arg is None:
        repl.notice(f"model: {repl.chat.model} (switch with /model NAME)")
        return
    repl.switch_model(cmd.arg)


def _do_system(repl: ChatView, cmd: Command) -> None:
    chat = repl.chat
    if cmd.arg is None:
        from rich.panel import Panel

        repl.console.print(Panel(Text(safe_text(chat.system)), title="system prompt", title_align="left",
                                 border_style="dim"))
        return
    repl.set_system(cmd.arg)
    repl.notice("system prompt replaced (the root of the tree: every branch uses it from the next request on)")


def _do_save(repl: ChatView, cmd: Command) -> None:
    path = repl.chat.save(check_save_path(cmd.arg, "/save") if cmd.arg else None)
    repl.notice(f"saved: {path}")


def _do_load(repl: ChatView, cmd: Command) -> None:
    path = Path(cmd.arg).expanduser()
    if not path.is_file():
        raise CommandError(f"no conversation file at {str(path)!r}")
    repl.load(path)


def _do_export(repl: ChatView, cmd: Command) -> None:
    path = repl.chat.export(cmd.fmt, check_save_path(cmd.arg, "/export"))
    repl.notice(f"exported: {path}")


def _do_kernel(repl: ChatView, cmd: Command) -> None:
    chat = repl.chat
    if chat.started_kernel is None:  # started lazily: nothing to restart yet
        repl.notice("the kernel has not started yet; it starts with the first cell")
        return
    # A line, not a spinner: the replay may first ask about a loaded file's cells, at a prompt of its own.
    repl.console.print(Text(f"kernel {safe_line(cmd.arg)}…", style="dim"))
    chat.restart_kernel("replay" if cmd.arg == "restart" else "reset")  # "restart" used to reset it
    repl.flush_notices()
    repl.notice("kernel restarted" + (", the branch's cells replayed" if cmd.arg == "restart" else ", clean"))


def _do_files(repl: ChatView, cmd: Command) -> None:
    kernel = repl.chat.kernel()
    files = kernel.files()
    repl.console.print(Text(safe_line(str(kernel.workspace)), style="bold"))
    if not files:
        repl.console.print(Text("  (empty)", style="dim"))
    for f in files:  # names the sandbox chose: one line each, controls shown
        repl.console.print(Text("  " + safe_line(f)))


def _do_tools(repl: ChatView, cmd: Command) -> None:
    table = Table(box=None, show_header=True, header_style="bold")
    table.add_column("tool")
    table.add_column("what it does")
    for name, tool in repl.chat.all_tools().items():  # MCP servers' names and descriptions: shown inert
        about = tool.schema.get("function", {}).get("description", "")
        table.add_row(Text(safe_line(name)), Text(safe_line(about.splitlines()[0] if about else "")[:100]))
    repl.console.print(table)
    for server, runs, status in (repl.chat.mcp.describe() if repl.chat.mcp else []):
        style = "green" if status == "running" else "red"
        repl.console.print(Text.assemble(("MCP server ", "dim"), safe_line(server), " ", (safe_line(runs), "dim"),
                                         ": ", (safe_line(status), style)))


def _do_upload(repl: ChatView, cmd: Command) -> None:
    target = repl.chat.kernel().upload(cmd.arg)
    repl.notice(f"uploaded: {target}")


def _do_notebook(repl: ChatView, cmd: Command) -> None:
    from agent.core.consent import FileCells
    from agent.core.notebook_import import notebook_cells, notebook_events

    cells = notebook_cells(cmd.arg)  # a bad file: one sentence naming it, before anything is added
    # Someone else's code: shown and asked about once (with --confirm, each cell is asked about instead).
    if cells and not repl.confirm and not repl.consent(FileCells(cells, cmd.arg, repl.chat.workspace)):
        repl.notice("the notebook's cells were not run, and nothing was added to the conversation")
        return
    repl.run_turn(notebook_events(repl.chat, cmd.arg))


def _do_help(repl: ChatView, cmd: Command) -> None:
    t = Table(show_header=False, box=None, padding=(0, 2))
    for usage, text in COMMANDS.values():
        t.add_row(Text(usage, style="cyan"), text)
    repl.console.print(t)
    repl.console.print(escape(KEYS_HELP), style="dim", highlight=False)


KEYS_HELP = ("Keys: Enter sends · Esc-Enter (Alt-Enter) new line · ↑/↓ history · Ctrl-R search · Tab completes · "
             "Ctrl-C stops the answer or the running cell · Ctrl-D leaves")


def _do_quit(repl: ChatView, cmd: Command) -> None:
    repl.quit()
