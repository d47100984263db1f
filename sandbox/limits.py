"""Resource limits for a kernel: rlimits for grace, cgroups as the hard backstop."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, Field


def _half_of_ram_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**21
    except (ValueError, OSError):
        return 4096


MAX_MB = 10**12  # an exabyte: far past any machine, and its bytes (x 1.25) still fit an rlimit or a cgroup
# The largest value of each limit: larger ones overflow the rlimit, cgroup or tmpfs they become.
MAX_LIMITS = {"memory_mb": MAX_MB, "max_procs": 4_000_000, "max_file_mb": MAX_MB, "cpu_seconds": 10**12,
              "tmp_mb": MAX_MB, "output_chars": 10**9, "disk_mb": MAX_MB}


class Limits(BaseModel):
    """What one kernel may use. `None` means unlimited."""

    memory_mb: int | None = Field(default_factory=_half_of_ram_mb, gt=0, le=MAX_MB)
    max_procs: int | None = Field(default=256, gt=0, le=MAX_LIMITS["max_procs"], description="processes and threads")
    max_file_mb: int | None = Field(default=4096, gt=0, le=MAX_MB, description="largest file it may write")
    cpu_seconds: int | None = Field(default=None, gt=0, le=MAX_LIMITS["cpu_seconds"])
    tmp_mb: int = Field(default=1024, gt=0, le=MAX_MB, description="size of the private /tmp")
    output_chars: int = Field(default=20_000, gt=200, le=MAX_LIMITS["output_chars"],
                              description="per stream, head and tail kept")
    # Kernel(disk_mb=-1), the default, sets it to what the workspace holds + a quarter of the free
    # space (at most 50 GiB more): see sandbox/quota.py. None: no quota.
    disk_mb: int | None = Field(default=None, gt=0, le=MAX_MB, description="most the workspace folder may hold")


def user_task_count(uid: int) -> int:
    """Tasks (threads count) owned by `uid`: what RLIMIT_NPROC is checked against."""
    n = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                n += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue
    return n


def rlimits(limits: Limits, *, gpu: bool, run_uid: int) -> dict[int, tuple[int, int]]:
    """The rlimits to set in the kernel's launcher before it execs bwrap."""
    out: dict[int, int | tuple[int, int]] = {resource.RLIMIT_CORE: 0}
    # RLIMIT_DATA (not AS) turns a memory bomb into MemoryError; CUDA reserves huge
    # address ranges, so under gpu=True only the cgroup caps memory.
    if limits.memory_mb and not gpu:
        out[resource.RLIMIT_DATA] = limits.memory_mb * 2**20
    if limits.max_procs:
        # RLIMIT_NPROC counts every task of the real uid on the host. A dedicated uid
        # (when started as root) counts only this kernel; a normal user's count is
        # relative to what they already run.
        base = 0 if run_uid != os.getuid() else user_task_count(run_uid)
        out[resource.RLIMIT_NPROC] = base + limits.max_procs
    if limits.max_file_mb:
        out[resource.RLIMIT_FSIZE] = limits.max_file_mb * 2**20
    if limits.cpu_seconds:
        # SIGXCPU at the soft limit, SIGKILL a second later: the kernel's death says why.
        out[resource.RLIMIT_CPU] = (limits.cpu_seconds, limits.cpu_seconds + 1)
    return {k: _within_hard(k, v if isinstance(v, tuple) else (v, v)) for k, v in out.items()}


def _within_hard(res: int, value: tuple[int, int]) -> tuple[int, int]:
    """No more than the host's own hard limit: raising it needs CAP_SYS_RESOURCE (an ordinary user,
    or root in a container, has none), and past it setrlimit fails in the child, so the kernel
    would not start."""
    hard = resource.getrlimit(res)[1]
    if hard == resource.RLIM_INFINITY:
        return value
    return min(value[0], hard), min(value[1], hard)


class Cgroup:
    """A cgroup v1 (memory + pids) made as root, or a systemd scope on cgroup v2."""

    V1_ROOT = Path("/sys/fs/cgroup")

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs

    @classmethod
    def create_v1(cls, limits: Limits) -> "Cgroup | None":
        """Writable v1 hierarchies (as root, as on these CI machines)."""
        name = f"kernelchat/{uuid.uuid4().hex[:12]}"
        cls.sweep()
        dirs: list[Path] = []
        try:
            mem = cls.V1_ROOT / "memory"
            if limits.memory_mb and (mem / "cgroup.procs").exists() and os.access(mem, os.W_OK):
                d = mem / name
                d.mkdir(parents=True)
                dirs.append(d)
                # Backstop above the rlimit, so the graceful MemoryError fires first.
                hard = int(limits.memory_mb * 1.25 + 256) * 2**20
                (d / "memory.limit_in_bytes").write_text(str(hard))
            pids = cls.V1_ROOT / "pids"
            if limits.max_procs and (pids / "cgroup.procs").exists() and os.access(pids, os.W_OK):
                d = pids / name
                d.mkdir(parents=True)
                dirs.append(d)
                (d / "pids.max").write_text(str(limits.max_procs + 16))
        except OSError:
            cg = cls(dirs)
            cg.remove()
            return None
        return cls(dirs) if dirs else None

    @classmethod
    def sweep(cls, min_age_s: float = 60.0) -> None:
        """Remove empty cgroups left by hosts that were killed (rmdir refuses busy ones)."""
        now = time.time()
        for parent in (cls.V1_ROOT / "memory" / "kernelchat", cls.V1_ROOT / "pids" / "kernelchat"):
            try:
                entries = list(os.scandir(parent))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.is_dir() and now - e.stat().st_mtime > min_age_s:
                        os.rmdir(e.path)
                except OSError:
                    pass

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return out

    def kill(self) -> None:
        """SIGKILL everything in the cgroup, including processes that left the session."""
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            time.sleep(0.02)

    def remove(self) -> None:
        self.kill()
        for d in self.dirs:
            for _ in range(50):  # a killed task leaves the cgroup only once reaped
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def systemd_scope_prefix(limits: Limits) -> list[str]:
    """On cgroup v2 desktops a user cannot write cgroups directly: a transient systemd
    user scope gives the same hard caps. Empty when unavailable."""
    exe = shutil.which("systemd-run")
    if not exe or os.getuid() == 0 or not os.environ.get("XDG_RUNTIME_DIR"):
        return []
    props = []
    if limits.memory_mb:
        props += ["-p", f"MemoryMax={int(limits.memory_mb * 1.25 + 256)}M"]
    if limits.max_procs:
        props += ["-p", f"TasksMax={limits.max_procs + 16}"]
    if not props:
        return []
    probe = subprocess.run([exe, "--user", "--scope", "--quiet", *props, "true"],
                           capture_output=True, timeout=10)
    return [exe, "--user", "--scope", "--quiet", "--collect", *props] if probe.returncode == 0 else []
