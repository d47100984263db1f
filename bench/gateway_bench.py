"""Gateway latency: a warm `1+1` round trip on a local kernel vs a kernel on a Jupyter Kernel Gateway.

    python bench/gateway_bench.py [--n 200]

Starts two gateways on 127.0.0.1: the stock one, and one with docs/kernel_gateway_config.py
(TCP_NODELAY on the server's websocket). On each, GatewayKernel with and without its client-side
fix (TCP_QUICKACK: acknowledge at once, so the server's Nagle does not wait ~40 ms for our ACK).
Prints median and p95 in ms, and the ratio to the local kernel.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox import Kernel  # noqa: E402
from sandbox.gateway import GatewayKernel  # noqa: E402

CONFIG = ROOT / "docs" / "kernel_gateway_config.py"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


@contextmanager
def gateway(config: Path | None):
    """A Kernel Gateway on a free port; yields (url, token)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(8)
    argv = [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}", f"--KernelGatewayApp.auth_token={token}"]
    if config:
        argv.append(f"--config={config}")
    proc = subprocess.Popen(argv, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(urllib.request.Request(url + "/api", headers={"Authorization": f"token {token}"}),
                                       timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        yield url, token
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def round_trips(kernel: Kernel, n: int) -> tuple[float, float]:
    for _ in range(10):
        kernel.execute("1+1")
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = kernel.execute("1+1")
        ts.append(time.perf_counter() - t0)
        assert r.result == "2"
    return statistics.median(ts) * 1000, pct(ts, 95) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="round trips to time")
    n = ap.parse_args().n
    rows: dict[str, tuple[float, float]] = {}
    with Kernel(isolation="none") as k:
        rows["local Kernel(isolation='none')"] = round_trips(k, n)
    for server, config in (("stock gateway", None), ("gateway + TCP_NODELAY config", CONFIG)):
        with gateway(config) as (url, token):
            for client, quick in (("plain client", False), ("kernelchat client (QUICKACK)", True)):
                with GatewayKernel(gateway_url=url, gateway_token=token, quickack=quick) as k:
                    rows[f"{server}, {client}"] = round_trips(k, n)
    base = rows["local Kernel(isolation='none')"][0]
    print(f"{'warm 1+1 round trip (ms)':<58}{'median':>9}{'p95':>9}{'x local':>9}")
    for name, (med, p95) in rows.items():
        print(f"{name:<58}{med:>9.1f}{p95:>9.1f}{med / base:>8.2f}x")
    print(f"(round trips: {n}; gateway on 127.0.0.1)")


if __name__ == "__main__":
    main()
