"""`GatewayKernel`: a kernel on a Jupyter Kernel Gateway or Enterprise Gateway.

Same surface and results as `LocalKernel` (`Kernel(isolation="gateway")` returns a `GatewayKernel`):
kernels are created, interrupted and shut down through the gateway's REST API, and driven with
Jupyter messages as JSON over its websocket (`/api/kernels/{id}/channels`). Scheduling
(Kubernetes, YARN, Docker) is the gateway's business; the sandbox's limits there are the
deployment's (kernelspec, pod limits), see docs/gateway.md.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import os
import queue
import stat
import threading
import time
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Any

from . import safefs
from .base import BOOT, Kernel, KernelError, OutputCallback
from .gateway_client import (ENV_KERNEL, ENV_TOKEN, ENV_URL, GatewayError, GatewayRest, KernelChannels,
                             KernelGone, died_status)
from .options import DEFAULTS, KernelOptions
from .result import ExecResult

log = logging.getLogger("kernelchat.sandbox.gateway")

REMOTE = Path(__file__).parent / "inside" / "gateway_remote.py"
POLL_S = 0.2
REST_CHECK_S = 5.0  # during a long silent cell, ask the REST API now and then whether the kernel is dead
CHUNK = 2 * 2**20  # file transfer chunk (raw bytes); tornado refuses websocket messages over 10 MiB
# The kernel-side cap: what a cell may send over the network per stream (KernelOptions.remote_output_chars).
REMOTE_OUTPUT_CHARS = DEFAULTS.remote_output_chars


class GatewayKernel(Kernel, kind="gateway"):
    """A persistent IPython kernel on a Jupyter Kernel Gateway / Enterprise Gateway.

    >>> with Kernel(isolation="gateway", gateway_url="http://gw:8888", gateway_token="...") as k:
    ...     print(k.execute("2**100").result)

    `workspace` is the local folder for rich outputs and spilled streams; the kernel works in
    `remote_workspace` on its own machine (default: a fresh temporary folder there, removed on
    close). Sandbox limits (memory, processes, network, GPU) are the deployment's: pick them
    with `kernel_name` (a kernelspec) and `env` (`KERNEL_*` variables for Enterprise Gateway).
    """

    def _configure(self, options: KernelOptions) -> None:
        gateway_url, gateway_token, kernel_name = options.gateway_url, options.gateway_token, options.kernel_name
        url = gateway_url or os.environ.get(ENV_URL)
        if not url:
            raise ValueError(f"isolation='gateway' needs the gateway's URL: gateway_url=, --gateway or {ENV_URL}")
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"gateway_url must be http(s)://HOST:PORT[/BASE], got {url!r}")
        self.isolation = "gateway"
        self.gateway_url = url.rstrip("/")
        self._ws_base = ("wss" if parsed.scheme == "https" else "ws") + self.gateway_url[len(parsed.scheme):]
        self._rest = GatewayRest(self.gateway_url, gateway_token or os.environ.get(ENV_TOKEN) or None,
                                 options.request_timeout)
        self.kernel_name = kernel_name or os.environ.get(ENV_KERNEL) or None
        self.remote_output_chars = options.remote_output_chars
        self._remote_ws_asked = options.remote_workspace
        self.remote_workspace: str | None = options.remote_workspace
        self._quickack = options.quickack

    def _prepare(self, default_disk: bool) -> None:
        # Of the limits only output_chars applies here; the others (disk_mb too) and idle_cpu_limit are
        # the deployment's (docs/gateway.md).
        if self.gpu and not self.kernel_name:
            log.info("gpu=True on a gateway: the kernelspec decides; pass kernel_name= (see docs/gateway.md)")
        self.remote_output_chars = max(self.remote_output_chars, self.limits.output_chars)
        self.kernel_id: str | None = None
        self._ch: KernelChannels | None = None
        self._dead = False  # the gateway said so, or the websocket closed

    # -- lifecycle ---------------------------------------------------------------------------

    def _launch(self, ready_timeout: float) -> None:
        self._spawn(ready_timeout, retire=self._teardown(wait=False))

    def _spawn(self, ready_timeout: float, retire: threading.Thread | None = None) -> None:
        """Create a kernel on the gateway, connect, wait until it answers, set it up."""
        env = {"KERNEL_LAUNCH_TIMEOUT": str(int(ready_timeout)), **self.env}  # Enterprise Gateway reads it
        body: dict[str, Any] = {"env": env}
        if self.kernel_name:
            body["name"] = self.kernel_name
        try:
            model = self._rest("POST", "/api/kernels", body, timeout=ready_timeout)
        except GatewayError as e:
            if retire is None or "Resource Limit" not in str(e):
                raise
            retire.join(30)  # at the gateway's max_kernels: wait for the old one to go
            model = self._rest("POST", "/api/kernels", body, timeout=ready_timeout)
        self.kernel_id = model["id"]
        try:
            self._ch = KernelChannels(f"{self._ws_base}/api/kernels/{self.kernel_id}/channels",
                                      [f"Authorization: token {self._rest.token}"] if self._rest.token else [],
                                      timeout=self._rest.timeout, quickack=self._quickack)
            reply = self._ch.reply(self._ch.send("kernel_info_request", {}), ready_timeout)
            if reply is None:
                raise KernelError(f"the kernel {self.kernel_id} on {self.gateway_url} did not answer "
                                  f"within {ready_timeout:.0f} s")
            self._dead = False
            ws = json.loads(self._call(
                f"setup({self.remote_workspace!r}, {self.env!r}, {BOOT.read_text()!r}, "
                f"{self.remote_output_chars!r})", install=True))
            self.remote_workspace = ws
        except BaseException:
            self._teardown()
            raise

    def _call(self, expr: str, install: bool = False, timeout: float = 60.0) -> str:
        """Evaluate `expr` (a call into gateway_remote) in the kernel, silently, and return
        the str it returns. A ValueError there is raised here; anything else is a KernelError."""
        assert self._ch is not None
        code = ""
        if install:  # one round trip: install the helper module, then evaluate
            code = ("def _kc_install(src):\n    import sys, types\n"
                    "    m = types.ModuleType('_kernelchat_remote')\n"
                    "    exec(compile(src, 'kernelchat_remote', 'exec'), m.__dict__)\n"
                    "    sys.modules['_kernelchat_remote'] = m\n"
                    f"_kc_install({REMOTE.read_text()!r})\ndel _kc_install\n")
        expr = f"__import__('_kernelchat_remote').{expr}"
        reply = self._ch.reply(self._ch.execute(code, silent=True, store_history=False,
                                                user_expressions={"r": expr}), timeout)
        if reply is None:
            raise KernelError(f"the kernel on {self.gateway_url} did not answer (connection closed or "
                              f"{timeout:.0f} s passed)")
        content = reply["content"]
        if content.get("status") != "ok":
            raise KernelError(f"setting up the remote kernel failed: {content.get('ename')}: {content.get('evalue')}")
        out = content["user_expressions"]["r"]
        if out.get("status") != "ok":
            if out.get("ename") == "ValueError":
                raise ValueError(out.get("evalue"))
            raise KernelError(f"the remote kernel failed: {out.get('ename')}: {out.get('evalue')}")
        return ast.literal_eval(out["data"]["text/plain"])

    def _teardown(self, wait: bool = True) -> threading.Thread | None:
        """Drop the connection and shut the kernel down on the gateway (in the background
        unless `wait`); returns the thread doing it."""
        if self._ch is not None:
            self._ch.close()
            self._ch = None
        kid, self.kernel_id = self.kernel_id, None
        if kid is None:
            return None

        def delete() -> None:
            try:
                self._rest("DELETE", f"/api/kernels/{kid}")
            except (GatewayError, KernelGone):
                pass

        t = threading.Thread(target=delete, daemon=True, name="kernelchat-gateway-delete")
        t.start()
        if wait:
            t.join(self._rest.timeout)
        return t

    def restart(self) -> None:
        """A fresh kernel: all state (variables, imports) is lost; the remote workspace's files stay.

        A new kernel replaces the old one (shut down in the background): this does not wait
        for a wedged kernel to stop, nor depend on the gateway's restart settings."""
        with self._lock:
            old = self._teardown(wait=False)
            self.restarts += 1
            self.execution_count = 0
            if self._closed:
                raise KernelError("this kernel was closed; create a new one")
            self._spawn(60.0, retire=old)

    def _stop(self) -> None:
        if self._ch is not None and not self._ch.closed and self._remote_ws_asked is None:
            try:
                self._call("remove_workspace()", timeout=30)  # the temporary folder we made there (any size)
            except (KernelError, ValueError):
                pass
        self._teardown(wait=True)

    @property
    def alive(self) -> bool:
        ch = self._ch
        if ch is None or ch.closed or self._dead:
            return False
        # A death while no cell ran is news waiting in the inbox; read it unless a cell is
        # running (its reader owns the inbox then).
        if self._lock.acquire(blocking=False):
            try:
                while True:
                    msg = ch.inbox.get_nowait()
                    if msg is None or died_status(msg):
                        self._dead = True
                        break
            except queue.Empty:
                pass
            finally:
                self._lock.release()
        return not (ch.closed or self._dead)

    @property
    def pid(self) -> None:
        return None  # the process is on the gateway's machine; see kernel_id

    # -- execution ---------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Interrupt the running cell (the gateway signals the kernel)."""
        kid = self.kernel_id
        if kid is not None:
            try:
                self._rest("POST", f"/api/kernels/{kid}/interrupt")
            except KernelGone:
                pass

    # execute() is Kernel.execute: it restarts a dead kernel first and marks the result state_lost.

    def _run(self, code: str, timeout: float, on_output: OutputCallback | None) -> ExecResult:
        ch = self._ch
        assert ch is not None
        t0 = time.monotonic()
        # The kernel-side cap (REMOTE_OUTPUT_CHARS) bounds the network; this one bounds what we show.
        streams = self._streams(self.limits.output_chars, f"{self.remote_workspace}/outputs")
        res = ExecResult(status="ok")
        msg_id = ch.execute(code)
        deadline = t0 + timeout
        interrupted = idle = replied = False
        last_heard = last_check = t0
        while not (idle and replied):
            now = time.monotonic()
            if now >= deadline and not interrupted:
                interrupted = True
                res.status = "timeout"
                self.interrupt()
                deadline = now + 3.0  # grace for the interrupt to land
            elif now >= deadline:
                if idle:  # the reply got lost; the cell is over
                    break
                return self._after_hang(res, streams, t0, timeout)
            try:
                msg = ch.inbox.get(timeout=min(POLL_S, max(deadline - now, 0.001)))
            except queue.Empty:
                now = time.monotonic()
                if now - last_heard > REST_CHECK_S and now - last_check > REST_CHECK_S:
                    last_check = now
                    if self._rest_says_dead():
                        return self._after_death(res, streams, t0, "the gateway reports it dead")
                if idle and now - last_heard > 1.0:
                    break  # idle and no reply: do not hang on a lost message
                continue
            last_heard = time.monotonic()
            if msg is None:
                return self._after_death(res, streams, t0, "the websocket to the gateway closed")
            if died_status(msg):
                return self._after_death(res, streams, t0, "the gateway saw the process exit")
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg.get("channel") == "shell":
                replied = True
            elif msg.get("channel") == "iopub":
                idle = self._handle(msg, res, streams, on_output) or idle
        return self._finish(res, streams, t0, timeout if interrupted else None)

    def _rest_says_dead(self) -> bool:
        try:
            model = self._rest("GET", f"/api/kernels/{self.kernel_id}")
        except KernelGone:
            return True
        except GatewayError:
            return False  # unreachable is not dead: the websocket tells us if it goes
        return (model or {}).get("execution_state") == "dead"

    def _after_death(self, res: ExecResult, streams, t0: float, why: str) -> ExecResult:
        self._dead = True
        if self._ch is not None and self._ch.closed and not self._rest_says_dead():
            log.warning("the websocket closed but the gateway still lists kernel %s: replacing it", self.kernel_id)
        return self._report_death(res, streams, t0, why)

    # -- files: base64 chunks through the kernel itself ---------------------------------------

    def _remote(self, expr: str) -> Any:
        with self._lock:
            if not self.alive:
                if self._closed:
                    raise KernelError("this kernel was closed; create a new one")
                self.restart()
            return json.loads(self._call(expr))

    def upload(self, src: str | os.PathLike, dest: str | os.PathLike | None = None) -> PurePosixPath:
        """Copy a local file or folder into the remote workspace; returns its path there. In a
        folder, only regular files are sent: links and special files are skipped, not followed."""
        src = Path(src).expanduser()
        if not src.exists():
            raise ValueError(f"cannot upload {str(src)!r}: no such file or folder")
        dest = PurePosixPath(dest if dest is not None else src.name)  # the remote side refuses escapes
        if src.is_dir():
            pairs = [(rel, dest / rel) for rel in sorted(safefs.walk_files(src))]
        else:
            pairs = [("", dest)]
        path = ""
        for rel, remote in pairs:
            if rel:
                fd, _ = safefs.open_regular(src, rel)
            else:  # the user named this file (a link there is theirs); O_NONBLOCK + fstat: a FIFO never blocks
                fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise ValueError(f"cannot upload {str(src)!r}: it is not a regular file or folder")
            with os.fdopen(fd, "rb") as f:
                first = True
                while True:
                    chunk = f.read(CHUNK)
                    last = len(chunk) < CHUNK
                    path = self._remote(f"write_chunk({str(remote)!r}, {base64.b64encode(chunk).decode()!r}, "
                                        f"{first}, {last})")
                    first = False
                    if last:
                        break
        if src.is_dir():
            return PurePosixPath(self.remote_workspace or ".") / dest
        return PurePosixPath(path)

    def download(self, relpath: str | os.PathLike, dest: str | os.PathLike) -> Path:
        """Copy a file or folder out of the remote workspace to `dest` here. The names in the
        remote listing come from the kernel: each must be a plain relative path (no `..`, not
        absolute), and files are written with safefs (no local link followed)."""
        rel = str(PurePosixPath(relpath))
        tree = self._remote(f"walk({rel!r})")
        dest = Path(dest).expanduser()
        listed = tree.get("files") if isinstance(tree, dict) else None
        if not isinstance(listed, list) or tree.get("kind") not in ("file", "dir"):
            raise KernelError(f"the remote kernel answered the listing of {rel!r} with something unexpected")
        if tree["kind"] == "file":
            if dest.is_dir():
                dest = dest / PurePosixPath(rel).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._fetch(rel, dest.parent, dest.name)
            return dest
        dest.mkdir(parents=True, exist_ok=True)
        too_deep = 0
        for item in listed:
            sub = item[0] if isinstance(item, list) and item and isinstance(item[0], str) else None
            if not sub:
                raise KernelError(f"the remote kernel listed {item!r} in {rel!r}: not a file name")
            if len(safefs.parts(sub)) > safefs.MAX_DEPTH:  # '..', absolute, NUL: UnsafePath
                too_deep += 1  # as a local download: no chain of folders thousands deep on this machine
                continue
            self._fetch(f"{rel}/{sub}", dest, sub)
        if too_deep:
            log.warning("download of %r: skipped %d file(s) more than %d folders deep", rel, too_deep, safefs.MAX_DEPTH)
        return dest

    def _fetch(self, remote: str, root: Path, local: str) -> None:
        """Copy the remote file `remote` to `local` (relative) under the local folder `root`."""

        def chunks():
            offset = 0
            while True:
                data = base64.b64decode(self._remote(f"read_chunk({remote!r}, {offset}, {CHUNK})"))
                yield data
                offset += len(data)
                if len(data) < CHUNK:
                    return

        safefs.replace_file(root, local, chunks())

    def files(self) -> list[str]:
        """Remote workspace files, relative paths."""
        return [p for p, _ in self._remote("walk('.')")["files"]]
