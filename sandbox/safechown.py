"""Handing a workspace to another uid and back without following anything the sandbox planted
(see `safefs` for the approach): `chown_tree`, `restore_mode`."""

from __future__ import annotations

import ctypes
import os
import stat
from pathlib import Path

from .safefs import MAX_ENTRIES, Walk, lstat_at, open_root

_AT_EMPTY_PATH = 0x1000

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _fchownat = _libc.fchownat
    _fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
except (OSError, AttributeError):  # not glibc/musl: fall back to by-name, no-follow chown
    _fchownat = None


def _chown_fd(fd: int, uid: int, gid: int) -> None:
    """Change the owner of what an O_PATH descriptor names (a link itself, a FIFO: never opened)."""
    if _fchownat(fd, b"", uid, gid, _AT_EMPTY_PATH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _chown_entry(dir_fd: int, name: str, uid: int, gid: int, from_uid: int | None, hard_linked: bool) -> None:
    if _fchownat is None:
        st = lstat_at(dir_fd, name)
        if st is not None and _should_chown(st, uid, from_uid, hard_linked):
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        return
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)  # of the object we hold: a swap after this changes nothing
        if _should_chown(st, uid, from_uid, hard_linked):
            _chown_fd(fd, uid, gid)
    finally:
        os.close(fd)


def _should_chown(st: os.stat_result, uid: int, from_uid: int | None, hard_linked: bool) -> bool:
    if st.st_uid == uid or (from_uid is not None and st.st_uid != from_uid):
        return False
    # A file with several hard links may have a twin outside the workspace (a host file): it is
    # never given to the sandbox; handing back what the sandbox owns (`hard_linked`) may move it.
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
        return hard_linked and from_uid is not None and from_uid != 0
    return True


def chown_tree(root: Path, uid: int, gid: int, *, from_uid: int | None = None, hard_linked: bool = False) -> None:
    """Give `root` and everything below it to uid:gid without following any link, even one
    swapped in during the walk (each entry is opened O_PATH|O_NOFOLLOW relative to its folder's
    descriptor and changed through that descriptor). With `from_uid`, only entries owned by that
    uid change. Files with several hard links change hands only with `hard_linked` (handing back
    what the sandbox owns), never towards the sandbox. Errors on single entries are skipped.
    The kernel clears set-uid/set-gid bits of files whose owner changes."""
    try:
        fd = open_root(root)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if _should_chown(st, uid, from_uid, hard_linked):
            os.fchown(fd, uid, gid)
        for dir_fd, _, name, seen in Walk(fd, max_entries=10 * MAX_ENTRIES):
            if not _should_chown(seen, uid, from_uid, hard_linked):  # a cheap first look; _chown_entry decides
                continue
            try:
                _chown_entry(dir_fd, name, uid, gid, from_uid, hard_linked)
            except OSError:
                pass
    finally:
        os.close(fd)


def restore_mode(root: Path, mode: int) -> None:
    """Set the workspace folder's own permission bits back (not following a link)."""
    try:
        fd = open_root(root)
    except OSError:
        return
    try:
        os.fchmod(fd, mode)
    except OSError:
        pass
    finally:
        os.close(fd)
