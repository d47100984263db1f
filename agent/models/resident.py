"""A local model kept loaded between commands, in a background process (as Ollama's `keep_alive`).

Most of a one-shot `kernelchat "..."` on a local model is spent importing torch and transformers
and loading the weights, not answering. The command line therefore asks a resident model server
(agent/models/resident_server.py) for the model: the first command starts it, later ones connect
in milliseconds and find the weights loaded, packed in fp16, and the KV cache of the last prompt
(the system prompt is shared). It exits `keep_alive` seconds after the last command using it ended
(default 300; 0 keeps the model in the command's own process, as the Python API does by default).

`ResidentBackend` is the Backend protocol over that server and imports neither torch nor
transformers. The server speaks one JSON object per line over a Unix socket in a folder only this
user can enter (runtime_dir(), 0700, checked), and answers only this user (SO_PEERCRED). Its address
is a hash of the model, its files and kernelchat's own code, so a changed install never talks to an
older server. The server's environment has no secrets (no *KEY*/*TOKEN*/*SECRET*/*PASSWORD* names).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from agent.core.backend import Backend, BackendError, Capabilities
from agent.core.dirs import runtime_dir
from agent.core.messages import Done, Message, Reply, StreamEvent, TextDelta
from agent.models.embedded import resolve_model_path

KEEP_ALIVE_DEFAULT = 300.0
PROTOCOL = 1
MAX_LINE = 64 << 20  # a reply line (a whole conversation in a Done) is far smaller
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
START_TIMEOUT = 600.0  # a first load of a big model from a slow disk
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux
EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


class ResidentUnavailable(RuntimeError):
    """No resident server can be used here (an unsafe runtime folder, a too long socket path)."""


def private_dir() -> Path:
    """runtime_dir(), made 0700 if missing; refused unless it is a real folder of this user that
    nobody else can enter (another user's socket there could answer for the model)."""
    path = runtime_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ResidentUnavailable(f"{path} is not a folder only this user can use (it is "
                                  f"{oct(st.st_mode & 0o777)}, owner {st.st_uid}); remove it or set XDG_RUNTIME_DIR")
    return path


def code_fingerprint() -> str:
    """kernelchat's code and the interpreter's packages as they are now: each source file's size and
    mtime (~80 stats), the interpreter, and the mtime of each site-packages folder (an install or
    upgrade changes it)."""
    h = hashlib.sha256(f"{PROTOCOL}\0{sys.executable}".encode())
    root = Path(__file__).resolve().parents[2]
    for pkg in ("agent", "tools"):
        for f in sorted((root / pkg).rglob("*.py")):
            st = f.stat()
            h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for entry in sys.path:
        if entry.endswith("site-packages") and os.path.isdir(entry):
            h.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\n".encode())
    return h.hexdigest()


def hub_snapshot(name: str) -> list[str]:
    """What the local Hugging Face cache points a Hub id at (its refs: the snapshot commits), so a
    newer download makes a new address; [] when the id is not cached."""
    from huggingface_hub.constants import HF_HUB_CACHE

    refs = Path(HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "refs"
    try:
        return [f"{r.name}={r.read_text().strip()}" for r in sorted(refs.iterdir()) if r.is_file()]
    except OSError:
        return []


@dataclass(frozen=True)
class Address:
    """Where the server for one model (its files, precision, kernelchat's code) listens and logs."""

    model: str
    path: str       # what the server loads (resolve_model_path)
    precision: str
    socket: Path

    @property
    def log(self) -> Path:
        """The server's output (removed at a clean exit); its lock is `<key>.lock` beside it."""
        return self.socket.with_suffix(".log")

    @classmethod
    def of(cls, model: str, path: str, precision: str = "auto") -> "Address":
        folder = private_dir()
        files = Path(path)
        marks = ([(str(p.relative_to(files)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in sorted(files.iterdir()) if p.is_file()] if files.is_dir() else hub_snapshot(path))
        key = hashlib.sha256(json.dumps([model, path, precision, marks, code_fingerprint()]).encode()).hexdigest()[:16]
        sock = folder / f"{key}.sock"
        if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
            raise ResidentUnavailable(f"the socket path {sock} is too long for a Unix socket; set XDG_RUNTIME_DIR "
                                      f"to a shorter folder")
        return cls(model, path, precision, sock)


def connect(sock_path: Path, timeout: float | None = None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock_path))
    except OSError:
        s.close()
        raise
    return s


def send(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def read_line(f: Any) -> dict[str, Any] | None:
    """One JSON object from the stream, None at its end."""
    line = f.readline(MAX_LINE)
    if not line:
        return None
    return json.loads(line)


def ask(sock_path: Path, request: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """One request, one answer."""
    with connect(sock_path, timeout) as s, s.makefile("rb") as f:
        send(s, request)
        answer = read_line(f)
    if answer is None:
        raise ConnectionError(f"the model server at {sock_path} closed the connection")
    if "error" in answer:
        raise BackendError(answer["error"])
    return answer


def server_env() -> dict[str, str]:
    """This environment without secrets, and with this kernelchat importable first."""
    env = {k: v for k, v in os.environ.items() if not SECRET_NAME.search(k)}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def prune(folder: Path, age: float = 86400.0) -> None:
    """Remove the lock and log files of servers gone for a day (each code change makes a new address)."""
    now = time.time()
    for f in [*folder.glob("*.lock"), *folder.glob("*.log")]:
        try:
            if not f.with_suffix(".sock").exists() and now - f.stat().st_mtime > age:
                f.unlink()
        except OSError:
            continue


def start_server(addr: Address, keep_alive: float) -> subprocess.Popen:
    """The server for `addr`, detached (its own session: Ctrl-C in this terminal does not stop it)."""
    prune(addr.socket.parent)
    fd = os.open(addr.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as log:
        return subprocess.Popen(
            # -P: not the working folder first on sys.path; NAME=VALUE: a value that starts with "-" stays a value
            [sys.executable, "-P", "-m", "agent.models.resident_server", f"--model={addr.model}",
             f"--path={addr.path}", f"--precision={addr.precision}", f"--socket={addr.socket}",
             f"--keep-alive={keep_alive}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=server_env(),
            cwd=str(addr.socket.parent), start_new_session=True, close_fds=True)


def log_tail(path: Path, lines: int = 8) -> str:
    """The end of a server's log, on one line: from its last exception's line on if it has one
    (not the traceback above it), else its last `lines` lines."""
    try:
        text = [line.strip() for line in path.read_text(errors="replace").strip().splitlines()]
    except OSError:
        return ""
    errors = [i for i, line in enumerate(text) if EXCEPTION_LINE.match(line)]
    return " ".join(t for t in text[errors[-1]:] if t) if errors else " | ".join(text[-lines:])


def wait_for_server(addr: Address, proc: subprocess.Popen, keep_alive: float,
                    timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Poll until the server answers `info`; a server that exits first is an error with its log
    (unless it exited because another one serves this address: then that one answers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask(addr.socket, {"op": "info"})
        except OSError:  # not there, refused, closed, timed out
            pass
        code = proc.poll()
        if code not in (None, 0):
            raise BackendError(f"the model server for {addr.model} failed to start (exit {code}): "
                               f"{log_tail(addr.log) or 'no output'} (log: {addr.log})")
        if code == 0 and not addr.socket.exists():  # it left to one that has gone since: start again
            proc = start_server(addr, keep_alive)
        if time.monotonic() > deadline:
            proc.kill()
            raise BackendError(f"the model server for {addr.model} did not answer within {timeout:.0f} s "
                               f"(log: {addr.log})")
        time.sleep(0.02)


class ResidentBackend(Backend):
    """The Backend protocol over the resident server of a local model (started when none runs).
    The command holds a connection for as long as it lives, so the server stays up while it is used
    and counts `keep_alive` from when the last command using it ended."""

    def __init__(self, model: str = "hf:smollm2", *, keep_alive: float = KEEP_ALIVE_DEFAULT,
                 precision: str = "auto", progress: bool = True) -> None:
        if not 0 < keep_alive < math.inf:
            raise ValueError(f"keep_alive must be a number of seconds > 0 for a resident model (0 means: load it "
                             f"in this process), got {keep_alive}")
        self.model, self.keep_alive = model, float(keep_alive)
        # A GGUF (an Ollama model's too) is converted, a Hub model downloaded, here with its progress
        # bar, before any server starts; each becomes a folder, whose files make the address: an Ollama
        # model's folder is keyed by its blob (a new pull, a new digest, a new folder), a Hub model's is
        # the snapshot of one commit.
        try:
            path = resolve_model_path(model, progress=progress)
        except FileNotFoundError as e:
            raise BackendError(str(e)) from None
        if os.path.exists(path):  # the server runs elsewhere
            path = os.path.abspath(path)
        self.address = Address.of(model, path, precision)
        self.started = False  # True: this command started the server (a cold start)
        self._hold: socket.socket | None = None
        self._hold_lock = threading.Lock()
        self._use(self._info_or_start())

    def _info_or_start(self) -> dict[str, Any]:
        try:
            return ask(self.address.socket, {"op": "info"})
        except OSError:  # not there, refused, closed, timed out
            pass
        self.started = True
        return wait_for_server(self.address, start_server(self.address, self.keep_alive), self.keep_alive)

    def _use(self, info: dict[str, Any]) -> None:
        self.pid: int = info["pid"]
        self.context_window: int = info["context_window"]
        self.capabilities = Capabilities(**info["capabilities"])
        self.tools_note: str | None = info.get("tools_note")
        self.device: str = info.get("device", "cpu")
        with self._hold_lock:
            if self._hold is not None:
                self._hold.close()
            self._hold = connect(self.address.socket, 30.0)
            send(self._hold, {"op": "hold", "keep_alive": self.keep_alive})

    def close(self) -> None:
        """Let go of the server (it then stays `keep_alive` seconds); the process's exit does the same."""
        with self._hold_lock:
            if self._hold is not None:
                self._hold.close()
                self._hold = None

    @contextmanager
    def _request(self, request: dict[str, Any]) -> Iterator[Any]:
        """A connection carrying `request`, restarting the server once if it is gone (killed, or
        stopped with `kernelchat models --stop`)."""
        try:
            s = connect(self.address.socket)
        except (FileNotFoundError, ConnectionRefusedError):
            self._use(self._info_or_start())
            s = connect(self.address.socket)
        with s, s.makefile("rb") as f:
            send(s, {**request, "keep_alive": self.keep_alive})
            yield f

    def _gone(self) -> BackendError:
        return BackendError(f"the model server for {self.model} (pid {self.pid}) stopped mid-reply; "
                            f"{log_tail(self.address.log, 4) or 'no output'} (log: {self.address.log})")

    def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
               max_tokens: int | None = None, temperature: float | None = None,
               numbers: set[str] | None = None, favour: str | None = None, bonus: float = 0.0,
               max_calls: int | None = None, **guides: Any) -> Iterator[StreamEvent]:
        request = {"op": "stream", "messages": [m.model_dump(mode="json") for m in messages], "tools": tools,
                   "max_tokens": max_tokens, "temperature": temperature,
                   "numbers": sorted(numbers) if numbers is not None else None, "favour": favour, "bonus": bonus,
                   "max_calls": max_calls}
        # Leaving this generator early (Ctrl-C, a budget) closes the connection: the server stops.
        with self._request(request) as f:
            while (event := self._read(f)) is not None:
                if "text" in event:
                    yield TextDelta(text=event["text"])
                elif "done" in event:
                    yield Done(reply=Reply.model_validate(event["done"]))
                    return
                elif "error" in event:
                    raise BackendError(event["error"])
        raise self._gone()

    def _read(self, f: Any) -> dict[str, Any] | None:
        """The next object from the server; a connection reset or a cut line is its end."""
        try:
            return read_line(f)
        except (OSError, ValueError):
            return None

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        with self._request({"op": "count", "messages": [m.model_dump(mode="json") for m in messages],
                            "tools": tools}) as f:
            answer = self._read(f)
        if answer is None:
            raise self._gone()
        if "error" in answer:
            raise BackendError(answer["error"])
        return int(answer["tokens"])


def servers(folder: Path | None = None) -> list[dict[str, Any]]:
    """The resident servers answering now (in runtime_dir(), or `folder`): their `info` (model, pid,
    memory, keep_alive, idle...) and socket."""
    try:
        folder = folder or private_dir()
    except (ResidentUnavailable, OSError):
        return []
    found = []
    for sock in sorted(folder.glob("*.sock")):
        try:
            found.append({**ask(sock, {"op": "info"}, timeout=5.0), "socket": str(sock)})
        except (OSError, ValueError, BackendError):
            continue  # a stale socket of a server that is gone
    return found


def stop_servers(model: str | None = None, wait: float = 10.0) -> list[dict[str, Any]]:
    """Stop the resident servers (of `model` only, if given) and wait (up to `wait` seconds each)
    until they no longer answer; returns the ones stopped."""
    stopped = []
    for info in servers():
        if model is None or info["model"] == model:
            sock = Path(info["socket"])
            try:
                ask(sock, {"op": "stop"}, timeout=10.0)
            except (OSError, ValueError, BackendError):
                continue
            deadline = time.monotonic() + wait
            while sock.exists() and time.monotonic() < deadline:  # it removes its socket as it leaves
                time.sleep(0.05)
            stopped.append(info)
    return stopped


__all__ = ["KEEP_ALIVE_DEFAULT", "ResidentBackend", "ResidentUnavailable", "servers", "stop_servers"]
