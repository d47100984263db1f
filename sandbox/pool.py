"""A pool of pre-started kernels: a new conversation's first cell skips the ~0.7 s start."""

from __future__ import annotations

import threading
from typing import Any

from .base import Kernel
from .options import KernelOptions, options_from


class KernelPool:
    """Keeps `size` started kernels with the same options ready; `acquire()` hands one
    over and starts a replacement in the background. The options: a KernelOptions, or its
    fields as keywords (checked at once; the workspace is left out: each kernel gets its own).

    >>> pool = KernelPool(size=2, isolation="bwrap")
    >>> k = pool.acquire()      # already started
    """

    def __init__(self, size: int = 1, options: KernelOptions | None = None, **fields: Any):
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size must be a whole number >= 0, got {size!r}")
        self.size = size
        self.options = options_from(options, "KernelPool", **fields).updated(workspace=None)
        self._ready: list[Kernel] = []
        self._cond = threading.Condition()
        self._closed = False
        self._starting = 0
        for _ in range(size):
            self._refill()

    def _refill(self) -> None:
        with self._cond:
            if self._closed or len(self._ready) + self._starting >= self.size:
                return
            self._starting += 1
        threading.Thread(target=self._start_one, daemon=True, name="kernelchat-pool").start()

    def _start_one(self) -> None:
        try:
            k = Kernel(self.options)
        except Exception:  # noqa: BLE001 - acquire() will start one and surface the error
            with self._cond:
                self._starting -= 1
                self._cond.notify_all()
            return
        with self._cond:
            self._starting -= 1
            if self._closed:
                k.close()
                return
            self._ready.append(k)
            self._cond.notify_all()

    def acquire(self, timeout: float | None = 60.0) -> Kernel:
        """A started kernel with a fresh temporary workspace."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the pool is closed")
            if not self._ready and self._starting:
                self._cond.wait_for(lambda: self._ready or not self._starting, timeout=timeout)
            k = self._ready.pop(0) if self._ready else None
        self._refill()
        if k is None or not k.alive:
            if k is not None:
                k.close()
            k = Kernel(self.options)
        k.remove_workspace_on_close()
        return k

    @property
    def ready(self) -> int:
        with self._cond:
            return len(self._ready)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            kernels, self._ready = self._ready, []
        for k in kernels:
            k.close()

    def __enter__(self) -> "KernelPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
