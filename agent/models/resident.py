"""A local model kept loaded between commands, in a background process (as Ollama's `keep_alive`).

Most of a one-shot `kernelchat "..."` on a local model is spent importing torch and transformers
and loading the weights, not answering. The command line therefore asks a resident model server
(agent/models/resident_server.py) for the model: the first command starts it, later ones connect
in milliseconds and find the weights loaded, packed in fp16, and the KV cache of the last prompt
(the system prompt is shared). It exits `keep_alive` seconds after the last command using it ended
(default 300; 0 keeps the model in the command's own process, as the Python API does by default).

`ResidentBackend` is the Backend protocol over that server and imports neither torch nor
transformers. The server speaks one JSON object per line over a Unix socket in a folder only this
user can enter (runtime_dir(), 0700, checked, never inside the workspace). The command holds that
folder open and reaches the socket through the descriptor (a folder swapped above it changes
nothing); on every connection each side checks the other is this user (SO_PEERCRED), and the client
checks the socket is this user's and 0600, so an impostor never reads a prompt nor writes a reply:
the model then loads in the command, with one warning. Its address is a hash of the model, its files
and kernelchat's own code, so a changed install never talks to an older server. The server's
environment has no secrets (no *KEY*/*TOKEN*/*SECRET*/*PASSWORD* names), and its command line none.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from agent.core.backend import Backend, BackendError, Capabilities
from agent.models.pricing import Price
from agent.core.dirs import PrivateFolder, UnsafeFolder, overlaps, runtime_dir
from agent.core.messages import Done, Message, Reply, StreamEvent, TextDelta
from agent.models.embedded import gguf_file, resolve_model_path
from agent.models.engines import load_in_process
from sandbox.isolation import python_roots
from sandbox.safefs import kind

KEEP_ALIVE_DEFAULT = 300.0
PROTOCOL = 1
MAX_LINE = 64 << 20  # a reply line (a whole conversation in a Done) is far smaller
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
START_TIMEOUT = 600.0  # a first load of a big model from a slow disk
LOG_TAIL_BYTES = 64 << 10  # what log_tail reads of a server's log
EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


class ResidentUnavailable(RuntimeError):
    """No resident server can be used here (an unsafe runtime folder, a socket or server that is
    not this user's); the message is one sentence, and the model loads in the command instead."""


def open_folder(path: Path, *, create: bool = False) -> PrivateFolder:
    """`path` held open, if it is a real folder of this user that nobody else can enter (another
    user's socket there could answer for the model)."""
    try:
        return PrivateFolder.open(path, create=create)
    except UnsafeFolder as e:
        raise ResidentUnavailable(str(e)) from None


def runtime_folder(workspace: str | os.PathLike | None = None) -> PrivateFolder:
    """runtime_dir(), made 0700 if missing, held open; refused where the sandbox could reach it: where
    it overlaps `workspace` (the code could reach the socket, or plant one), or lies in the Python
    environment the sandbox mounts (read-only, but a socket there still connects)."""
    path = runtime_dir()
    if workspace is not None and overlaps(path, Path(workspace)):
        raise ResidentUnavailable(f"the runtime folder {path} overlaps the workspace {workspace}, where the "
                                  f"sandboxed code could reach the model server; set XDG_RUNTIME_DIR to a folder "
                                  f"outside it")
    for root in python_roots():
        if path.resolve().is_relative_to(root):
            raise ResidentUnavailable(f"the runtime folder {path} lies in {root}, which the sandbox mounts, so its "
                                      f"code could reach the model server; set XDG_RUNTIME_DIR to a folder outside it")
    return open_folder(path, create=True)


def peer_uid(conn: socket.socket) -> int:
    """The user of the process at the other end (Linux SO_PEERCRED: pid, uid, gid)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


@dataclass(frozen=True)
class Endpoint:
    """A server's socket: a name in the held runtime folder."""

    folder: PrivateFolder
    name: str

    @property
    def path(self) -> Path:
        """Where it is, for messages (connections go through the folder's descriptor)."""
        return self.folder.path / self.name

    def exists(self) -> bool:
        try:
            self.folder.lstat(self.name)
            return True
        except FileNotFoundError:
            return False

    def connect(self, timeout: float | None = None) -> socket.socket:
        """A connection to the server, checked before a byte is sent: the socket is this user's and
        0600, and the process listening on it is this user's. No socket there: FileNotFoundError;
        a dead server's: ConnectionRefusedError; anything else there: ResidentUnavailable."""
        st = self.folder.lstat(self.name)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ResidentUnavailable(f"{self.path} is {kind(st)} (mode {oct(st.st_mode & 0o777)}, owner uid "
                                      f"{st.st_uid}), not a socket only this user can use; remove it")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.folder.entry(self.name))
            uid = peer_uid(s)
        except OSError:
            s.close()
            raise
        if uid != os.getuid():
            s.close()
            raise ResidentUnavailable(f"the model server at {self.path} runs as uid {uid}, not as this user "
                                      f"(uid {os.getuid()}); it is not kernelchat's: remove {self.path}")
        return s


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
    """Where the server for one model (its files, engine, precision, kernelchat's code) listens and logs."""

    model: str
    path: str       # what the server loads: a folder (transformers) or a GGUF file (llama.cpp)
    precision: str
    endpoint: Endpoint
    engine: str = "transformers"

    @property
    def socket(self) -> Path:
        return self.endpoint.path

    @property
    def log_name(self) -> str:
        """The server's output (removed at a clean exit); its lock is `<key>.lock` beside it."""
        return Path(self.endpoint.name).with_suffix(".log").name

    @property
    def log(self) -> Path:
        return self.endpoint.folder.path / self.log_name

    @classmethod
    def of(cls, model: str, path: str, precision: str = "auto", *, engine: str = "transformers",
           workspace: str | os.PathLike | None = None) -> "Address":
        folder = runtime_folder(workspace)
        files = Path(path)
        if files.is_dir():
            marks: list[Any] = [(str(p.relative_to(files)), p.stat().st_size, p.stat().st_mtime_ns)
                                for p in sorted(files.iterdir()) if p.is_file()]
        elif files.is_file():  # a GGUF: a new download or edit, a new address
            marks = [(files.name, files.stat().st_size, files.stat().st_mtime_ns)]
        else:
            marks = hub_snapshot(path)
        key = hashlib.sha256(json.dumps([model, path, engine, precision, marks, code_fingerprint()]).encode()
                             ).hexdigest()[:16]
        return cls(model, path, precision, Endpoint(folder, f"{key}.sock"), engine)


