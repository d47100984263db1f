"""Kernel benchmark: raw jupyter_client (the floor) vs sandbox.Kernel (isolation none and bwrap).

    python bench/kernel_bench.py [--n 300]

Prints one table: cold start, first execution from the pool, warm `1+1` round trip
(median and p95), a cell printing 100,000 lines, interrupt back to idle.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_client import KernelManager  # noqa: E402

from sandbox import Kernel, KernelPool  # noqa: E402

LINES = "for i in range(100000): print(i)"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Raw:
    """The floor: what a bare jupyter_client user writes."""

    def __init__(self) -> None:
        self.km = KernelManager(transport="ipc")
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str) -> str:
        msg_id = self.kc.execute(code)
        out = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        self.kc.get_shell_msg(timeout=60)
        return "".join(out)

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


class Ours:
    def __init__(self, isolation: str) -> None:
        self.k = Kernel(isolation=isolation)

    def run(self, code: str) -> str:
        return self.k.execute(code).stdout

    def interrupt(self) -> None:
        self.k.interrupt()

    def close(self) -> None:
        self.k.close()


def measure(factory, n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    k = factory()
    cold = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        k.run("1+1")
        first = time.perf_counter() - t0
        for _ in range(20):
            k.run("1+1")
        rts = []
        for _ in range(n):
            t0 = time.perf_counter()
            k.run("1+1")
            rts.append(time.perf_counter() - t0)
        lines = []
        for _ in range(3):
            t0 = time.perf_counter()
            k.run(LINES)
            lines.append(time.perf_counter() - t0)
        irqs = []
        for _ in range(5):
            timer = threading.Timer(0.3, lambda: (irq_t.append(time.perf_counter()), k.interrupt()))
            irq_t: list[float] = []
            timer.start()
            k.run("import time; time.sleep(10)")
            irqs.append(time.perf_counter() - irq_t[0])
    finally:
        k.close()
    return {"cold start": cold, "first execution": first, "1+1 median": statistics.median(rts),
            "1+1 p95": pct(rts, 95), "100k lines": statistics.median(lines), "interrupt": statistics.median(irqs)}


def pool_first_execution(isolation: str) -> float:
    with KernelPool(size=1, isolation=isolation) as pool:
        while not pool.ready:
            time.sleep(0.05)
        t0 = time.perf_counter()
        k = pool.acquire()
        k.execute("1+1")
        dt = time.perf_counter() - t0
        k.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="round trips to time")
    n = ap.parse_args().n
    cols = {"raw jupyter_client": measure(Raw, n),
            "Kernel(none)": measure(lambda: Ours("none"), n),
            "Kernel(bwrap)": measure(lambda: Ours("bwrap"), n)}
    cols["Kernel(none)"]["first execution (pool)"] = pool_first_execution("none")
    cols["Kernel(bwrap)"]["first execution (pool)"] = pool_first_execution("bwrap")
    rows = ["cold start", "first execution", "first execution (pool)", "1+1 median", "1+1 p95", "100k lines",
            "interrupt"]
    names = list(cols)
    print(f"{'(ms)':<24}" + "".join(f"{c:>20}" for c in names) + f"{'bwrap/raw':>12}")
    for r in rows:
        vals = [cols[c].get(r) for c in names]
        cells = "".join(f"{v * 1000:>20.1f}" if v is not None else f"{'-':>20}" for v in vals)
        ratio = f"{vals[2] / vals[0]:>11.2f}x" if vals[0] and vals[2] else f"{'-':>12}"
        print(f"{r:<24}{cells}{ratio}")
    print(f"(round trips: {n}; raw uses ipc transport and signal interrupts; ours uses ipc and message interrupts)")


if __name__ == "__main__":
    main()
