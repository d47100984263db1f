"""`Kernel`: a persistent, sandboxed IPython kernel driven by jupyter_client."""

from __future__ import annotations

import atexit
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
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

import zmq
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from . import safefs
from .capture import CappedStream, strip_ansi
from .isolation import (Isolation, LaunchSpec, build_launch, default_isolation,
                        pick_sandbox_uid, write_identity_files)
from .launch import start_process
from .leases import RUNTIME_PREFIX, Lease
from .leases import sweep as sweep_leases
from .options import check_bool, check_env, check_fraction, check_gpu, check_timeout, limits_from
from .procs import death_reason, kill_descendants
from .trim import CellBudget, as_text, clip, count, parent_id, receive, sentence, take_notices
from .hostfiles import WorkspaceFiles
from .quota import DiskQuota, default_disk_mb
from .result import ExecResult, RichOutput

log = logging.getLogger("kernelchat.sandbox")

OutputCallback = Callable[[str, "str | RichOutput"], None]
BOOT = Path(__file__).with_name("boot.py")
POLL_S = 0.2  # how often a waiting client checks that the kernel is still alive
MAX_MSG_BYTES = 256 * 2**20  # a larger iopub message is refused, not buffered


class KernelError(RuntimeError):
    """The kernel could not be started or reached."""


_live: "weakref.WeakSet[Kernel]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for k in list(_live):
        try:
            k.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# Race-safe, never follows a link; pass from_uid= to change only the entries that uid owns.
_chown_tree = safefs.chown_tree


def repair_dead_hosts() -> int:
    """Undo what hosts killed before close() left: processes, workspace owners, runtime dirs,
    cgroups (see leases.py). Runs at each kernel start and close; returns how many were repaired."""
    return sweep_leases(lambda path, uid, gid, from_uid: _chown_tree(path, uid, gid, from_uid=from_uid,
                                                                     hard_linked=True))


def resolve_workspace(workspace: str | os.PathLike | None) -> tuple[Path, bool]:
    """The workspace folder, and whether we made it (a temporary one)."""
    if workspace is None:
        return Path(tempfile.mkdtemp(prefix="kernelchat-ws-")), True
    path = Path(workspace).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"workspace {str(path)!r} does not exist or is not a folder; "
                         "create it first or pass workspace=None for a temporary one")
    return path, False


