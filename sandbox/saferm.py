"""Removing a folder tree that sandboxed code shaped: iterative, a few descriptors at any depth,
no link followed, folders the code locked opened up first.

`shutil.rmtree` (Python 3.11) recurses once per folder level and holds a descriptor per level, so a
few thousand nested folders raise RecursionError (or run out of descriptors), and a plain user's
cannot enter or empty a folder the code made mode 000 or 500. Here a folder is emptied from the top:
its files are unlinked, and each subfolder's own subfolders are moved up into it (a rename under a
fresh name, inside the same tree) before the emptied subfolder is removed. So the depth never grows
the stack or the descriptors held (three at most), and each entry is moved at most once.

Every step is relative to a folder descriptor opened `O_NOFOLLOW`: a link is unlinked, never
followed, and nothing outside the tree is touched. A real folder the host's user owns (any, as
root) that refuses entry or change gets `u+rwx` first (never the tree's parent). What cannot go is
counted, and said in one sentence (`Removal.sentence`); nothing raises.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kernelchat.sandbox")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
BATCH = 4096  # names read from a folder at a time (a folder of millions never sits in memory)
MAX_STUCK = 10_000  # entries of one folder that would not go: past this, the removal gives up


@dataclass
class Removal:
    """What `remove_tree` did: entries removed, entries that would not go, the first reason."""

    path: str
    removed: int = 0
    left: int = 0
    reason: str = ""

    @property
    def complete(self) -> bool:
        return self.left == 0

    def sentence(self) -> str:
        """The one sentence a caller says when something is left ("" when all went)."""
        if self.complete:
            return ""
        what = "1 entry" if self.left == 1 else f"{self.left:,} entries"
        return (f"could not remove {what} under {self.path} ({self.reason or 'unknown reason'}); "
                "remove it by hand")


def _mine(st: os.stat_result) -> bool:
    return os.geteuid() == 0 or st.st_uid == os.geteuid()


def _open_up(dir_fd: int | None, name: str | Path) -> bool:
    """Give the host's user rwx on the real folder `name` (never a link: lstat, and chmod without
    following); False when it is not a folder of this user or cannot be changed."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or not _mine(st):
            return False
        os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except (OSError, NotImplementedError):
        return False


class _Remover:
    def __init__(self, path: str):
        self.result = Removal(path)
        self.prefix, self.count = f".kc-rm-{secrets.token_hex(4)}-", 0

    def fail(self, e: OSError) -> None:
        self.result.left += 1
        if not self.result.reason:
            self.result.reason = (e.strerror or type(e).__name__).lower()

    def open_folder(self, dir_fd: int | None, name: str | Path) -> int | None:
        """A descriptor of folder `name` that this user may list and change (opened up if needed)."""
        try:
            fd = os.open(name, _DIR, dir_fd=dir_fd)
        except PermissionError as e:
            if not _open_up(dir_fd, name):
                self.fail(e)
                return None
            try:
                fd = os.open(name, _DIR, dir_fd=dir_fd)
            except OSError as e2:
                self.fail(e2)
                return None
        except OSError as e:  # a link or a file in its place (swapped): counted, not followed
            self.fail(e)
            return None
        try:
            st = os.fstat(fd)
            if os.geteuid() != 0 and st.st_mode & 0o700 != 0o700 and _mine(st):
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)  # 500 or 600: not emptied otherwise
        except OSError:
            pass
        return fd

    def names(self, fd: int, skip: set[str]) -> list[tuple[str, bool]] | None:
        """Up to BATCH (name, is a real folder) of `fd`, leaving out `skip`; None: it cannot be listed."""
        out: list[tuple[str, bool]] = []
        try:
            with os.scandir(fd) as it:  # closing it rewinds: the next call starts over
                for e in it:
                    if e.name in skip:
                        continue
                    try:
                        is_dir = e.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    out.append((e.name, is_dir))
                    if len(out) >= BATCH:
                        break
        except OSError as e:
            self.fail(e)
            return None
        return out

    def unlink(self, dir_fd: int, name: str) -> bool:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return True
        except OSError as e:  # EISDIR too: listed as a file, a folder now (only while code runs)
            self.fail(e)
            return False
        self.result.removed += 1
        return True

    def move_up(self, sub: int, name: str, top: int) -> bool:
        """Folder `name` of `sub` moved into `top` under a fresh name (a link is never followed:
        rename acts on the name)."""
        for attempt in range(2):
            self.count += 1
            try:
                os.rename(name, f"{self.prefix}{self.count}", src_dir_fd=sub, dst_dir_fd=top)
                return True
            except FileNotFoundError:
                return True
            except PermissionError as e:  # moving a folder changes its `..`: it must be writable
                if attempt or not _open_up(sub, name):
                    self.fail(e)
                    return False
            except OSError as e:
                self.fail(e)
                return False
        return False

    def pull_up(self, top: int, name: str) -> bool:
        """Remove folder `name` of `top`: its files go, its folders move up into `top`."""
        try:
            os.rmdir(name, dir_fd=top)
            self.result.removed += 1
            return True
        except FileNotFoundError:
            return True
        except NotADirectoryError:
            return self.unlink(top, name)
        except OSError:
            pass  # not empty, or locked: open it up and empty it
        sub = self.open_folder(top, name)
        if sub is None:
            return False
        try:
            stuck = self.empty(sub, into=top)
        finally:
            os.close(sub)
        if stuck:
            return False
        try:
            os.rmdir(name, dir_fd=top)
        except OSError as e:
            self.fail(e)
            return False
        self.result.removed += 1
        return True

    def empty(self, fd: int, into: int | None = None) -> int:
        """Empty folder `fd`: files unlinked; folders moved into `into` when given, else removed
        (pulled up into `fd` itself). Returns how many entries would not go."""
        stuck: set[str] = set()
        while len(stuck) <= MAX_STUCK:
            batch = self.names(fd, stuck)
            if batch is None:  # counted already
                return len(stuck) + 1
            if not batch:
                break
            for name, is_dir in batch:
                if not is_dir:
                    ok = self.unlink(fd, name)
                else:
                    ok = self.move_up(fd, name, into) if into is not None else self.pull_up(fd, name)
                if not ok:
                    stuck.add(name)
        return len(stuck)


def remove_tree(root: str | os.PathLike) -> Removal:
    """Remove `root` and everything below it (see the module's doc); never raises for what is
    there. A link or a file at `root` itself is unlinked."""
    path = os.path.abspath(root)
    r = _Remover(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return r.result
    except OSError as e:
        r.fail(e)
        return r.result
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(path)
            r.result.removed += 1
        except OSError as e:
            r.fail(e)
        return r.result
    fd = r.open_folder(None, path)
    if fd is None:
        return r.result
    try:
        r.empty(fd)
    finally:
        os.close(fd)
    if r.result.complete:
        try:
            os.rmdir(path)
            r.result.removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            r.fail(e)
    return r.result


def remove_or_say(root: str | os.PathLike) -> bool:
    """`remove_tree`, and one warning when something is left; True when `root` is gone."""
    done = remove_tree(root)
    if not done.complete:
        log.warning("%s", done.sentence())
    return done.complete
