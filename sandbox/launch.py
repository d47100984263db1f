"""Starting a kernel's process: from one long-lived thread, with cgroups and rlimits set in the
child before exec, and (isolation="none") under a reaper that outlives nothing it started."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Callable

from .isolation import HOST_ONLY_ENV, LaunchSpec

REAPER = Path(__file__).parent / "inside" / "reaper.py"


class _Launcher:
    """Starts processes from one long-lived thread: bwrap's --die-with-parent (and the reaper's
    parent-death signal) fires when the *thread* that forked it exits."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="kernelchat-launcher", daemon=True).start()

    def _run(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def call(self, fn):
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, fut))
        return fut.result()


_launcher: _Launcher | None = None
_launcher_lock = threading.Lock()


def on_launcher_thread(fn):
    """Run `fn()` on the launcher thread; returns its result."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = _Launcher()
    return _launcher.call(fn)


def child_setup(spec: LaunchSpec) -> Callable[[], None]:
    """Runs in the forked child before exec: join the cgroups and set the rlimits, so
    everything the kernel starts inherits both."""
    procs_files = spec.cgroup.procs_files() if spec.cgroup else []
    limits = list(spec.rlimits.items())

    def setup() -> None:
        pid = str(os.getpid()).encode()
        for path in procs_files:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, pid)
            os.close(fd)
        for res, value in limits:
            resource.setrlimit(res, value)

    return setup


def start_process(spec: LaunchSpec, *, reaper: bool, cwd: Path, log: IO[bytes]) -> subprocess.Popen:
    """Start the kernel. Its environment (secrets included) travels in the process environment,
    which only its own user can read, never in the command line, which every user can."""
    argv = [sys.executable, str(REAPER), str(os.getpid()), *spec.argv] if reaper else spec.argv
    # The launcher in front of bwrap (systemd-run --user) may need these; bwrap unsets them inside.
    host_only = {k: os.environ[k] for k in HOST_ONLY_ENV if k in os.environ and not reaper}
    env = {**host_only, **spec.env}
    return on_launcher_thread(lambda: subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        close_fds=True, start_new_session=True, preexec_fn=child_setup(spec)))
