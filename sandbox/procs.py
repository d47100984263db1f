"""Host-side process bookkeeping from /proc: a process's start time (so a reused pid is not
mistaken for the one we knew), its descendants, and killing a whole tree or a whole uid."""

from __future__ import annotations

import os
import signal
import time


def stat_fields(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3, the state, is index 0)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].decode().split()


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with the pid, a unique identity."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def is_running(pid: int, started: int | None) -> bool:
    """The process `pid` that started at `started` still exists (and is not a zombie)."""
    fields = stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X") and (started is None or int(fields[19]) == started)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (each thread lists the children it forked)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children."""
    out: list[int] = []
    todo = children(pid)
    seen = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        todo += children(p)
    return out


def kill_descendants(pid: int, rounds: int = 100) -> None:
    """SIGKILL everything below `pid`, again until nothing is left (a fork loop may still be
    adding children while we kill). `pid` should be a subreaper, so orphans stay below it."""
    _kill_until_gone(lambda: descendants(pid), rounds, 0.01)


def _kill_until_gone(list_pids, rounds: int, pause: float) -> None:
    for _ in range(rounds):
        pids = list_pids()
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(pause)


def pids_of_uid(uid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def kill_uid(uid: int, rounds: int = 50) -> None:
    """SIGKILL every process of `uid` (only for a sandbox's own, dedicated uid)."""
    if uid == 0 or uid == os.getuid():
        raise ValueError(f"refusing to kill every process of uid {uid}")
    _kill_until_gone(lambda: pids_of_uid(uid), rounds, 0.02)


def death_reason(code: int | None, isolation: str, cpu_seconds: int | None) -> str:
    """Why a kernel process ended, in words, from its exit status ("" when unknown)."""
    signum = -code if code is not None and code < 0 else None
    if isolation == "bwrap" and code is not None and code > 128:
        signum = code - 128  # bwrap reports the kernel's fatal signal as 128 + N
    if not signum:
        return f"exit code {code}" if code is not None else ""
    try:
        sig = signal.Signals(signum).name
    except ValueError:
        sig = str(signum)
    hint = {signal.SIGKILL: ": likely out of memory", signal.SIGSEGV: ": a crash in native code",
            signal.SIGXCPU: f": it used up its CPU-time limit ({cpu_seconds} s)"}.get(signum, "")
    return f"killed by {sig}{hint}"
