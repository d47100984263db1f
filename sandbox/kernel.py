"""`Kernel`: a persistent, sandboxed IPython kernel driven by jupyter_client."""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import json
import logging
import os
import queue
import resource
import secrets
import shutil
import signal
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

from .capture import CappedStream, strip_ansi
from .isolation import (Isolation, LaunchSpec, build_launch, default_isolation,
                        pick_sandbox_uid, write_identity_files)
from .limits import Limits
from .result import ExecResult, RichOutput

log = logging.getLogger("kernelchat.sandbox")

OutputCallback = Callable[[str, "str | RichOutput"], None]
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg", "image/gif": "gif"}
TEXT_TYPES = ("text/html", "text/markdown", "text/latex", "application/json")
BOOT = Path(__file__).with_name("boot.py")
POLL_S = 0.2  # how often a waiting client checks that the kernel is still alive
MAX_MSG_BYTES = 256 * 2**20  # a larger iopub message is refused, not buffered


class KernelError(RuntimeError):
    """The kernel could not be started or reached."""


class _Launcher:
    """Starts processes from one long-lived thread: bwrap's --die-with-parent fires when
    the *thread* that forked it exits, so kernels must not be forked from short-lived ones."""

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
_live: "weakref.WeakSet[Kernel]" = weakref.WeakSet()


def _launch(fn):
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = _Launcher()
    return _launcher.call(fn)


@atexit.register
def _close_all() -> None:
    for k in list(_live):
        try:
            k.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _child_setup(spec: LaunchSpec) -> Callable[[], None]:
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


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            try:
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
            except OSError:
                pass


def check_timeout(timeout: object) -> float:
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def limits_from(**given: int | None) -> Limits:
    """Limits from Kernel's keyword arguments: -1 means 'the default', None 'unlimited'."""
    return Limits(**{k: v for k, v in given.items()
                     if v != -1 and not (v is None and k in ("tmp_mb", "output_chars"))})


def resolve_workspace(workspace: str | os.PathLike | None) -> tuple[Path, bool]:
    """The workspace folder, and whether we made it (a temporary one)."""
    if workspace is None:
        return Path(tempfile.mkdtemp(prefix="kernelchat-ws-")), True
    path = Path(workspace).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"workspace {str(path)!r} does not exist or is not a folder; "
                         "create it first or pass workspace=None for a temporary one")
    return path, False


