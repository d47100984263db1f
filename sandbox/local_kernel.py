"""`LocalKernel`: a persistent, sandboxed IPython kernel on this machine (bwrap, or no isolation),
driven by jupyter_client."""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from .base import BOOT, Kernel, KernelError, OutputCallback
from .isolation import (Isolation, LaunchSpec, build_launch, default_isolation,
                        pick_sandbox_uid, write_identity_files)
from .launch import start_process
from .leases import RUNTIME_PREFIX, Lease
from .leases import sweep as sweep_leases
from .options import DEFAULTS, GATEWAY_OPTIONS, KernelOptions
from .procs import death_reason, kill_descendants
from .trim import parent_id, receive
from .quota import DiskQuota, default_disk_mb
from .result import ExecResult
from .safechown import chown_tree, restore_mode
from .saferm import remove_or_say

log = logging.getLogger("kernelchat.sandbox")

POLL_S = 0.2  # how often a waiting client checks that the kernel is still alive
MAX_MSG_BYTES = 256 * 2**20  # a larger iopub message is refused, not buffered


# Race-safe, never follows a link; pass from_uid= to change only the entries that uid owns.
_chown_tree = chown_tree


def repair_dead_hosts() -> int:
    """Undo what hosts killed before close() left: processes, workspace owners, runtime dirs,
    cgroups (see leases.py). Runs at each kernel start and close; returns how many were repaired."""
    return sweep_leases(lambda path, uid, gid, from_uid: _chown_tree(path, uid, gid, from_uid=from_uid,
                                                                     hard_linked=True))