def send(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def read_line(f: Any) -> dict[str, Any] | None:
    """One JSON object from the stream, None at its end."""
    line = f.readline(MAX_LINE)
    if not line:
        return None
    return json.loads(line)


def ask(where: Endpoint | Path, request: dict[str, Any], timeout: float | None = 30.0) -> dict[str, Any]:
    """One request, one answer (`where`: an endpoint, or a socket's path, whose folder is then
    opened and checked for this request)."""
    if not isinstance(where, Endpoint):
        where = Endpoint(open_folder(Path(where).parent), Path(where).name)
    with where.connect(timeout) as s, s.makefile("rb") as f:
        send(s, request)
        answer = read_line(f)
    if answer is None:
        raise ConnectionError(f"the model server at {where.path} closed the connection")
    if "error" in answer:
        raise BackendError(answer["error"])
    return answer


def server_env() -> dict[str, str]:
    """This environment without secrets, and with this kernelchat importable first."""
    env = {k: v for k, v in os.environ.items() if not SECRET_NAME.search(k)}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def prune(folder: PrivateFolder, age: float = 86400.0) -> None:
    """Remove the lock and log files of servers gone for a day (each code change makes a new address)."""
    now = time.time()
    names = folder.names()
    for name in names:
        stem, _, suffix = name.rpartition(".")
        try:
            if suffix in ("lock", "log") and f"{stem}.sock" not in names and now - folder.lstat(name).st_mtime > age:
                folder.unlink(name)
        except OSError:
            continue


def start_server(addr: Address, keep_alive: float) -> subprocess.Popen:
    """The server for `addr`, detached (its own session: Ctrl-C in this terminal does not stop it).
    It gets the runtime folder as the descriptor this command checked, never its path."""
    folder = addr.endpoint.folder
    prune(folder)
    fd = folder.open_file(addr.log_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with open(fd, "wb") as log:
        return subprocess.Popen(
            # -P: not the working folder first on sys.path; NAME=VALUE: a value that starts with "-" stays a value
            [sys.executable, "-P", "-m", "agent.models.resident_server", f"--model={addr.model}",
             f"--path={addr.path}", f"--engine={addr.engine}", f"--precision={addr.precision}",
             f"--folder-fd={folder.fd}",
             f"--socket={addr.endpoint.name}", f"--keep-alive={keep_alive}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=server_env(),
            pass_fds=(folder.fd,), start_new_session=True, close_fds=True)


def log_tail(addr: Address, lines: int = 8) -> str:
    """The end of a server's log, on one line: from its last exception's line on if it has one
    (not the traceback above it), else its last `lines` lines."""
    try:
        fd = addr.endpoint.folder.open_file(addr.log_name, os.O_RDONLY)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ""
            f.seek(max(os.fstat(fd).st_size - LOG_TAIL_BYTES, 0))
            text = [line.strip() for line in f.read(LOG_TAIL_BYTES).decode(errors="replace").strip().splitlines()]
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
            return ask(addr.endpoint, {"op": "info"})
        except OSError:  # not there, refused, closed, timed out
            pass
        except ResidentUnavailable:  # something not ours answers there: ours must not stay
            proc.kill()
            raise
        code = proc.poll()
        if code not in (None, 0):
            raise BackendError(f"the model server for {addr.model} failed to start (exit {code}): "
                               f"{log_tail(addr) or 'no output'} (log: {addr.log})")
        if code == 0 and not addr.endpoint.exists():  # it left to one that has gone since: start again
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

    price = Price()  # on this machine: free, any money budget holds

    def __init__(self, model: str = "hf:smollm2", *, keep_alive: float = KEEP_ALIVE_DEFAULT,
                 precision: str = "auto", progress: bool = True,
                 workspace: str | os.PathLike | None = None, engine: str = "transformers") -> None:
        """`workspace`: the sandbox's, which the runtime folder must stay out of. `engine`: what the
        server runs the model on ("transformers" or "llama.cpp"). ResidentUnavailable (one
        sentence): no server can be used safely here; load the model in the command instead."""
        if not 0 < keep_alive < math.inf:
            raise ValueError(f"keep_alive must be a number of seconds > 0 for a resident model (0 means: load it "
                             f"in this process), got {keep_alive}")
        self.model, self.keep_alive, self.engine = model, float(keep_alive), engine
        # On llama.cpp the GGUF file is loaded as it is. Otherwise a GGUF (an Ollama model's too) is converted, a Hub model downloaded, here with its progress
        # bar, before any server starts; each becomes a folder, whose files make the address: an Ollama
        # model's folder is keyed by its blob (a new pull, a new digest, a new folder), a Hub model's is
        # the snapshot of one commit.
        try:
            path = str(gguf_file(model)) if engine == "llama.cpp" else resolve_model_path(model, progress=progress)
        except FileNotFoundError as e:
            raise BackendError(str(e)) from None
        if os.path.exists(path):  # the server runs elsewhere
            path = os.path.abspath(path)
        self.address = Address.of(model, path, precision, engine=engine, workspace=workspace)
        self.progress = progress
        self.started = False  # True: this command started the server (a cold start)
        self.local: Backend | None = None  # the model loaded here, after the server stopped being safe
        self._hold: socket.socket | None = None
        self._hold_lock = threading.Lock()
        self._use(self._info_or_start())

    def _info_or_start(self) -> dict[str, Any]:
        try:
            return ask(self.address.endpoint, {"op": "info"})
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
            self._hold = self.address.endpoint.connect(30.0)
            send(self._hold, {"op": "hold", "keep_alive": self.keep_alive})

    def close(self) -> None:
        """Let go of the server (it then stays `keep_alive` seconds); the process's exit does the same."""
        with self._hold_lock:
            if self._hold is not None:
                self._hold.close()
                self._hold = None

    def _fall_back(self, why: ResidentUnavailable) -> Backend:
        """The model loaded in this process from now on, said once as a warning."""
        warnings.warn(f"the model is loaded in this process: {why}", stacklevel=2)
        self.close()
        self.local = load_in_process(self.model, self.engine, progress=self.progress)
        return self.local

    @contextmanager
    def _request(self, request: dict[str, Any]) -> Iterator[Any]:
        """A connection carrying `request`, restarting the server once if it is gone (killed, or
        stopped with `kernelchat models --stop`); None where no server can be used safely any more
        (the model is then loaded here, in `self.local`)."""
        try:
            try:
                s = self.address.endpoint.connect()
            except (FileNotFoundError, ConnectionRefusedError):
                self._use(self._info_or_start())
                s = self.address.endpoint.connect()
        except ResidentUnavailable as e:
            self._fall_back(e)
            yield None
            return
        with s, s.makefile("rb") as f:
            send(s, {**request, "keep_alive": self.keep_alive})
            yield f

    def _gone(self) -> BackendError:
        # A killed server's socket may accept a moment longer while the process exits: wait (1 s at
        # most) until it refuses, so that the next request starts a new server rather than lose to it.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                self.address.endpoint.connect(1.0).close()
            except (OSError, ResidentUnavailable):
                break
            time.sleep(0.02)
        return BackendError(f"the model server for {self.model} (pid {self.pid}) stopped mid-reply; "
                            f"{log_tail(self.address, 4) or 'no output'} (log: {self.address.log})")

    def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
               max_tokens: int | None = None, temperature: float | None = None,
               numbers: set[str] | None = None, favour: str | None = None, bonus: float = 0.0,
               max_calls: int | None = None, constrain_calls: bool | None = None,
               **guides: Any) -> Iterator[StreamEvent]:
        request = {"op": "stream", "messages": [m.model_dump(mode="json") for m in messages], "tools": tools,
                   "max_tokens": max_tokens, "temperature": temperature,
                   "numbers": sorted(numbers) if numbers is not None else None, "favour": favour, "bonus": bonus,
                   "max_calls": max_calls, "constrain_calls": constrain_calls}
        if self.local is None:
            # Leaving this generator early (Ctrl-C, a budget) closes the connection: the server stops.
            with self._request(request) as f:
                if f is not None:
                    while (event := self._read(f)) is not None:
                        if "text" in event:
                            yield TextDelta(text=event["text"])
                        elif "done" in event:
                            yield Done(reply=Reply.model_validate(event["done"]))
                            return
                        elif "error" in event:
                            raise BackendError(event["error"])
                    raise self._gone()
        yield from self.local.stream(messages, tools, max_tokens=max_tokens, temperature=temperature,
                                     numbers=numbers, favour=favour, bonus=bonus, max_calls=max_calls,
                                     constrain_calls=constrain_calls, **guides)

    def _read(self, f: Any) -> dict[str, Any] | None:
        """The next object from the server; a connection reset or a cut line is its end."""
        try:
            return read_line(f)
        except (OSError, ValueError):
            return None

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        if self.local is None:
            with self._request({"op": "count", "messages": [m.model_dump(mode="json") for m in messages],
                                "tools": tools}) as f:
                answer = self._read(f) if f is not None else None
            if f is not None:
                if answer is None:
                    raise self._gone()
                if "error" in answer:
                    raise BackendError(answer["error"])
                return int(answer["tokens"])
        return self.local.count_prompt_tokens(messages, tools)


def answering(folder: Path | None = None) -> list[tuple[Endpoint, dict[str, Any]]]:
    """The resident servers answering now in runtime_dir() (or `folder`), with their `info`."""
    try:
        held = open_folder(folder) if folder else runtime_folder()
    except ResidentUnavailable:
        return []
    found = []
    for name in sorted(held.names()):
        if name.endswith(".sock"):
            endpoint = Endpoint(held, name)
            try:
                found.append((endpoint, ask(endpoint, {"op": "info"}, timeout=5.0)))
            except (OSError, ValueError, BackendError, ResidentUnavailable):
                continue  # a stale socket of a server that is gone (or not one of ours)
    return found


def servers(folder: Path | None = None) -> list[dict[str, Any]]:
    """The resident servers answering now (in runtime_dir(), or `folder`): their `info` (model, pid,
    memory, keep_alive, idle...) and socket."""
    return [{**info, "socket": str(endpoint.path)} for endpoint, info in answering(folder)]


def stop_servers(model: str | None = None, wait: float = 10.0) -> list[dict[str, Any]]:
    """Stop the resident servers (of `model` only, if given) and wait (up to `wait` seconds each)
    until they no longer answer; returns the ones stopped."""
    stopped = []
    for endpoint, info in answering():
        if model is None or info["model"] == model:
            try:
                ask(endpoint, {"op": "stop"}, timeout=10.0)
            except (OSError, ValueError, BackendError, ResidentUnavailable):
                continue
            deadline = time.monotonic() + wait
            while endpoint.exists() and time.monotonic() < deadline:  # it removes its socket as it leaves
                time.sleep(0.05)
            stopped.append({**info, "socket": str(endpoint.path)})
    return stopped


__all__ = ["KEEP_ALIVE_DEFAULT", "ResidentBackend", "ResidentUnavailable", "servers", "stop_servers"]
