"""Where kernelchat keeps its files, worked out in one place (the XDG base directories).

    config_dir()         $XDG_CONFIG_HOME/kernelchat, else ~/.config/kernelchat (prices.json)
    data_dir()           $XDG_DATA_HOME/kernelchat, else ~/.local/share/kernelchat (the chat's history)
    conversations_dir()  data_dir()/conversations
    cache_dir()          $KERNELCHAT_CACHE, else $XDG_CACHE_HOME/kernelchat, else ~/.cache/kernelchat

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
