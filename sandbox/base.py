"""`Kernel`: what every kernel kind shares, and the factory that picks the kind.

`Kernel(...)` returns a `LocalKernel` (isolation "bwrap" or "none": sandbox/local_kernel.py) or a
`GatewayKernel` (isolation "gateway", or a gateway_url: sandbox/gateway.py). Each kind names
itself when its class is defined (`class LocalKernel(Kernel, kind="local")`), so this module
imports neither; `sandbox/__init__.py` imports both.

Shared here: option checks, the workspace, locks and counters, the registry that closes live
kernels at exit, `execute()` (restarting a dead kernel first), turning Jupyter messages into an
`ExecResult`, and the close sequence.
"""

from __future__ import annotations

import atexit
import logging
import os
import stat
import tempfile
import threading
import time
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

from .capture import CappedStream, strip_ansi
from .hostfiles import WorkspaceFiles
from .options import (DEFAULTS, LIMIT_OPTIONS, KernelOptions, check_bool, check_env, check_gpu, check_timeout,
                      limits_from, options_from)
from .quota import DiskQuota
from .result import ExecResult, RichOutput
from .safefs import Walk, open_root
from .saferm import remove_or_say
from .trim import CellBudget, as_text, clip, count, sentence, take_notices

log = logging.getLogger("kernelchat.sandbox")
OutputCallback = Callable[[str, "str | RichOutput"], None]
BOOT = Path(__file__).parent / "inside" / "boot.py"


class KernelError(RuntimeError):
    """The kernel could not be started or reached."""


_live: "weakref.WeakSet[Kernel]" = weakref.WeakSet()


@atexit.register
def close_all_kernels() -> None:
    """Close every kernel still open (at exit: their processes, cgroups and temporary folders)."""
    for k in list(_live):
        try:
            k.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def resolve_workspace(workspace: str | os.PathLike | None) -> tuple[Path, bool]:
    """The workspace folder, and whether we made it (a temporary one)."""
    if workspace is None:
        return Path(tempfile.mkdtemp(prefix="kernelchat-ws-")), True
    path = Path(workspace).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"workspace {str(path)!r} does not exist or is not a folder; "
                         "create it first or pass workspace=None for a temporary one")
    return path, False


def holds_files(root: Path) -> bool:
    """Whether a regular file lies below `root` (the code's data, a saved figure, a spilled output):
    what a user may want. Links, FIFOs and sockets are not: nothing is followed (safefs.Walk), so a
    link to a host folder full of files does not count. A walk cut short counts as holding files."""
    fd = open_root(root)
    try:
        walk = Walk(fd)
        return any(stat.S_ISREG(st.st_mode) for _, _, _, st in walk) or not walk.complete
    finally:
        os.close(fd)


def remove_empty_workspace(root: Path) -> bool:
    """Remove a temporary workspace that holds no regular file; True when it is gone. Nothing is
    followed, at any depth (saferm); what would not go is said once (a warning)."""
    try:
        if holds_files(root):
            return False
    except OSError:
        return not root.exists()
    return remove_or_say(root)


def _cleanup_failed(e: Exception) -> None:
    log.warning("the kernel was stopped, but cleaning up after it did not finish (%s: %s)",
                type(e).__name__, str(e)[:300])


def kind_for(isolation: object, gateway_url: object) -> str:
    """The kernel kind that `Kernel(isolation=..., gateway_url=...)` makes."""
    return "gateway" if isolation == "gateway" or (isolation is None and gateway_url) else "local"


