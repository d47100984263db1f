"""Leases: what a running host changed for its kernel, so that whoever comes next can undo it
if the host is killed (`kill -9`) before `close()`.

A lease is a small JSON file in a folder private to the host's user (never in the kernel's
runtime dir, which the sandbox can write): the host's pid and start time, the workspace and its
original owner, the runtime dir, the cgroups and the sandbox uid. `sweep()` repairs and removes
the leases of dead hosts: it kills their leftover processes, hands the workspace back, removes
the runtime dir and the cgroups.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Callable

from .limits import Cgroup
from .procs import is_running, kill_uid, start_time
from .saferm import remove_or_say

log = logging.getLogger("kernelchat.sandbox")

Chown = Callable[[Path, int, int, int], None]  # (path, uid, gid, from_uid)
RUNTIME_PREFIX = "kc-"  # tempfile.mkdtemp(prefix=...) of the runtime dirs


def private_dir(path: Path) -> bool:
    """Make `path` (mode 0700, ours), or accept it only if it already is exactly that."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("%s is not a private folder of this user (a link, another owner or open to others): "
                    "leases are off, so a killed host's leftovers cannot be repaired", path)
        return False
    return True


def lease_dir() -> Path | None:
    """The host-private folder for leases, /tmp/kernelchat-UID/leases (one fixed place, so every
    host of this user finds every lease); None (leases off) when it cannot be made safely."""
    base = Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()) / f"kernelchat-{os.getuid()}"
    leases = base / "leases"
    return leases if private_dir(base) and private_dir(leases) else None


class Lease:
    """One kernel's lease; `update()` rewrites it (atomically), `release()` deletes it."""

    def __init__(self, workspace: Path, owner: tuple[int, int], sandbox_uid: int | None):
        folder = lease_dir()
        self.path = folder / f"{os.getpid()}-{secrets.token_hex(6)}.json" if folder else None
        self.record = {"host_pid": os.getpid(), "host_start": start_time(os.getpid()),
                       "workspace": str(workspace), "owner_uid": owner[0], "owner_gid": owner[1],
                       "sandbox_uid": sandbox_uid, "runtime_dir": None, "cgroup_dirs": []}

    def update(self, runtime_dir: Path | None, cgroup: Cgroup | None) -> None:
        if self.path is None:
            return
        self.record["runtime_dir"] = str(runtime_dir) if runtime_dir else None
        self.record["cgroup_dirs"] = [str(d) for d in cgroup.dirs] if cgroup else []
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
        os.replace(tmp, self.path)

    def release(self) -> None:
        if self.path is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def sweep(chown: Chown) -> int:
    """Repair what dead hosts left (see the module's doc); returns how many leases were swept.
    `chown(path, uid, gid, from_uid)` hands what from_uid owns in a tree back, following no link."""
    folder = lease_dir()
    if folder is None:
        return 0
    me = f"{os.getpid()}-{start_time(os.getpid())}"
    swept = 0
    for entry in os.scandir(folder):
        base, _, claimer = entry.name.partition(".claimed-")
        if claimer:  # another sweeper took it over: leave it unless that one died too
            pid, _, started = claimer.partition("-")
            if not (pid.isdigit() and started.isdigit()) or is_running(int(pid), int(started)):
                continue
        elif entry.name.endswith(".json"):
            base = entry.name[:-5]
        else:
            continue
        rec = _read(entry.path)
        if rec is None or is_running(rec["host_pid"], rec.get("host_start")):
            continue
        mine = folder / f"{base}.claimed-{me}"
        try:
            os.rename(entry.path, mine)  # atomic: of two sweepers, one wins
        except FileNotFoundError:
            continue
        try:
            _repair(rec, chown)
        except Exception as e:  # noqa: BLE001 - one bad lease must not stop a kernel start
            log.warning("could not fully repair what a killed kernel host left (%s): %s", entry.name, e)
        mine.unlink(missing_ok=True)
        swept += 1
    return swept


def _read(path: str) -> dict | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd) as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.getuid() or not stat.S_ISREG(st.st_mode):
                return None
            rec = json.load(f)
        return rec if isinstance(rec, dict) and isinstance(rec.get("host_pid"), int) else None
    except (OSError, ValueError):
        return None


def _repair(rec: dict, chown: Chown) -> None:
    uid = rec.get("sandbox_uid")
    dirs = [Path(d) for d in rec.get("cgroup_dirs") or []]
    if dirs:
        Cgroup(dirs).remove()  # kills what is still in it first
    if isinstance(uid, int) and uid != os.getuid() and uid != 0:
        kill_uid(uid)  # a dedicated uid: anything it still runs is a leftover
    rt = rec.get("runtime_dir")
    if rt and Path(rt).name.startswith(RUNTIME_PREFIX) and os.path.isabs(rt):
        remove_or_say(rt)  # the sandbox could write there: any depth, locked folders
    ws = rec.get("workspace")
    if isinstance(uid, int) and ws and os.path.isdir(ws):
        chown(Path(ws), int(rec["owner_uid"]), int(rec["owner_gid"]), uid)
