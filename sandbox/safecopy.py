"""Copying files and folders into and out of a workspace without following anything the
sandbox planted, with the primitives of `safefs`."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath

from .safefs import (MAX_DEPTH, MAX_ENTRIES, FileTooLarge, NotFound, Owner, UnsafePath, kind, lstat_at,
                     open_dir, open_file_at, open_root, open_subdir, parts, read_upto, refused, replace_at,
                     shown_path)

log = logging.getLogger("kernelchat.sandbox.safefs")


@dataclass
class Copied:
    """What a copy did: the relative path it wrote, and what it skipped (links, FIFOs, ...)."""

    path: str
    skipped: list[str]


def _copy_fd(fd: int, st: os.stat_result, dst_dir: int, dst_name: str, owner: Owner | None, shown: str) -> None:
    replace_at(dst_dir, dst_name, read_upto(fd, st.st_size), mode=st.st_mode & 0o777, owner=owner,
               times_ns=(st.st_atime_ns, st.st_mtime_ns), shown=shown)


def _copy_file_at(src_dir: int, name: str, dst_dir: int, dst_name: str, owner: Owner | None, shown: str) -> None:
    fd, st = open_file_at(src_dir, name, shown)
    try:
        _copy_fd(fd, st, dst_dir, dst_name, owner, shown)
    finally:
        os.close(fd)


def _copy_dir_at(src: int, dst: int, owner: Owner | None, rel: str, skipped: list[str],
                 budget: list[int], depth: int = 0) -> None:
    """Copy the regular files and folders of `src` into `dst`; everything else is skipped."""
    if depth > MAX_DEPTH:
        skipped.append(rel + "/ (too deep)")
        return
    with os.scandir(src) as it:
        entries = []
        for e in it:
            budget[0] -= 1
            if budget[0] < 0:
                raise FileTooLarge(f"more than {MAX_ENTRIES:,} entries to copy; copy a smaller folder")
            entries.append(e.name)
    for name in sorted(entries):
        shown = f"{rel}/{name}" if rel else name
        st = lstat_at(src, name)
        try:
            if st is not None and stat.S_ISDIR(st.st_mode):
                s = open_subdir(src, name, shown, False, None)
                try:
                    d = open_subdir(dst, name, shown, True, owner)
                    try:
                        _copy_dir_at(s, d, owner, shown, skipped, budget, depth + 1)
                    finally:
                        os.close(d)
                finally:
                    os.close(s)
            elif st is not None and stat.S_ISREG(st.st_mode):
                _copy_file_at(src, name, dst, name, owner, shown)
            else:
                skipped.append(f"{shown} ({kind(st) if st else 'gone'})")
        except (UnsafePath, NotFound) as e:  # swapped or removed while copying
            skipped.append(f"{shown} ({e})")


def _log_skipped(what: str, skipped: list[str]) -> None:
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning("%s: skipped what is not a regular file or folder: %s%s", what, ", ".join(skipped[:5]), more)


def copy_in(src: Path, root: Path, relpath: str | PurePath, *, owner: Owner | None = None) -> Copied:
    """Copy the host file or folder `src` to `relpath` under `root`.

    Source: `src` itself may be a link (the user named it); inside a folder, links, FIFOs,
    sockets and devices are skipped (logged, and listed in the result), never followed or opened.
    Destination: folders walked with O_NOFOLLOW (a planted link: `UnsafePath`); each file is
    written under a temporary name and renamed over whatever the sandbox put at its name.
    A file copied onto an existing real folder lands inside it, as `cp` does."""
    src = Path(src).expanduser()
    try:
        st = os.stat(src)
    except OSError:
        raise NotFound(f"cannot upload {str(src)!r}: no such file or folder") from None
    names = parts(relpath)
    skipped: list[str] = []
    if stat.S_ISDIR(st.st_mode):
        sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            dfd = open_dir(root, "/".join(names), create=True, owner=owner)
            try:
                _copy_dir_at(sfd, dfd, owner, "", skipped, [MAX_ENTRIES])
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        _log_skipped(f"upload of {src}", skipped)
        return Copied("/".join(names), skipped)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"cannot upload {str(src)!r}: it is {kind(st)}, not a regular file or folder")
    # The user named `src` (a link there is theirs to follow); O_NONBLOCK and fstat: only a file.
    fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"cannot upload {str(src)!r}: it is {kind(st)}, not a regular file or folder")
        folders, name = (names[:-1], names[-1]) if names else ([], src.name)
        dfd = open_dir(root, "/".join(folders), create=True, owner=owner)
        try:
            there = lstat_at(dfd, name)
            if there is not None and stat.S_ISDIR(there.st_mode):  # into the folder, as cp does
                inner = open_subdir(dfd, name, shown_path([*folders, name]), False, None)
                os.close(dfd)
                dfd, folders, name = inner, [*folders, name], src.name
            _copy_fd(fd, st, dfd, name, owner, shown_path([*folders, name]))
        finally:
            os.close(dfd)
    finally:
        os.close(fd)
    return Copied("/".join([*folders, name]), skipped)


def copy_out(root: Path, relpath: str | PurePath, dest: Path) -> Path:
    """Copy the file or folder at `relpath` under `root` to the host path `dest`; returns where it
    landed (inside `dest` when that is an existing folder and the source a file). Only regular
    files and folders are copied; links, FIFOs, sockets and devices are skipped (logged); a file
    is read up to its size when opened, so nothing the kernel does keeps the host busy."""
    names = parts(relpath)
    dest = Path(dest).expanduser()
    if names:
        parent = open_dir(root, "/".join(names[:-1]))
        name = names[-1]
    else:
        parent, name = None, ""
    try:
        st = lstat_at(parent, name) if parent is not None else os.stat(root)
        shown = shown_path(names)
        if st is None:
            raise NotFound(f"{shown!r} does not exist in the workspace")
        if stat.S_ISDIR(st.st_mode):
            sfd = open_subdir(parent, name, shown, False, None) if parent is not None else open_root(root)
            try:
                try:
                    dest.mkdir(parents=True, exist_ok=True)
                except FileExistsError:
                    raise ValueError(f"cannot download the folder {shown!r} to {str(dest)!r}: that is a file") from None
                dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    skipped: list[str] = []
                    _copy_dir_at(sfd, dfd, None, "", skipped, [MAX_ENTRIES])
                    _log_skipped(f"download of {shown}", skipped)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
            return dest
        if not stat.S_ISREG(st.st_mode):
            raise refused(shown, kind(st), "a regular file or folder")
        if dest.is_dir():
            dest = dest / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _copy_file_at(parent, name, dfd, dest.name, None, shown)
        finally:
            os.close(dfd)
        return dest
    finally:
        if parent is not None:
            os.close(parent)
