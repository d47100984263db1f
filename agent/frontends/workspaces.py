"""What the front ends say about a temporary workspace once its chat is closed.

Closing a kernel removes the temporary workspace it made (workspace=None) unless the code left a
file there (data, a saved figure, a spilled output): then the folder stays, and the one-shot CLI
and the terminal chat print where ("files kept in /tmp/kernelchat-ws-..."). See Kernel.close.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from agent.frontends.render import safe_line


def kept_workspace(chat: Any) -> Path | None:
    """The temporary workspace that closing `chat` left in place because it holds files, if any."""
    kernel = chat.started_kernel
    return getattr(kernel, "kept_workspace", None) if kernel is not None else None


def say_kept_workspace(chat: Any, console: Console) -> None:
    """After `chat.close()`: print where a kept temporary workspace is (nothing when none was kept)."""
    path = kept_workspace(chat)
    if path is not None:
        console.print(Text(f"files kept in {safe_line(str(path))}", style="dim"), soft_wrap=True)


def close_chat(chat: Any, console: Console) -> None:
    """Close `chat` (its kernel), then say where a kept temporary workspace is."""
    chat.close()
    say_kept_workspace(chat, console)
