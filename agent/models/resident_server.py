"""The resident model server: one local model loaded once, answering kernelchat commands over a
Unix socket until `keep_alive` seconds after the last one let go (agent/models/resident.py is the
client and says why).

    python -m agent.models.resident_server --model hf:smollm2 --path DIR --folder-fd N --socket KEY.sock --keep-alive 300
    (--engine llama.cpp --path FILE.gguf: the GGUF on llama.cpp)

The runtime folder arrives as the descriptor the command checked (N), never as a path; the socket
is bound inside it through that descriptor, and every connection of another user is closed unread.

One JSON object per line. Requests (one per connection; each may carry "keep_alive"):
`info`, `hold` (kept open while a command lives), `count` (messages, tools -> tokens),
`stream` (messages, tools, max_tokens, temperature, numbers, favour, bonus, max_calls, constrain_calls -> {"text"}... then
{"done": Reply}; closing the connection stops the generation), `stop`. Errors: {"error": "..."}.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent.core.dirs import PrivateFolder
from agent.core.messages import Done, Message, TextDelta
from agent.models.engines import load_in_process
from agent.models.resident import Endpoint, ask, peer_uid, read_line, send

REQUEST_TIMEOUT = 30.0  # seconds for a connection's request line to arrive


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def fp16_ready(backend: Any) -> bool:
    """The weights are packed in fp16, or never will be (not a CPU fp16 model)."""
    packer = getattr(backend, "fp16", None)
    return packer is None or packer.swapped or packer.ready


class Server:
    """Serves one backend (transformers or llama.cpp; any Backend works) to this user's commands."""

    def __init__(self, backend: Any, model: str, endpoint: Endpoint, keep_alive: float,
                 engine: str = "transformers") -> None:
        self.backend, self.model, self.endpoint, self.engine = backend, model, endpoint, engine
        self.keep_alive = keep_alive
        self.started = time.time()
        self.users = 0        # connections open now (holds and requests): never exit under one
        self.deadline = time.monotonic() + keep_alive
        self.state = threading.Lock()
        self.stopping = threading.Event()
        self.ready = threading.Event()  # listening
        self.listener: socket.socket | None = None

    @property
    def sock_path(self) -> Path:
        """Where the socket is, for messages."""
        return self.endpoint.path

    # --- bookkeeping ---------------------------------------------------------------------------

    def enter(self) -> None:
        with self.state:
            self.users += 1

    def leave(self, keep_alive: float | None) -> None:
        with self.state:
            self.users -= 1
            self.deadline = max(self.deadline, time.monotonic() + (keep_alive or self.keep_alive))

    def idle_over(self) -> bool:
        with self.state:
            return self.users == 0 and time.monotonic() >= self.deadline

    def info(self, asking: int = 0) -> dict[str, Any]:
        """What `kernelchat models` shows; `users` less the `asking` connections."""
        b = self.backend
        caps = b.capabilities
        with self.state:
            users, left = self.users - asking, max(self.deadline - time.monotonic(), 0.0)
        return {"model": self.model, "pid": os.getpid(), "context_window": b.context_window,
                "capabilities": dataclasses.asdict(caps),
                "tools_note": b.tools_note, "device": getattr(b, "device", "cpu"), "engine": self.engine,
                "precision": getattr(b, "precision", None), "fp16_ready": fp16_ready(b),
                "rss_mb": round(rss_mb(), 1), "users": users, "idle_left_s": round(left, 1),
                "keep_alive": self.keep_alive, "started": self.started}

    # --- requests ------------------------------------------------------------------------------

    def handle(self, conn: socket.socket) -> None:
        self.enter()
        keep_alive = None
        try:
            with conn, conn.makefile("rb") as f:
                if peer_uid(conn) != os.getuid():
                    return  # only this user's commands
                conn.settimeout(REQUEST_TIMEOUT)  # a peer that never says what it wants does not hold the server
                request = read_line(f)
                conn.settimeout(None)
                if not isinstance(request, dict):
                    return
                keep_alive = request.get("keep_alive")
                keep_alive = (float(keep_alive) if isinstance(keep_alive, (int, float)) and 0 < keep_alive < math.inf
                              else None)
                try:
                    self.dispatch(conn, f, request)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the command went away
                except Exception as e:  # noqa: BLE001 - the command gets it as one line
                    try:
                        send(conn, {"error": f"{type(e).__name__}: {e}"})
                    except OSError:
                        pass
        except (OSError, ValueError):
            pass
        finally:
            self.leave(keep_alive)

    def dispatch(self, conn: socket.socket, f: Any, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "info":
            send(conn, self.info(asking=1))
        elif op == "hold":
            while f.read(1):  # until the command closes it (or exits)
                pass
        elif op == "count":
            messages = [Message.model_validate(m) for m in request.get("messages") or []]
            send(conn, {"tokens": self.backend.count_prompt_tokens(messages, request.get("tools"))})
        elif op == "stream":
            self.stream(conn, f, request)
        elif op == "stop":
            send(conn, {"stopped": os.getpid()})
            self.stopping.set()
        else:
            send(conn, {"error": f"unknown request {op!r}"})

    def stream(self, conn: socket.socket, f: Any, r: dict[str, Any]) -> None:
        messages = [Message.model_validate(m) for m in r.get("messages") or []]
        numbers = r.get("numbers")
        cancel = threading.Event()

        def watch() -> None:  # the command closing the connection (Ctrl-C, exit) stops the generation
            try:
                f.read(1)
            except (OSError, ValueError):
                pass
            cancel.set()

        threading.Thread(target=watch, daemon=True, name="kernelchat-watch").start()
        events = self.backend.stream(messages, r.get("tools"), max_tokens=r.get("max_tokens"),
                                     temperature=r.get("temperature"),
                                     numbers=set(numbers) if numbers is not None else None,
                                     favour=r.get("favour"), bonus=float(r.get("bonus") or 0.0),
                                     max_calls=int(r["max_calls"]) if r.get("max_calls") else None,
                                     constrain_calls=r.get("constrain_calls") if isinstance(r.get("constrain_calls"), bool)
                                     else None, cancel=cancel)
        try:
            for ev in events:
                if isinstance(ev, TextDelta):
                    send(conn, {"text": ev.text})
                elif isinstance(ev, Done):
                    send(conn, {"done": ev.reply.model_dump(mode="json")})
        finally:
            cancel.set()
            events.close()

    # --- the loop ------------------------------------------------------------------------------

    def serve(self) -> None:
        folder, name = self.endpoint.folder, self.endpoint.name
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        folder.unlink(name)  # a dead server's (we hold the address's lock)
        old = os.umask(0o177)  # the socket is born 0600
        try:
            listener.bind(folder.entry(name))
        finally:
            os.umask(old)
        listener.listen(16)
        listener.settimeout(0.5)
        ino = folder.lstat(name).st_ino
        print(f"serving {self.model} on {self.sock_path} (pid {os.getpid()}, keep_alive {self.keep_alive:g} s)",
              flush=True)
        self.ready.set()
        try:
            while not self.stopping.is_set() and not self.idle_over():
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    continue
                conn.settimeout(None)
                threading.Thread(target=self.handle, args=(conn,), daemon=True, name="kernelchat-conn").start()
        finally:
            listener.close()
            try:
                if folder.lstat(name).st_ino == ino:
                    folder.unlink(name)
            except OSError:
                pass
        print(f"stopped ({'asked to' if self.stopping.is_set() else 'idle'})", flush=True)
        folder.unlink(Path(name).with_suffix(".log").name)  # a clean exit: nothing to read there


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.models.resident_server")
    p.add_argument("--model", required=True)
    p.add_argument("--path", required=True, help="what to load (the model resolved by the client)")
    p.add_argument("--engine", choices=("transformers", "llama.cpp"), default="transformers")
    p.add_argument("--precision", default="auto")
    p.add_argument("--folder-fd", type=int, required=True, help="the runtime folder, open (checked again here)")
    p.add_argument("--socket", required=True, help="the socket's name in that folder")
    p.add_argument("--keep-alive", type=float, default=300.0)
    args = p.parse_args(argv)
    if Path(args.socket).name != args.socket or not args.socket.endswith(".sock"):
        p.error(f"--socket must be a name ending in .sock, not a path: {args.socket!r}")
    folder = PrivateFolder(args.folder_fd, Path(os.readlink(f"/proc/self/fd/{args.folder_fd}")))
    os.fchdir(folder.fd)  # nobody else can make a name in the working folder
    endpoint = Endpoint(folder, args.socket)
    lock = folder.open_file(Path(args.socket).with_suffix(".lock").name, os.O_RDWR | os.O_CREAT)
    deadline = time.monotonic() + 60
    while True:  # one server per address; one that is exiting (idle) holds the lock a moment longer
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            try:
                ask(endpoint, {"op": "info"}, timeout=5.0)
                print("another server serves this model; exiting", flush=True)
                return 0
            except (OSError, ValueError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    if args.engine == "llama.cpp":
        backend = load_in_process(args.model, "llama.cpp", args.path)
    else:
        from agent.models.transformers_backend import TransformersBackend  # torch and transformers: seconds

        backend = TransformersBackend(args.path, precision=args.precision, progress=False)
        backend.model = args.model  # replies and notes name the model as the user did
    Server(backend, args.model, endpoint, args.keep_alive, args.engine).serve()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown of torch (seconds); the fp16 packing thread just stops
