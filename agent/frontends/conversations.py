"""Saved conversations: `kernelchat conversations` lists them, `kernelchat --resume [ID|PATH]` finds
one, and the terminal chat shows a loaded conversation's last exchanges."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.core import store
from agent.core.tree import Tree
from agent.frontends.render import safe_line


def one_line(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters (with an ellipsis)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def summary(path: Path) -> dict[str, Any]:
    """What the listing shows of one file; an unreadable one has `error` (and no traceback)."""
    info: dict[str, Any] = {"path": str(path), "size": path.stat().st_size,
                            "modified": datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds")}
    try:
        conv = store.load(path)
    except (ValueError, OSError, RecursionError) as e:  # store.ConversationError is a ValueError
        return {**info, "id": path.stem.rsplit("-", 1)[-1], "error": str(e)}
    tree = conv.tree
    prompts = [n.message.content or "" for n in tree.nodes.values() if n.message.role == "user"]
    first = min((n for n in tree.nodes.values() if n.message.role == "user"), key=lambda n: n.created, default=None)
    root = tree.nodes.get(tree.root) if tree.root else None
    return {**info, "id": conv.id, "created": root.created if root else info["modified"],
            "first_prompt": (first.message.content or "") if first else "", "model": conv.model,
            "cost_usd": round(conv.usage.cost_usd, 6), "prompts": len(prompts),
            "messages": sum(n.message.role != "system" for n in tree.nodes.values())}


def list_conversations(folder: Path | None = None) -> list[dict[str, Any]]:
    """Every conversation file in `folder` (default: the conversations folder), newest first."""
    folder = folder or store.conversations_dir()
    items = [summary(p) for p in folder.glob("*.json") if p.is_file()] if folder.is_dir() else []
    return sorted(items, key=lambda i: _when(i.get("created") or i["modified"]), reverse=True)


def _when(stamp: str) -> float:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except (ValueError, OverflowError, OSError):
        return 0.0


def _shown_date(stamp: str) -> str:
    """A creation time as the table shows it; the file's own text when it is not a time (a file
    written by hand or by another program must not break the listing)."""
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except (ValueError, OverflowError, OSError):
        return safe_line(one_line(stamp, 16))


def find_conversation(ref: str | None, folder: Path | None = None) -> Path:
    """The file `--resume` means: the newest readable conversation (no `ref`), a file path, or a
    conversation id or a unique prefix of one. ValueError, one sentence, when none or several match."""
    folder = folder or store.conversations_dir()
    if ref and (Path(ref).expanduser().is_file() or "/" in ref or ref.endswith(".json")):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ValueError(f"--resume {ref}: no such file; give a conversation file, an id, "
                             "or nothing for the newest")
        return path
    items = [i for i in list_conversations(folder) if "error" not in i]
    if not items:
        raise ValueError(f"--resume: no saved conversations in {folder}; start one with `kernelchat`")
    if not ref:
        return Path(items[0]["path"])
    exact = [i for i in items if i["id"] == ref]
    found = exact or [i for i in items if i["id"].startswith(ref)]
    if not found:
        raise ValueError(f"--resume {ref}: no conversation id starts with {ref!r} in {folder}; "
                         "`kernelchat conversations` lists them")
    if len(found) > 1:
        ids = ", ".join(i["id"] for i in found[:5])
        raise ValueError(f"--resume {ref}: {len(found)} conversations match ({ids}); give more of the id")
    return Path(found[0]["path"])


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.0f} KB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MB"


def cmd_conversations(args: argparse.Namespace) -> int:
    """`kernelchat conversations`: the saved conversations, newest first (or JSON with --json)."""
    folder = store.conversations_dir()
    items = list_conversations(folder)
    if args.json:
        print(json.dumps({"folder": str(folder), "conversations": items}, indent=2))
        return 0
    console = Console()
    if not items:
        console.print(Text(f"no saved conversations in {safe_line(str(folder))}"), soft_wrap=True)
        return 0
    table = Table(title=Text(f"conversations in {safe_line(str(folder))}"), title_justify="left", box=None,
                  pad_edge=False, header_style="bold")
    for col in ("id", "date", "first prompt", "model", "cost", "size"):
        table.add_column(col, no_wrap=col in ("id", "date", "cost"), min_width=14 if col == "first prompt" else None)
    for i in items:  # the files' text as Text: a prompt holding `[/INST]` or `[link=...]` is not markup
        if "error" in i:
            table.add_row(Text(safe_line(i["id"][:12])), i["modified"][:16].replace("T", " "),
                          Text(f"unreadable: {safe_line(Path(i['path']).name)}", style="red"), "", "", _size(i["size"]))
            continue
        table.add_row(Text(safe_line(one_line(i["id"], 20))), Text(_shown_date(i["created"])),  # ids: 12 characters
                      Text(safe_line(one_line(i["first_prompt"], 60))), Text(safe_line(i["model"])),
                      f"${i['cost_usd']:.4f}", f"{i['messages']} msg, {_size(i['size'])}")
    console.print(table)
    console.print(Text("resume one: kernelchat --resume ID (a prefix will do)", style="dim"))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("conversations", help="list the saved conversations, newest first")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p.set_defaults(func=cmd_conversations)


# -- after /load and --resume ------------------------------------------------------------------------


def last_exchanges(tree: Tree, n: int = 3, width: int = 200) -> list[tuple[int, str, str, str | None]]:
    """The last `n` turns of the active branch: (prompt number, prompt, answer, outcome), shortened;
    the outcome is None for an ordinary answer, else e.g. "max_steps: ...", "budget", "unfinished"."""
    path = tree.path()
    starts = [i for i, node in enumerate(path) if node.message.role == "user"]
    out = []
    for k, start in list(enumerate(starts))[-n:]:
        turn = path[start:starts[k + 1] if k + 1 < len(starts) else len(path)]
        answers = [m.message.content for m in turn if m.message.role == "assistant" and m.message.content]
        outcome = tree.turn_outcome(turn[-1].id)
        status = None
        if outcome is None:
            status = "unfinished"
        elif outcome.status != "answered":
            status = outcome.status + (f": {outcome.note}" if outcome.note else "")
        out.append((k + 1, one_line(turn[0].message.content or "", width),
                    one_line(answers[-1] if answers else "", width), status))
    return out


def show_loaded(console: Console, path: Path, chat: Any, n: int = 3) -> None:
    """After /load and --resume: how much was loaded, then the last `n` exchanges."""
    console.print(Text(f"loaded {safe_line(str(path))}: {len(chat.tree.user_nodes())} prompt(s) on the active "
                       f"branch, model {safe_line(chat.model)}; its cells are code from the file: the kernel "
                       "replays them on first use only if you allow it (they are shown first)",
                       style="yellow"), soft_wrap=True)
    show_last_exchanges(console, chat.tree, n)


def show_last_exchanges(console: Console, tree: Tree, n: int = 3) -> None:
    """Print the last exchanges, so that the user sees where the conversation stands."""
    for number, prompt, answer, status in last_exchanges(tree, n):
        console.print(Text.assemble(("You [", "green"), (str(number), "bold green"), ("]: ", "green"),
                                    safe_line(prompt)))
        if answer:
            console.print(Text.assemble(("  → ", "dim"), safe_line(answer)))
        if status:
            console.print(Text(f"  [{safe_line(status)}]", style="yellow"))


def resume_options(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """Chat.load's options for --resume: the conversation's own model and system prompt, unless
    --model / --system say otherwise (a default from KERNELCHAT_MODEL or the config file does not)."""
    drop = {"model"} if args.model is None or args.model == getattr(args, "config_model", None) else set()
    return {k: v for k, v in options.items() if k not in drop | ({"system"} if args.system is None else set())}