class Kernel(WorkspaceFiles, ABC):
    """A persistent IPython kernel in a sandbox; `Kernel(...)` makes the kind the options ask for.

    >>> with Kernel() as k:
    ...     k.execute("x = 2**100")
    ...     print(k.execute("x").result)

    Takes a `KernelOptions` whole (`Kernel(options)`, `Kernel(options, start=False)`) or its fields
    as keywords (`Kernel(workspace=..., timeout=5)`); the gateway's (`gateway_url=`, `kernel_name=`,
    ...) are `GatewayKernel`'s only. The options stay in `self.options`.
    """

    kinds: ClassVar[dict[str, type[Kernel]]] = {}
    isolation: str

    def __init_subclass__(cls, kind: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            Kernel.kinds[kind] = cls

    def __new__(cls, options: KernelOptions | None = None, /, *args: Any, **fields: Any) -> Kernel:
        if cls is Kernel:
            given = options if isinstance(options, KernelOptions) else DEFAULTS
            cls = Kernel.kinds[kind_for(fields.get("isolation", given.isolation),
                                        fields.get("gateway_url", given.gateway_url))]
        return super().__new__(cls)

    def __init__(self, options: KernelOptions | None = None, /, *, start: bool = True, **fields: Any):
        """`options`, or its fields as keywords (both: the keywords change those options);
        `start=False`: start on first use (or `start()`)."""
        self.options = options = options_from(options, "Kernel", **fields)  # checked: no temporary folder yet
        check_bool("start", start)
        self._configure(options)  # the kind's own options (a local kernel: is bwrap here?)
        self.network, self.gpu = options.network, check_gpu(options.gpu)
        self.env, self.timeout = check_env(options.env), options.timeout
        # A share of one core that leftovers of a cell may use while the kernel is idle; more is stopped.
        self.idle_cpu_limit = options.idle_cpu_limit
        self.limits = limits_from(**{name: getattr(options, name) for name in (*LIMIT_OPTIONS, "disk_mb")})
        self.workspace, self._own_workspace = resolve_workspace(options.workspace)
        self.outputs_dir = self.workspace / "outputs"
        self._init_bookkeeping()
        # A temporary workspace on close: None removes it unless it holds a file, False always, True never.
        self.keep_workspace = options.keep_workspace
        self._prepare(default_disk=options.disk_mb == -1)
        if start:
            self.start()

    def _init_bookkeeping(self) -> None:
        """State every kernel kind shares; registered so atexit can close it."""
        self._lock = threading.RLock()
        self._control_lock = threading.Lock()
        self._closed = False
        self.kept_workspace: Path | None = None  # after close: a temporary workspace left in place
        self.restarts = 0
        self.execution_count = 0
        self._quota: DiskQuota | None = None
        self._cell_notes: list[str] = []  # said in the result's message (figures not saved, quota)
        self._over_quota = False
        _live.add(self)

    # -- what each kind provides ---------------------------------------------------------------

    @abstractmethod
    def _configure(self, options: KernelOptions) -> None:
        """Check and keep the kind's own options (before the shared ones are kept)."""

    @abstractmethod
    def _prepare(self, default_disk: bool) -> None:
        """Set the kind's state up once the shared options and the workspace are known
        (`default_disk`: disk_mb was left at its default)."""

    @abstractmethod
    def _launch(self, ready_timeout: float) -> None:
        """Start the kernel and wait until it answers."""

    @abstractmethod
    def _stop(self) -> None:
        """On close: stop the kernel for good (the workspace is handled by `close`)."""

    @abstractmethod
    def restart(self) -> None:
        """Start a fresh kernel: all state (variables, imports) is lost."""

    @property
    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    def interrupt(self) -> None:
        """Interrupt the running cell."""

    @abstractmethod
    def _run(self, code: str, timeout: float, on_output: OutputCallback | None) -> ExecResult:
        """Run one cell on a live kernel."""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, ready_timeout: float = 60.0) -> Kernel:
        with self._lock:
            if self._closed:
                raise KernelError("this kernel was closed; create a new one")
            if not self.alive:
                self._launch(ready_timeout)
        return self

    @property
    def temporary_workspace(self) -> bool:
        """Whether this kernel made its workspace (workspace=None); only such a folder is ever removed."""
        return self._own_workspace

    def remove_workspace_on_close(self) -> None:
        """Remove a temporary workspace on close whatever it holds (as in a pool): keep_workspace=False."""
        self.keep_workspace = False

    def close(self) -> None:
        """Stop the kernel. A temporary workspace is then removed unless it holds a file (or
        keep_workspace=False) and kept otherwise: `kept_workspace` is then its path. Never raises:
        a cleanup step that fails is one warning (the kernel is stopped first, whatever follows)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _live.discard(self)
            try:
                self._stop()  # first: the files are the host user's again, and no code runs to swap them
                if self._own_workspace and self.workspace.exists():
                    if self.keep_workspace is False:
                        remove_or_say(self.workspace)
                    elif self.keep_workspace is None:
                        remove_empty_workspace(self.workspace)
            except Exception as e:  # noqa: BLE001 - what ran has run: a failed cleanup is said, not raised
                _cleanup_failed(e)
            finally:
                if self._own_workspace:
                    self.kept_workspace = self.workspace if os.path.lexists(self.workspace) else None
        try:
            self._after_close()
        except Exception as e:  # noqa: BLE001
            _cleanup_failed(e)

    def _after_close(self) -> None:
        """After close, outside the lock (a kind may override)."""

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- execution ---------------------------------------------------------------------------

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

    def _handle(self, msg: dict, res: ExecResult, streams: dict[str, CappedStream],
                on_output: OutputCallback | None) -> bool:
        kind, content = msg["msg_type"], msg["content"]  # both checked by trim.parent_id()
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
        return self._restarted(res, streams, t0, "timeout",
                               f"The cell ran past its {timeout:g} s timeout and did not stop when interrupted; "
                               "the kernel was restarted and its state (variables, imports) was lost.")

    def _report_death(self, res: ExecResult, streams, t0: float, why: str) -> ExecResult:
        """Restart, and say plainly that the state is gone (`why`: what killed it, if known)."""
        return self._restarted(res, streams, t0, "died",
                               f"The kernel died while running this cell{f' ({why})' if why else ''}. It was "
                               "restarted: its state (variables, imports) was lost; re-run the earlier cells "
                               "that are needed.")

    def _restarted(self, res: ExecResult, streams, t0: float, status: str, message: str) -> ExecResult:
        self.restart()
        res = self._finish(res, streams, t0, None)
        res.status, res.state_lost, res.message = status, True, message
        return res
