"""Host-side file operations inside a workspace whose names the sandboxed code controls.

The host (often root) reads and writes in a kernel's workspace while the kernel may plant, and
swap at any moment, symlinks (to files or folders, `outputs/` included), FIFOs, sockets or hard
links there. Everything here therefore works on folder descriptors, one component at a time:

- every component is opened with `openat(..., O_NOFOLLOW)`: a link anywhere below `root` is
  refused (`UnsafePath`), never followed, and a swap after the check changes nothing because the
  next step is relative to the descriptor already held;
- files are opened `O_NONBLOCK` and checked with `fstat`: only regular files are read, so a FIFO
  or device never blocks the host;
- new files are created `O_CREAT|O_EXCL` (nothing planted at the name is ever written through),
  or written under a fresh temporary name and renamed over the target inside the same folder;
- walks list names with `lstat` relative to the folder's descriptor (no host path is ever
  stat'ed through a link) and stop after `MAX_ENTRIES` entries or `MAX_DEPTH` levels.

`root` itself is a host path chosen by the host (the workspace) and is trusted.
Hard links: a sandbox under bwrap cannot make one to a host file (the workspace is its own mount:
`link()` fails with EXDEV), but the host never writes through an existing inode anyway, and
`chown_tree` (safechown.py) leaves multiply-linked files alone unless they belong to the uid handing them over.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Iterable, Iterator

MAX_ENTRIES = 100_000  # a walk stops here: files(), quota checks and copies stay bounded
MAX_DEPTH = 128  # folders deeper than this are not visited (one descriptor per level is held)
CHUNK = 1 << 20
Owner = tuple[int, int]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class UnsafePath(ValueError):
    """A path the host refuses to follow or open: a link, FIFO, socket, device, `..`, absolute."""


class NotFound(ValueError):
    """Nothing at that path in the workspace."""


class FileTooLarge(ValueError):
    """More bytes (or entries) than the limit allows."""


def kind(st: os.stat_result) -> str:
    """What an lstat result is, in words."""
    m = st.st_mode
    for test, word in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file")):
        if test(m):
            return word
    return "not a regular file"


def parts(relpath: str | PurePath) -> list[str]:
    """The components of a relative path; `UnsafePath` for absolute paths, `..` and NUL."""
    s = os.fspath(relpath)
    if not isinstance(s, str):
        raise UnsafePath(f"a path must be text, got {type(s).__name__}")
    if "\0" in s:
        raise UnsafePath(f"{s!r} contains a NUL character")
    p = PurePosixPath(s)
    if p.is_absolute():
        raise UnsafePath(f"{s!r} is an absolute path; give a path relative to the workspace")
    if ".." in p.parts:
        raise UnsafePath(f"{s!r} leads outside the workspace ('..' is not allowed)")
    return list(p.parts)


def relative(root: Path, path: str | os.PathLike) -> str:
    """`path` relative to `root`, checked lexically (never resolved: resolving follows links).
    An absolute path is accepted when it lies under `root` as written."""
    s = os.fspath(path)
    if isinstance(s, str) and s.startswith("/"):
        rootp = PurePosixPath(os.path.normpath(root))
        p = PurePosixPath(os.path.normpath(s))
        if p != rootp and rootp not in p.parents:
            raise UnsafePath(f"{s!r} is outside the workspace {str(root)!r}")
        s = str(p.relative_to(rootp))
    return "/".join(parts(s))


def shown_path(names: Iterable[str]) -> str:
    return "/".join(names) or "."


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def refused(shown: str, what: str, want: str) -> UnsafePath:
    """The one error for a name the host will not follow or open."""
    why = ("links are not followed: one could lead outside the workspace" if what == "a symbolic link"
           else "the host opens only regular files and folders there")
    return UnsafePath(f"{shown!r} is {what}, not {want}; {why}")


def _refuse(dir_fd: int, name: str, shown: str, want: str, err: int) -> UnsafePath:
    if err == errno.ELOOP:  # O_NOFOLLOW met a link: say so even if it was swapped away since
        return refused(shown, "a symbolic link", want)
    st = lstat_at(dir_fd, name)
    what = kind(st) if st else None
    if what is None or (what, want) in (("a file", "a regular file"), ("a folder", "a folder")):
        what = "something else while being opened (it keeps changing)"  # swapped since
    return refused(shown, what, want)


def open_root(root: Path) -> int:
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_subdir(dir_fd: int, name: str, shown: str, create: bool, owner: Owner | None) -> int:
    """Open folder `name` in `dir_fd` without following a link; make it when `create`."""
    for _ in range(3):  # a name that appears or vanishes between the calls: try again
        try:
            return os.open(name, _DIR, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                raise NotFound(f"{shown!r} does not exist in the workspace") from None
            try:
                os.mkdir(name, 0o755, dir_fd=dir_fd)
            except FileExistsError:
                continue
            except FileNotFoundError:
                raise NotFound(f"the folder holding {shown!r} was removed while being used") from None
            fd = os.open(name, _DIR, dir_fd=dir_fd)
            if owner is not None:
                os.fchown(fd, *owner)
            return fd
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EMLINK):
                raise _refuse(dir_fd, name, shown, "a folder", e.errno) from None
            raise
    raise UnsafePath(f"{shown!r} in the workspace keeps changing; not using it")


def open_dir(root: Path, relpath: str | PurePath = "", *, create: bool = False,
             owner: Owner | None = None) -> int:
    """A descriptor of the folder `relpath` under `root`, each component opened with O_NOFOLLOW.
    `create` makes missing folders (mode 0o755, given to `owner` when set). Close it yourself."""
    names = parts(relpath)
    fd = open_root(root)
    try:
        for i, name in enumerate(names):
            new = open_subdir(fd, name, shown_path(names[: i + 1]), create, owner)
            os.close(fd)
            fd = new
        return fd
    except BaseException:
        os.close(fd)
        raise


def _split(relpath: str | PurePath) -> tuple[list[str], str]:
    names = parts(relpath)
    if not names:
        raise UnsafePath("a file name is needed, got the workspace itself")
    return names[:-1], names[-1]


def _numbered(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{n}.{ext}" if dot and stem else f"{name}-{n}"


def create_in(dir_fd: int, name: str, *, mode: int = 0o644, owner: Owner | None = None) -> tuple[int, str]:
    """Create a NEW regular file in `dir_fd` (O_EXCL: whatever is planted at a name is never
    opened); a taken name gets a numeric suffix. Returns the write descriptor and the name used."""
    for n in range(1, 1002):
        candidate = name if n == 1 else (_numbered(name, n) if n < 1001 else _numbered(name, secrets.token_hex(4)))
        try:
            fd = os.open(candidate, _NEW, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise NotFound(f"the folder for {name!r} was removed while being used") from None
        if owner is not None:
            os.fchown(fd, *owner)
        return fd, candidate
    raise UnsafePath(f"no free name like {name!r}")  # not reached: the random name is free


def create_new(root: Path, relpath: str | PurePath, *, owner: Owner | None = None) -> tuple[int, str]:
    """`create_in` for a path under `root` (folders made as needed): (descriptor, relative path)."""
    folders, name = _split(relpath)
    dir_fd = open_dir(root, "/".join(folders), create=True, owner=owner)
    try:
        fd, used = create_in(dir_fd, name, owner=owner)
    finally:
        os.close(dir_fd)
    return fd, "/".join([*folders, used])


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_new(root: Path, relpath: str | PurePath, data: bytes, *, max_bytes: int | None = None,
              owner: Owner | None = None) -> str:
    """Write `data` to a NEW file at `relpath` under `root` (a numeric suffix when the name is
    taken); returns the relative path written. `FileTooLarge` over `max_bytes`."""
    if max_bytes is not None and len(data) > max_bytes:
        raise FileTooLarge(f"{len(data):,} bytes is over the limit of {max_bytes:,} bytes")
    folders, name = _split(relpath)
    dir_fd = open_dir(root, "/".join(folders), create=True, owner=owner)
    try:
        fd, used = create_in(dir_fd, name, owner=owner)
        try:
            write_all(fd, data)
        except OSError:
            os.close(fd)
            _unlink_quietly(dir_fd, used)
            raise
        os.close(fd)
    finally:
        os.close(dir_fd)
    return "/".join([*folders, used])


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def open_file_at(dir_fd: int, name: str, shown: str) -> tuple[int, os.stat_result]:
    """Open `name` for reading without following a link or blocking; only a regular file."""
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except FileNotFoundError:
        raise NotFound(f"{shown!r} does not exist in the workspace") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
            raise _refuse(dir_fd, name, shown, "a regular file", e.errno) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise refused(shown, kind(st), "a regular file")
    return fd, st


def open_regular(root: Path, relpath: str | PurePath) -> tuple[int, os.stat_result]:
    """A read descriptor of the regular file at `relpath` (no link followed at any component,
    never blocks) and its fstat."""
    folders, name = _split(relpath)
    dir_fd = open_dir(root, "/".join(folders))
    try:
        return open_file_at(dir_fd, name, shown_path([*folders, name]))
    finally:
        os.close(dir_fd)


def read_upto(fd: int, limit: int) -> Iterator[bytes]:
    """The file's bytes, at most `limit` (the size at fstat time: a file that grows while being
    read cannot keep the host busy)."""
    left = limit
    while left > 0:
        chunk = os.read(fd, min(CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def read_regular(root: Path, relpath: str | PurePath, *, max_bytes: int) -> bytes:
    """The bytes of a regular file under `root`; `FileTooLarge` over `max_bytes`."""
    fd, st = open_regular(root, relpath)
    try:
        if st.st_size > max_bytes:
            raise FileTooLarge(f"{str(relpath)!r} holds {st.st_size:,} bytes, over the limit of {max_bytes:,}")
        data = b"".join(read_upto(fd, max_bytes + 1))
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise FileTooLarge(f"{str(relpath)!r} grew past the limit of {max_bytes:,} bytes while being read")
    return data


def replace_at(dir_fd: int, name: str, chunks: Iterable[bytes], *, mode: int = 0o644,
               owner: Owner | None = None, times_ns: tuple[int, int] | None = None, shown: str = "") -> None:
    """Write `chunks` to a fresh temporary file in `dir_fd`, then rename it over `name`: whatever
    was planted at `name` (a link, a FIFO, a hard link to another file) is replaced, never
    written through. A real folder at `name` is refused."""
    tmp_fd, tmp = create_in(dir_fd, f".{name[:80]}.kc-{secrets.token_hex(6)}.part", mode=0o600)
    try:
        try:
            size = 0
            for chunk in chunks:
                # Runs of zeros become holes: a sparse file (4 GB apparent, a few blocks used, so
                # within the workspace's quota) stays sparse on the host instead of filling its disk.
                if chunk.count(0) == len(chunk):
                    os.lseek(tmp_fd, len(chunk), os.SEEK_CUR)
                else:
                    write_all(tmp_fd, chunk)
                size += len(chunk)
            os.ftruncate(tmp_fd, size)
            os.fchmod(tmp_fd, mode & 0o777)
            if owner is not None:
                os.fchown(tmp_fd, *owner)
            if times_ns is not None:
                os.utime(tmp_fd, ns=times_ns)
        finally:
            os.close(tmp_fd)
        st = lstat_at(dir_fd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{shown or name!r} is a folder; not replacing it with a file")
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise


def replace_file(root: Path, relpath: str | PurePath, chunks: Iterable[bytes], *, owner: Owner | None = None,
                 mode: int = 0o644) -> str:
    """Write a file at `relpath` under `root` (folders made as needed, none followed), replacing
    whatever is there; returns the relative path."""
    folders, name = _split(relpath)
    dir_fd = open_dir(root, "/".join(folders), create=True, owner=owner)
    try:
        replace_at(dir_fd, name, chunks, mode=mode, owner=owner, shown=shown_path([*folders, name]))
    finally:
        os.close(dir_fd)
    return "/".join([*folders, name])


# -- walking ---------------------------------------------------------------------------------


class Walk:
    """Every entry below a folder descriptor, depth first, as (dir_fd, reldir, name, lstat); no
    link is followed and nothing is stat'ed through one. Stops after `max_entries` entries;
    `complete` says whether everything was seen (not: the budget ran out, a folder was deeper
    than `max_depth` or could not be read). The descriptors are valid while iterating."""

    def __init__(self, top_fd: int, *, max_entries: int = MAX_ENTRIES, max_depth: int = MAX_DEPTH):
        self.top_fd, self.max_entries, self.max_depth = top_fd, max_entries, max_depth
        self.entries = 0
        self.complete = True  # False: the entry budget ran out, or folders were too deep or unreadable
        self._stopped = False  # the entry budget ran out: no more listing at all

    def _list(self, fd: int) -> list[tuple[str, os.stat_result]]:
        out = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    if self.entries >= self.max_entries:
                        self.complete, self._stopped = False, True
                        break
                    self.entries += 1
                    try:
                        out.append((e.name, e.stat(follow_symlinks=False)))
                    except PermissionError:  # a folder the code made unsearchable (600)
                        self.complete = False
                    except OSError:  # removed meanwhile
                        continue
        except PermissionError:  # unreadable (000): what it holds is unknown
            self.complete = False
        except OSError:
            pass
        return out

    def __iter__(self) -> Iterator[tuple[int, str, str, os.stat_result]]:
        stack: list[tuple[int, str, list[str]]] = []
        try:
            entries = self._list(self.top_fd)
            yield from ((self.top_fd, "", n, st) for n, st in entries)
            stack.append((self.top_fd, "", [n for n, st in entries if stat.S_ISDIR(st.st_mode)]))
            while stack:
                fd, rel, subs = stack[-1]
                if not subs or self._stopped:
                    stack.pop()
                    if fd != self.top_fd:
                        os.close(fd)
                    continue
                name = subs.pop()
                if len(stack) > self.max_depth:
                    self.complete = False
                    continue
                try:  # swapped for a link or a file since listed: O_NOFOLLOW|O_DIRECTORY refuses it
                    sub = os.open(name, _DIR, dir_fd=fd)
                except PermissionError:  # locked (000): what it holds is unknown
                    self.complete = False
                    continue
                except OSError:
                    continue
                srel = f"{rel}/{name}" if rel else name
                stack.append((sub, srel, []))
                entries = self._list(sub)
                yield from ((sub, srel, n, st) for n, st in entries)
                stack[-1] = (sub, srel, [n for n, st in entries if stat.S_ISDIR(st.st_mode)])
        finally:
            for fd, _, _ in stack:
                if fd != self.top_fd:
                    os.close(fd)


def list_names(root: Path, relpath: str | PurePath = "", *, limit: int = MAX_ENTRIES) -> list[str]:
    """The names in a folder under `root` (none followed); [] when it is missing or unsafe."""
    try:
        fd = open_dir(root, relpath)
    except (UnsafePath, NotFound, OSError):
        return []
    try:
        with os.scandir(fd) as it:
            return [e.name for _, e in zip(range(limit), it)]
    except OSError:
        return []
    finally:
        os.close(fd)


def walk_files(root: Path, *, limit: int = MAX_ENTRIES) -> list[str]:
    """Relative paths of the regular files under `root`: no link followed (a link to a host file
    is not listed, so the listing reveals nothing about host paths), at most `limit` entries seen."""
    fd = open_root(root)
    try:
        return [f"{rel}/{name}" if rel else name for _, rel, name, st in Walk(fd, max_entries=limit)
                if stat.S_ISREG(st.st_mode)]
    finally:
        os.close(fd)


@dataclass
class Usage:
    bytes: int
    entries: int
    complete: bool


def tree_usage(root: Path, *, limit_entries: int = MAX_ENTRIES) -> Usage:
    """Disk space used below `root` (st_blocks * 512 of every entry, hard links once), no link
    followed; after `limit_entries` entries the sum so far (`complete` False)."""
    fd = open_root(root)
    try:
        total, seen = 0, set()
        walk = Walk(fd, max_entries=limit_entries)
        for _, _, _, st in walk:
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            total += st.st_blocks * 512
        return Usage(total, walk.entries, walk.complete)
    finally:
        os.close(fd)


def tree_bytes(root: Path, limit_entries: int = MAX_ENTRIES) -> int:
    """`tree_usage(...).bytes`."""
    return tree_usage(root, limit_entries=limit_entries).bytes


def entry_kind(root: Path, relpath: str) -> str | None:
    """'file' or 'folder' when `relpath` is one inside `root` (a workspace) with no link on the way; else
    None (missing, a link, a FIFO, a device: the same answer, so nothing is told about the host)."""
    parent, _, name = relpath.strip("/").rpartition("/")
    try:
        fd = open_dir(root, parent)
    except (UnsafePath, NotFound, OSError):  # a link or FIFO on the way, or nothing
        return None
    try:
        if not name:
            return "folder"
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except OSError:
        return None
    finally:
        os.close(fd)
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else None