class LocalKernel(Kernel, kind="local"):
    """A persistent IPython kernel on this machine, in bwrap (`isolation="bwrap"`, the default
    where it runs) or with no isolation (`"none"`). Made by `Kernel(...)`; see `Kernel`."""

    def _configure(self, options: KernelOptions) -> None:
        given = [name for name in GATEWAY_OPTIONS if getattr(options, name) != getattr(DEFAULTS, name)]
        if given:
            raise TypeError(f"{', '.join(given)}: option{'s' if len(given) > 1 else ''} of a gateway kernel "
                            f"(isolation='gateway'), not of one with isolation={options.isolation!r}")
        isolation = options.isolation
        if isolation is None:
            isolation = default_isolation()
            if isolation == "none":
                log.warning("bwrap cannot run here: the kernel runs WITHOUT isolation")
        if isolation not in ("bwrap", "none"):
            raise ValueError(f"isolation must be 'bwrap', 'none' or 'gateway', got {isolation!r}")
        if isolation == "bwrap":
            from .isolation import bwrap_path

            bwrap_path()  # raises IsolationError with the reason
        self.isolation: Isolation = isolation

    def _prepare(self, default_disk: bool) -> None:
        if default_disk:
            self.limits.disk_mb = default_disk_mb(self.workspace)
        self._uid = pick_sandbox_uid() if (os.getuid() == 0 and self.isolation == "bwrap") else None
        repair_dead_hosts()  # first: a killed host may have left this very workspace to its sandbox uid
        ws = self.workspace.stat()
        self._ws_owner, self._ws_mode = (ws.st_uid, ws.st_gid), stat.S_IMODE(ws.st_mode)
        self._proc: subprocess.Popen | None = None
        self._client: BlockingKernelClient | None = None
        self._runtime: Path | None = None
        self._spec: LaunchSpec | None = None
        self._kernel_log = None
        self._lease = Lease(self.workspace, self._ws_owner, self._uid)
        if self.limits.disk_mb:
            self._quota = DiskQuota(self.workspace, self.limits.disk_mb)

    @property
    def sandbox_uid(self) -> int | None:
        """The uid the kernel runs as when it has one of its own (bwrap as root); else None."""
        return self._uid

    # -- lifecycle ---------------------------------------------------------------------------

    def _launch(self, ready_timeout: float) -> None:
        self._spawn()
        self._wait_ready(ready_timeout)
        if self._uid is not None and self._runtime is not None:
            # The runtime folder is on the host's /tmp and holds the sockets the host connects
            # to: from now on (before any cell runs) the sandbox uid may add, swap or remove
            # nothing there (a link in place of a socket would be followed by root).
            os.chown(self._runtime, os.getuid(), os.getgid())
            os.chmod(self._runtime, 0o755)

    def _spawn(self) -> None:
        rt = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX, dir="/tmp" if os.path.isdir("/tmp") else None))
        self._runtime = rt
        if self._quota is not None:  # the sandbox writes there too (as an ordinary user: all along)
            self._quota.extra = [rt]
        self._lease.update(rt, None)  # before anything changes owner
        conn = rt / "kernel.json"
        transport = "ipc" if os.name == "posix" else "tcp"
        write_connection_file(str(conn), transport=transport, ip=str(rt / "k") if transport == "ipc" else "127.0.0.1",
                              key=secrets.token_hex(16).encode(), kernel_name="kernelchat")
        shutil.copy(BOOT, rt / "boot.py")
        run_uid = self._uid if self._uid is not None else os.getuid()
        write_identity_files(rt, run_uid)
        self._make_outputs()
        if self._uid is not None:
            _chown_tree(rt, self._uid, self._uid)
            _chown_tree(self.workspace, self._uid, self._uid, from_uid=self._ws_owner[0])
        # The venv's interpreter: its site-packages hold ipykernel and the data stack.
        argv = [sys.executable, str(rt / "boot.py"), str(conn), str(self.outputs_dir), str(self.limits.output_chars),
                str(self.limits.max_procs or 0), str(self.idle_cpu_limit or 0)]
        spec = build_launch(argv, isolation=self.isolation, workspace=self.workspace, runtime_dir=rt,
                            network=self.network, gpu=self.gpu, env=self.env, limits=self.limits,
                            sandbox_uid=self._uid)
        self._spec = spec
        self._lease.update(rt, spec.cgroup)
        # The kernel's own log: an unnamed file (one in rt could be swapped for a link by the sandbox).
        self._kernel_log = tempfile.TemporaryFile()
        try:
            self._proc = start_process(spec, reaper=self.isolation == "none", cwd=self.workspace, log=self._kernel_log)
        except subprocess.SubprocessError as e:  # its rlimits or cgroups refused in the child, before exec
            raise KernelError(f"the kernel could not be started: setting up its limits failed ({e})") from None
        client = BlockingKernelClient(connection_file=str(conn))
        client.load_connection_file()
        client.start_channels()
        client.iopub_channel.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MSG_BYTES)
        self._client = client

    def _log_tail(self, n: int = 2000) -> str:
        if self._kernel_log is None:
            return ""
        try:
            fd = self._kernel_log.fileno()
            size = os.fstat(fd).st_size
            return os.pread(fd, 4 * n, max(size - 4 * n, 0)).decode(errors="replace")[-n:]
        except (OSError, ValueError):
            return ""

    def _wait_ready(self, timeout: float) -> None:
        assert self._client is not None and self._proc is not None
        deadline = time.monotonic() + timeout
        msg_id = self._client.kernel_info()
        while True:
            if self._proc.poll() is not None:
                tail = self._log_tail()
                self._teardown()
                raise KernelError(f"the kernel exited during start (code {self._proc.returncode}):\n{tail}")
            left = deadline - time.monotonic()
            if left <= 0:
                tail = self._log_tail()
                self._teardown()
                raise KernelError(f"the kernel did not answer within {timeout:.0f} s:\n{tail}")
            try:
                reply = self._client.get_shell_msg(timeout=min(POLL_S, left))
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        # iopub is a SUB socket: it only sees messages once connected, so wait until an
        # idle status arrives before the first execute (else its output could be lost).
        while time.monotonic() < deadline:
            try:
                self._client.get_iopub_msg(timeout=POLL_S)
            except queue.Empty:
                msg_id = self._client.kernel_info()
                continue
            self._drain_iopub()
            break

    def _drain_iopub(self) -> None:
        assert self._client is not None
        while True:
            try:
                self._client.get_iopub_msg(timeout=0)
            except queue.Empty:
                return

    def _teardown(self) -> None:
        """Kill the kernel process and everything it started; keep the workspace."""
        if self._client is not None:
            try:
                self._client.stop_channels()
            except Exception:  # noqa: BLE001
                pass
            self._client = None
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self.isolation == "none":  # the reaper: kill below it first (setsid daemons included)
                kill_descendants(proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._spec is not None and self._spec.cgroup is not None:
            self._spec.cgroup.remove()
        if self._runtime is not None:  # the sandbox could write there: any depth, locked folders
            remove_or_say(self._runtime)
            self._runtime = None
        if self._kernel_log is not None:
            self._kernel_log.close()
            self._kernel_log = None

    def restart(self) -> None:
        """Start a fresh kernel process: all state (variables, imports) is lost."""
        with self._lock:
            self._teardown()
            self.restarts += 1
            self.execution_count = 0
            self.start()

    def _stop(self) -> None:
        self._teardown()
        if self._uid is not None and self.workspace.exists():  # hand the kernel's files back
            _chown_tree(self.workspace, *self._ws_owner, from_uid=self._uid, hard_linked=True)
            restore_mode(self.workspace, self._ws_mode)  # the sandbox may have opened it to all

    def _after_close(self) -> None:
        self._lease.release()  # after the workspace is handed back (or removed)
        repair_dead_hosts()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- execution ---------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Interrupt the running cell (message mode: a signal would kill bwrap)."""
        with self._control_lock:  # zmq sockets are not thread-safe; callers may be on any thread
            if self._client is not None:
                msg = self._client.session.msg("interrupt_request", {})
                self._client.control_channel.send(msg)

    def _run(self, code: str, timeout: float, on_output: OutputCallback | None) -> ExecResult:
        client = self._client
        assert client is not None and self._proc is not None
        t0 = time.monotonic()
        streams = self._streams(self.limits.output_chars * 2, str(self.outputs_dir))
        res = ExecResult(status="ok")
        msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        deadline = t0 + timeout
        idle = interrupted = False
        reply_seen_at: float | None = None
        while not idle:
            self._poll_quota()
            now = time.monotonic()
            if now >= deadline and not interrupted:
                interrupted = True
                self.interrupt()
                deadline = now + 3.0  # grace for the interrupt to land
                res.status = "timeout"
            elif now >= deadline:
                return self._after_hang(res, streams, t0, timeout)
            try:
                msg = receive(client.get_iopub_msg, min(POLL_S, max(deadline - now, 0.001)))
            except queue.Empty:
                if self._proc.poll() is not None:
                    return self._after_death(res, streams, t0)
                # An iopub message can be lost (over MAX_MSG_BYTES): the shell reply still says done.
                if reply_seen_at is None and self._shell_reply(msg_id, wait=0) is not None:
                    reply_seen_at = time.monotonic()
                if reply_seen_at is not None and time.monotonic() - reply_seen_at > 1.0:
                    break
                continue
            if msg is None or parent_id(msg) != msg_id:  # undecodable, malformed or another cell's
                continue
            idle = self._handle(msg, res, streams, on_output)
        if reply_seen_at is None:
            self._shell_reply(msg_id, wait=1.0)
        return self._finish(res, streams, t0, timeout if interrupted else None)

    def _shell_reply(self, msg_id: str, wait: float) -> dict | None:
        client = self._client
        end = time.monotonic() + wait
        while True:
            try:
                reply = receive(client.get_shell_msg, max(end - time.monotonic(), 0))
            except queue.Empty:
                return None
            if reply is not None and parent_id(reply) == msg_id:
                return reply

    def _after_death(self, res: ExecResult, streams, t0: float) -> ExecResult:
        code = self._proc.returncode if self._proc else None
        return self._report_death(res, streams, t0, death_reason(code, self.isolation, self.limits.cpu_seconds))
