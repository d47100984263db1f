"""Overlap what can overlap before the first answer, and say where the time went (`--timings`).

The sandboxed kernel needs nothing from the model, and the model nothing from the kernel, so the
one-shot command and the terminal chat start the kernel on a thread first and load the model while
it comes up: the Python import of torch and transformers is single-threaded, and the kernel's start
happens mostly in its own processes, so on two cores the two overlap almost entirely.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from sandbox import Kernel, KernelOptions


class EarlyKernel:
    """A kernel starting on a thread. `Session(kernel=...)` takes it: its first use waits for the
    start (Kernel.start holds the kernel's lock) and, when the start failed there, starts it again
    in the caller's thread, so the error is raised where it is reported."""

    def __init__(self, options: KernelOptions):
        self.kernel = Kernel(options, start=False)  # a bad workspace: ValueError here, at once
        self.seconds: float | None = None
        self.thread = threading.Thread(target=self._start, name="kernelchat-kernel-start", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        t0 = time.perf_counter()
        try:
            self.kernel.start()
        except Exception:  # noqa: BLE001 - raised again, and reported, at the first use
            return
        self.seconds = time.perf_counter() - t0

    def close(self) -> None:
        """When the chat could not be made (e.g. the model did not load): stop the kernel."""
        self.thread.join(timeout=120)
        self.kernel.close()


def process_age() -> float:
    """Seconds since this process started (Linux: /proc), 0.0 where that is not known."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return max(float(f.read().split()[0]) - started, 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


class Timings:
    """Phases of a run, in seconds: `startup` (the interpreter and kernelchat's own imports),
    `import` (the model's libraries: torch and transformers for a local model), `model_load`,
    `kernel_start` (on its thread, overlapping the two before), `generation` and `execution` (summed
    over the turn's requests and cells), and `total` (process start to now)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter() - process_age()
        self.phases: dict[str, float] = {"startup": time.perf_counter() - self.t0}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def add_event(self, ev: Any) -> None:
        """Count a turn's event: a request's seconds as generation, a cell's as execution."""
        if ev.kind == "usage":
            self.add("generation", ev.usage.seconds)
        elif ev.kind == "tool_result":
            self.add("execution", ev.duration)

    def line(self) -> str:
        """One line for stderr: `timings: {...}` (JSON, seconds rounded to ms)."""
        phases = {**self.phases, "total": time.perf_counter() - self.t0}
        return "timings: " + json.dumps({k: round(v, 3) for k, v in phases.items()})
