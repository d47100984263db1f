"""The client side of a Jupyter Kernel Gateway: its REST API (`GatewayRest`) and one kernel's
websocket of Jupyter messages (`KernelChannels`), with errors in words. Used by `GatewayKernel`."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone
from typing import Any

import websocket  # websocket-client: a synchronous client with a reader thread fits the blocking Kernel

from .base import KernelError

ENV_URL, ENV_TOKEN, ENV_KERNEL = "KERNELCHAT_GATEWAY_URL", "KERNELCHAT_GATEWAY_TOKEN", "KERNELCHAT_GATEWAY_KERNEL"
# Linux acknowledges received data late (delayed ACK, ~40 ms); the stock gateway's websocket has
# Nagle on, so every reply frame after the first waits for our ACK. Quick ACKs remove that wait
# from our side; the kernel must re-arm it before each read (Linux clears it by itself).
QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class GatewayError(KernelError):
    """The gateway refused a request, or could not be reached."""


class KernelGone(Exception):
    """The kernel no longer exists on the gateway (404)."""


class GatewayRest:
    """The gateway's REST API, with errors in words."""

    def __init__(self, url: str, token: str | None, timeout: float):
        self.url, self.token, self.timeout = url, token, timeout

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = f"token {self.token}"
        return h

    def __call__(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.url + path, data=data, headers=self.headers(), method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            try:
                detail = json.loads(detail).get("message") or detail
            except (ValueError, AttributeError):
                pass
            if e.code in (401, 403) and "Resource Limit" not in detail:
                raise GatewayError(f"the kernel gateway at {self.url} refused the token (HTTP {e.code}): "
                                   f"pass the right one with gateway_token= / --gateway-token-file / {ENV_TOKEN}") from None
            if e.code == 404 and path.startswith("/api/kernels/"):
                raise KernelGone(path) from None
            raise GatewayError(f"the kernel gateway at {self.url} answered {method} {path} with HTTP {e.code}: "
                               f"{detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise GatewayError(f"cannot reach the kernel gateway at {self.url} ({reason}); is it running, "
                               f"and is the URL right (gateway_url= / --gateway / {ENV_URL})?") from None
        return json.loads(raw) if raw else None


class KernelChannels:
    """One websocket to a kernel; a reader thread puts each message (a dict) on `inbox`,
    then None once the connection is gone."""

    def __init__(self, url: str, headers: list[str], timeout: float, quickack: bool = True):
        self.inbox: queue.Queue[dict | None] = queue.Queue()
        self.session = uuid.uuid4().hex
        self.quickack = quickack and QUICKACK is not None
        self._send_lock = threading.Lock()
        try:
            self.ws = websocket.create_connection(
                f"{url}?session_id={self.session}", header=headers, timeout=timeout,
                sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])  # our small frames go at once
        except websocket.WebSocketBadStatusException as e:
            if e.status_code in (401, 403):
                raise GatewayError(f"the kernel gateway refused the token on the websocket (HTTP {e.status_code})") from None
            raise GatewayError(f"the kernel gateway refused the websocket {url} (HTTP {e.status_code})") from None
        except (OSError, websocket.WebSocketException) as e:
            raise GatewayError(f"cannot open the kernel's websocket {url}: {e}") from None
        self.ws.settimeout(None)
        self.closed = False
        threading.Thread(target=self._read, daemon=True, name="kernelchat-gateway-ws").start()

    def _read(self) -> None:
        sock = self.ws.sock
        try:
            while True:
                if self.quickack:
                    sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
                raw = self.ws.recv()
                if not raw:  # a close frame
                    break
                try:
                    msg = json.loads(raw)
                except (ValueError, RecursionError):  # a hostile kernel or server sent garbage: drop it
                    continue
                # Only messages with the shape the readers index (dict header and content) get in.
                if isinstance(msg, dict) and isinstance(msg.get("parent_header"), dict) \
                        and isinstance(msg.get("content"), dict) and isinstance(msg.get("msg_type"), str):
                    self.inbox.put(msg)
        except Exception:  # noqa: BLE001 - any failure means the connection is gone
            pass
        self.closed = True
        self.inbox.put(None)

    def send(self, msg_type: str, content: dict, channel: str = "shell") -> str:
        msg_id = uuid.uuid4().hex
        msg = {"header": {"msg_id": msg_id, "msg_type": msg_type, "username": "kernelchat", "session": self.session,
                          "date": datetime.now(timezone.utc).isoformat(), "version": "5.3"},
               "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": []}
        with self._send_lock:
            try:
                self.ws.send(json.dumps(msg))
            except (OSError, websocket.WebSocketException):
                self.closed = True
                self.inbox.put(None)
        return msg_id

    def execute(self, code: str, *, silent: bool = False, store_history: bool = True,
                user_expressions: dict[str, str] | None = None) -> str:
        return self.send("execute_request", {"code": code, "silent": silent, "store_history": store_history,
                                             "user_expressions": user_expressions or {}, "allow_stdin": False,
                                             "stop_on_error": False})

    def reply(self, msg_id: str, timeout: float) -> dict | None:
        """The shell reply to `msg_id`; None when the connection closed or time ran out."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.inbox.get(timeout=left)
            except queue.Empty:
                return None
            if msg is None or died_status(msg):
                self.inbox.put(msg)  # keep the news for the next reader
                return None
            if msg.get("channel") == "shell" and msg["parent_header"].get("msg_id") == msg_id:
                return msg
        return None

    def close(self) -> None:
        self.closed = True
        try:
            self.ws.abort()  # wakes the reader thread
            self.ws.shutdown()
        except Exception:  # noqa: BLE001
            pass


def died_status(msg: dict) -> bool:
    """The gateway's own notice that the kernel process died (it restarts it, or gives up)."""
    return (msg.get("msg_type") == "status" and not msg.get("parent_header")
            and msg["content"].get("execution_state") in ("restarting", "dead"))
