"""Where kernelchat keeps its files, worked out in one place (the XDG base directories).

    config_dir()         $XDG_CONFIG_HOME/kernelchat, else ~/.config/kernelchat (prices.json)
    data_dir()           $XDG_DATA_HOME/kernelchat, else ~/.local/share/kernelchat (the chat's history)
    conversations_dir()  data_dir()/conversations
    cache_dir()          $KERNELCHAT_CACHE, else $XDG_CACHE_HOME/kernelchat, else ~/.cache/kernelchat
    runtime_dir()        $XDG_RUNTIME_DIR/kernelchat, else cache_dir()/run (models kept loaded)

Read on each call, not at import: tests and users set these variables after the import.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "kernelchat"


def xdg_home(variable: str, default: str) -> Path:
    """$variable if set (and not empty), else ~/`default`."""
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else Path.home() / default


def config_dir() -> Path:
    return xdg_home("XDG_CONFIG_HOME", ".config") / APP


def data_dir() -> Path:
    return xdg_home("XDG_DATA_HOME", ".local/share") / APP


def conversations_dir() -> Path:
    return data_dir() / "conversations"


def cache_dir() -> Path:
    if os.environ.get("KERNELCHAT_CACHE"):
        return Path(os.environ["KERNELCHAT_CACHE"]).expanduser()
    return xdg_home("XDG_CACHE_HOME", ".cache") / APP


def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/kernelchat (a per-user folder that goes at logout), else cache_dir()/run:
    the sockets of models kept loaded between commands (agent/models/resident.py)."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]).expanduser() / APP
    return cache_dir() / "run"
