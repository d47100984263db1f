"""Where kernelchat keeps its files, worked out in one place (the XDG base directories).

    config_dir()         $XDG_CONFIG_HOME/kernelchat, else ~/.config/kernelchat (prices.json)
    data_dir()           $XDG_DATA_HOME/kernelchat, else ~/.local/share/kernelchat (the chat's history)
    conversations_dir()  data_dir()/conversations
    cache_dir()          $KERNELCHAT_CACHE, else $XDG_CACHE_HOME/kernelchat, else ~/.cache/kernelchat
    runtime_dir()        $XDG_RUNTIME_DIR/kernelchat, else cache_dir()/run (models kept loaded)

Read on each call, not at import: tests and users set these variables after the import.
PrivateFolder holds a folder that must be this user's alone (the runtime folder) open.
"""

from __future__ import annotations

import os
import stat
import weakref
from pathlib import Path

from sandbox.safefs import kind

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


def overlaps(a: Path, b: Path) -> bool:
    """`a` and `b` (links resolved) are the same folder, or one lies inside the other."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a.is_relative_to(b) or b.is_relative_to(a)


class UnsafeFolder(RuntimeError):
    """A folder that must be this user's alone is not (or cannot be opened); one sentence."""


class PrivateFolder:
    """A folder of this user that nobody else can enter, held open: the names in it are reached
    through /proc/self/fd/N/NAME (`entry`), which no rename or swap of a folder above it redirects,
    and which stays short enough for a Unix socket's address."""

    FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

    def __init__(self, fd: int, path: Path) -> None:
        """`fd`: the folder, open (closed with this object); checked with fstat. `path`: for messages."""
        self.fd, self.path = fd, Path(path)
        self._close = weakref.finalize(self, os.close, fd)
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            self.close()
            raise UnsafeFolder(f"{path} is not a folder only this user can use (it is {oct(st.st_mode & 0o777)}, "
                               f"owner uid {st.st_uid}); remove it or set XDG_RUNTIME_DIR")
        if not os.path.isdir(self.entry(".")):
            self.close()
            raise UnsafeFolder(f"/proc is not mounted, so {path} cannot be held safely")

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> "PrivateFolder":
        """`path`, made 0700 first if `create` and missing; never through a link at its last name."""
        path = Path(path)
        try:
            if create and not os.path.lexists(path):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, cls.FLAGS)
        except OSError as e:
            try:
                found = kind(os.lstat(path))
            except OSError:
                found = None
            what = f"is {found}" if found not in (None, "a folder") else f"cannot be opened ({e.strerror})"
            raise UnsafeFolder(f"{path} {what}, where a folder only this user can use belongs; remove it or "
                               f"set XDG_RUNTIME_DIR") from None
        return cls(fd, path)

    def entry(self, name: str) -> str:
        return f"/proc/self/fd/{self.fd}/{name}"

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        """A descriptor of `name` in the folder, never through a link, never blocking on a FIFO."""
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove `name` if it is there."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self._close()