class Kernel(WorkspaceFiles):
    """A persistent IPython kernel in a sandbox.

    >>> with Kernel() as k:
    ...     k.execute("x = 2**100")
    ...     print(k.execute("x").result)
    """

    def __new__(cls, *args, **kwargs):
        # isolation="gateway" (or a gateway_url): the kernel runs on a Jupyter Kernel Gateway /
        # Enterprise Gateway; GatewayKernel subclasses Kernel, so Python then calls its __init__.
        isolation = kwargs.get("isolation", args[1] if len(args) > 1 else None)
        if cls is Kernel and (isolation == "gateway" or (isolation is None and kwargs.get("gateway_url"))):
            from .gateway import GatewayKernel

            cls = GatewayKernel
        return super().__new__(cls)

    def __init__(self, workspace: str | os.PathLike | None = None, isolation: Isolation | None = None,
                 network: bool = False, gpu: bool = False, env: dict[str, str] | None = None, *,
                 timeout: float = 120.0, memory_mb: int | None = -1, max_procs: int | None = -1,
                 max_file_mb: int | None = -1, cpu_seconds: int | None = None, tmp_mb: int | None = None,
                 output_chars: int | None = None, disk_mb: int | None = -1,
                 idle_cpu_limit: float | None = None, start: bool = True):
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
        self.network, self.gpu = check_bool("network", network), check_gpu(gpu)
        self.env, self.timeout = check_env(env), check_timeout(timeout)
        # A share of one core that leftovers of a cell may use while the kernel is idle; more is stopped.
        self.idle_cpu_limit = check_fraction("idle_cpu_limit", idle_cpu_limit)
        check_bool("start", start)
        self.limits = limits_from(memory_mb=memory_mb, max_procs=max_procs, max_file_mb=max_file_mb,
                                  cpu_seconds=cpu_seconds, tmp_mb=tmp_mb, output_chars=output_chars,
                                  disk_mb=disk_mb)
        self.workspace, self._own_workspace = resolve_workspace(workspace)
        if disk_mb == -1:
            self.limits.disk_mb = default_disk_mb(self.workspace)
        self.outputs_dir = self.workspace / "outputs"
        self._uid = pick_sandbox_uid() if (os.getuid() == 0 and isolation == "bwrap") else None
        repair_dead_hosts()  # first: a killed host may have left this very workspace to its sandbox uid
        ws = self.workspace.stat()
        self._ws_owner, self._ws_mode = (ws.st_uid, ws.st_gid), stat.S_IMODE(ws.st_mode)
        self._proc: subprocess.Popen | None = None
        self._client: BlockingKernelClient | None = None
        self._runtime: Path | None = None
        self._spec: LaunchSpec | None = None
        self._kernel_log = None
        self._init_bookkeeping()
        self._lease = Lease(self.workspace, self._ws_owner, self._uid)
        if self.limits.disk_mb:
            self._quota = DiskQuota(self.workspace, self.limits.disk_mb)
        if start:
            self.start()

    def _init_bookkeeping(self) -> None:
        """State every kernel kind shares; registered so atexit can close it."""
        self._lock = threading.RLock()
        self._control_lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self.execution_count = 0
        self._quota: DiskQuota | None = None
        self._cell_notes: list[str] = []  # said in the result's message (figures not saved, quota)
        self._over_quota = False
        _live.add(self)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, ready_timeout: float = 60.0) -> "Kernel":
        with self._lock:
            if self._closed:
                raise KernelError("this kernel was closed; create a new one")
            if self._proc is not None and self._proc.poll() is None:
                return self
            self._spawn()
            self._wait_ready(ready_timeout)
            if self._uid is not None and self._runtime is not None:
                # The runtime folder is on the host's /tmp and holds the sockets the host connects
                # to: from now on (before any cell runs) the sandbox uid may add, swap or remove
                # nothing there (a link in place of a socket would be followed by root).
                os.chown(self._runtime, os.getuid(), os.getgid())
                os.chmod(self._runtime, 0o755)
        return self

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
        self._proc = start_process(spec, reaper=self.isolation == "none", cwd=self.workspace, log=self._kernel_log)
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
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
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

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._teardown()
            if self._uid is not None and self.workspace.exists():  # hand the kernel's files back
                _chown_tree(self.workspace, *self._ws_owner, from_uid=self._uid, hard_linked=True)
                safefs.restore_mode(self.workspace, self._ws_mode)  # the sandbox may have opened it to all
            if self._own_workspace and getattr(self, "_remove_workspace", False):
                shutil.rmtree(self.workspace, ignore_errors=True)
            self._lease.release()
            _live.discard(self)
        repair_dead_hosts()

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

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

    def execute(self, code: str, timeout: float | None = None,
                on_output: OutputCallback | None = None) -> ExecResult:
        """Run `code`; never raises for anything the code does."""
        if not isinstance(code, str):
            raise ValueError(f"code must be a str, got {type(code).__name__}")
        timeout = check_timeout(self.timeout if timeout is None else timeout)
        with self._lock:
            note = None
            if not self.alive:
                if self._closed:
                    raise KernelError("this kernel was closed; create a new one")
                note = "The kernel had died; it was restarted and its earlier state was lost."
                self.restart()
            res = self._run(code, float(timeout), on_output)
            if note and res.status != "died":
                res.state_lost = True
                res.message = note + (f" {res.message}" if res.message else "")
            return res

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

    def _handle(self, msg: dict, res: ExecResult, streams: dict[str, CappedStream],
                on_output: OutputCallback | None) -> bool:
        kind, content = msg["msg_type"], msg["content"]  # both checked by parent_id()
        if kind == "status":
            return content.get("execution_state") == "idle"
        if kind == "stream":
            name = "stderr" if content.get("name") == "stderr" else "stdout"
            text = as_text(content.get("text", ""))
            streams[name].write(text)
            if on_output:
                on_output(name, text)
        elif kind in ("execute_result", "display_data"):
            data = content.get("data", {})
            data = data if isinstance(data, dict) else {}
            budget = self._budget_for(res)
            if kind == "display_data" and set(data) - {"text/plain"} and not budget.admit():
                return False  # past the cell's number of displays: counted, said in the message
            outs = self._save_rich(data)
            res.outputs.extend(budget.take(outs))
            if kind == "execute_result":
                res.execution_count = count(content)
                if "text/plain" in data:
                    res.result = strip_ansi(clip(as_text(data["text/plain"]), self.limits.output_chars, "result"))
                    if on_output:
                        on_output("result", res.result)
            elif not outs and "text/plain" in data:
                streams["stdout"].write(as_text(data["text/plain"]) + "\n")
            if on_output:
                for o in outs:
                    on_output("display", o)
        elif kind == "error":
            res.status = "error" if res.status == "ok" else res.status
            limit = self.limits.output_chars
            res.error_name = clip(as_text(content.get("ename", "")), 200, "error name")
            res.error_value = strip_ansi(clip(as_text(content.get("evalue", "")), limit // 2, "error message"))
            tb = content.get("traceback", [])
            tb = "\n".join(map(as_text, tb)) if isinstance(tb, list) else as_text(tb)
            res.traceback = strip_ansi(clip(tb, limit, "traceback"))
            if on_output:
                on_output("error", res.traceback)
        elif kind == "execute_input":
            res.execution_count = count(content)
        return False

    def _budget_for(self, res: ExecResult) -> CellBudget:
        """The rich-output budget of the cell that `res` belongs to."""
        budget = getattr(self, "_budget", None)
        if budget is None or budget[0] is not res:
            budget = self._budget = (res, CellBudget(2 * self.limits.output_chars))
        return budget[1]

    def _finish(self, res: ExecResult, streams: dict[str, CappedStream], t0: float,
                timed_out_after: float | None) -> ExecResult:
        res.stdout, res.stdout_file = streams["stdout"].value()
        res.stderr, res.stderr_file = streams["stderr"].value()
        res.duration = time.monotonic() - t0
        if res.execution_count:
            self.execution_count = res.execution_count
        if timed_out_after is not None:
            res.status = "timeout"
            res.message = (f"The cell ran past its {timed_out_after:g} s timeout and was interrupted; "
                           "the kernel's state is kept.")
        res.stderr, notices = take_notices(res.stderr)  # what boot.py's Guard saw
        budget = self._budget_for(res)
        self._budget = None
        self._cell_notes += [sentence(n) for n in notices] + ([budget.note()] if budget.note() else [])
        self._fold_notes(res)
        return res

    def _after_hang(self, res: ExecResult, streams, t0: float, timeout: float) -> ExecResult:
        self.restart()
        res = self._finish(res, streams, t0, None)
        res.status, res.state_lost = "timeout", True
        res.message = (f"The cell ran past its {timeout:g} s timeout and did not stop when interrupted; "
                       "the kernel was restarted and its state (variables, imports) was lost.")
        return res

    def _after_death(self, res: ExecResult, streams, t0: float) -> ExecResult:
        code = self._proc.returncode if self._proc else None
        return self._report_death(res, streams, t0, death_reason(code, self.isolation, self.limits.cpu_seconds))

    def _report_death(self, res: ExecResult, streams, t0: float, why: str) -> ExecResult:
        """Restart, and say plainly that the state is gone (`why`: what killed it, if known)."""
        self.restart()
        res = self._finish(res, streams, t0, None)
        res.status, res.state_lost = "died", True
        res.message = (f"The kernel died while running this cell{f' ({why})' if why else ''}. It was restarted: "
                       "its state (variables, imports) was lost; re-run the earlier cells that are needed.")
        return res