class Kernel:
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
                 output_chars: int | None = None, start: bool = True):
        if isolation is None:
            isolation = default_isolation()
            if isolation == "none":
                log.warning("bwrap cannot run here: the kernel runs WITHOUT isolation")
        if isolation not in ("bwrap", "none"):
            raise ValueError(f"isolation must be 'bwrap', 'none' or 'gateway', got {isolation!r}")
        if isolation == "bwrap":
            from .isolation import bwrap_path

            bwrap_path()  # raises IsolationError with the reason
        check_timeout(timeout)
        self.isolation: Isolation = isolation
        self.network, self.gpu, self.env, self.timeout = network, gpu, dict(env or {}), float(timeout)
        self.limits = limits_from(memory_mb=memory_mb, max_procs=max_procs, max_file_mb=max_file_mb,
                                  cpu_seconds=cpu_seconds, tmp_mb=tmp_mb, output_chars=output_chars)
        self.workspace, self._own_workspace = resolve_workspace(workspace)
        self.outputs_dir = self.workspace / "outputs"
        self._uid = pick_sandbox_uid() if (os.getuid() == 0 and isolation == "bwrap") else None
        self._ws_owner = (self.workspace.stat().st_uid, self.workspace.stat().st_gid)
        self._proc: subprocess.Popen | None = None
        self._client: BlockingKernelClient | None = None
        self._runtime: Path | None = None
        self._spec: LaunchSpec | None = None
        self._init_bookkeeping()
        if start:
            self.start()

    def _init_bookkeeping(self) -> None:
        """State every kernel kind shares; registered so atexit can close it."""
        self._lock = threading.RLock()
        self._control_lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self.execution_count = 0
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
        return self

    def _spawn(self) -> None:
        rt = Path(tempfile.mkdtemp(prefix="kc-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self._runtime = rt
        conn = rt / "kernel.json"
        transport = "ipc" if os.name == "posix" else "tcp"
        write_connection_file(str(conn), transport=transport, ip=str(rt / "k") if transport == "ipc" else "127.0.0.1",
                              key=secrets.token_hex(16).encode(), kernel_name="kernelchat")
        shutil.copy(BOOT, rt / "boot.py")
        run_uid = self._uid if self._uid is not None else os.getuid()
        write_identity_files(rt, run_uid)
        self.outputs_dir.mkdir(exist_ok=True)
        if self._uid is not None:
            _chown_tree(rt, self._uid, self._uid)
            _chown_tree(self.workspace, self._uid, self._uid)
        # The venv's interpreter: its site-packages hold ipykernel and the data stack.
        argv = [sys.executable, str(rt / "boot.py"), str(conn), str(self.outputs_dir), str(self.limits.output_chars)]
        spec = build_launch(argv, isolation=self.isolation, workspace=self.workspace, runtime_dir=rt,
                            network=self.network, gpu=self.gpu, env=self.env, limits=self.limits,
                            sandbox_uid=self._uid)
        if self.isolation == "none":
            spec.env["JPY_PARENT_PID"] = str(os.getpid())  # the kernel exits if we die
        host_env = {k: os.environ[k] for k in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "PATH")
                    if k in os.environ}
        self._log_path = rt / "kernel.log"
        logf = open(self._log_path, "wb")
        try:
            self._proc = _launch(lambda: subprocess.Popen(
                spec.argv, env=spec.env if self.isolation == "none" else host_env, cwd=self.workspace,
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, close_fds=True,
                start_new_session=True, preexec_fn=_child_setup(spec)))
        finally:
            logf.close()
        self._spec = spec
        client = BlockingKernelClient(connection_file=str(conn))
        client.load_connection_file()
        client.start_channels()
        client.iopub_channel.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MSG_BYTES)
        self._client = client

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-n:]
        except OSError:
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
            if self._uid is not None and self.workspace.exists():
                _chown_tree(self.workspace, *self._ws_owner)  # hand the files back
            if self._own_workspace and getattr(self, "_remove_workspace", False):
                shutil.rmtree(self.workspace, ignore_errors=True)
            _live.discard(self)

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
        streams = {n: CappedStream(n, self.limits.output_chars * 2, self.outputs_dir) for n in ("stdout", "stderr")}
        res = ExecResult(status="ok")
        msg_id = client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        deadline = t0 + timeout
        idle = interrupted = False
        reply_seen_at: float | None = None
        while not idle:
            now = time.monotonic()
            if now >= deadline and not interrupted:
                interrupted = True
                self.interrupt()
                deadline = now + 3.0  # grace for the interrupt to land
                res.status = "timeout"
            elif now >= deadline:
                return self._after_hang(res, streams, t0, timeout)
            try:
                msg = client.get_iopub_msg(timeout=min(POLL_S, max(deadline - now, 0.001)))
            except queue.Empty:
                if self._proc.poll() is not None:
                    return self._after_death(res, streams, t0)
                # An iopub message can be lost (over MAX_MSG_BYTES): the shell reply still says done.
                if reply_seen_at is None and self._shell_reply(msg_id, wait=0) is not None:
                    reply_seen_at = time.monotonic()
                if reply_seen_at is not None and time.monotonic() - reply_seen_at > 1.0:
                    break
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
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
                reply = client.get_shell_msg(timeout=max(end - time.monotonic(), 0))
            except queue.Empty:
                return None
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply

    def _handle(self, msg: dict, res: ExecResult, streams: dict[str, CappedStream],
                on_output: OutputCallback | None) -> bool:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status":
            return content["execution_state"] == "idle"
        if kind == "stream":
            name = content.get("name", "stdout")
            streams.get(name, streams["stdout"]).write(content["text"])
            if on_output:
                on_output(name, content["text"])
        elif kind in ("execute_result", "display_data"):
            data = content.get("data", {})
            outs = self._save_rich(data)
            res.outputs.extend(outs)
            if kind == "execute_result":
                res.execution_count = content.get("execution_count")
                if "text/plain" in data:
                    res.result = strip_ansi(data["text/plain"])
                    if on_output:
                        on_output("result", res.result)
            elif not outs and "text/plain" in data:
                streams["stdout"].write(data["text/plain"] + "\n")
            if on_output:
                for o in outs:
                    on_output("display", o)
        elif kind == "error":
            res.status = "error" if res.status == "ok" else res.status
            res.error_name, res.error_value = content.get("ename"), strip_ansi(content.get("evalue", ""))
            res.traceback = strip_ansi("\n".join(content.get("traceback", [])))
            if on_output:
                on_output("error", res.traceback)
        elif kind == "execute_input":
            res.execution_count = content.get("execution_count")
        return False

    def _save_rich(self, data: dict) -> list[RichOutput]:
        outs = []
        for mime, ext in IMAGE_TYPES.items():
            if mime in data:
                self.outputs_dir.mkdir(exist_ok=True)
                n = sum(1 for _ in self.outputs_dir.glob("figure-*"))
                path = self.outputs_dir / f"figure-{n + 1:04d}.{ext}"
                payload = data[mime]
                if ext == "svg":
                    path.write_text(payload if isinstance(payload, str) else "".join(payload))
                else:
                    path.write_bytes(base64.b64decode(payload))
                outs.append(RichOutput(mime=mime, path=str(path)))
                break  # one file per figure: the richest format
        for mime in TEXT_TYPES:
            if mime in data and not (mime == "text/html" and outs):
                value = data[mime]
                text = value if isinstance(value, str) else json.dumps(value)
                outs.append(RichOutput(mime=mime, text=text[: self.limits.output_chars]))
        return outs

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
        signum = -code if code is not None and code < 0 else None
        if self.isolation == "bwrap" and code is not None and code > 128:
            signum = code - 128  # bwrap reports the kernel's fatal signal as 128 + N
        why = f"exit code {code}" if code is not None else ""
        if signum:
            try:
                sig = signal.Signals(signum).name
            except ValueError:
                sig = str(signum)
            hint = {signal.SIGKILL: ": likely out of memory", signal.SIGSEGV: ": a crash in native code",
                    signal.SIGXCPU: f": it used up its CPU-time limit ({self.limits.cpu_seconds} s)"}.get(signum, "")
            why = f"killed by {sig}{hint}"
        return self._report_death(res, streams, t0, why)

    def _report_death(self, res: ExecResult, streams, t0: float, why: str) -> ExecResult:
        """Restart, and say plainly that the state is gone (`why`: what killed it, if known)."""
        self.restart()
        res = self._finish(res, streams, t0, None)
        res.status, res.state_lost = "died", True
        res.message = (f"The kernel died while running this cell{f' ({why})' if why else ''}. It was restarted: "
                       "its state (variables, imports) was lost; re-run the earlier cells that are needed.")
        return res

    # -- files -------------------------------------------------------------------------------

    def _inside(self, relpath: str | os.PathLike) -> Path:
        p = (self.workspace / relpath).resolve()
        if p != self.workspace and self.workspace not in p.parents:
            raise ValueError(f"{str(relpath)!r} is outside the workspace {str(self.workspace)!r}")
        return p

    def upload(self, src: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
        """Copy a host file or folder into the workspace; returns its path there."""
        src = Path(src).expanduser()
        if not src.exists():
            raise ValueError(f"cannot upload {str(src)!r}: no such file or folder")
        target = self._inside(dest if dest is not None else src.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
        if self._uid is not None:
            _chown_tree(target, self._uid, self._uid) if target.is_dir() else os.chown(target, self._uid, self._uid)
        return target

    def download(self, relpath: str | os.PathLike, dest: str | os.PathLike) -> Path:
        """Copy a file or folder out of the workspace to `dest` on the host."""
        src = self._inside(relpath)
        if not src.exists():
            raise ValueError(f"{str(relpath)!r} does not exist in the workspace")
        dest = Path(dest).expanduser()
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True)
        else:
            if dest.is_dir():
                dest = dest / src.name
            shutil.copyfile(src, dest, follow_symlinks=False)
        return dest

    def files(self) -> list[str]:
        """Workspace files, relative paths."""
        return sorted(str(p.relative_to(self.workspace)) for p in self.workspace.rglob("*") if p.is_file())
