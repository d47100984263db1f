"""`kernelchat mcp`: the sandboxed kernel as an MCP server (the official SDK's MCPServer).

    kernelchat mcp                              stdio: what Claude Desktop, Cursor and VS Code launch
    kernelchat mcp --http 127.0.0.1:8765        streamable HTTP at http://127.0.0.1:8765/mcp

Tools (agent/frontends/mcp_tools.py): run_code, interrupt, restart, list_files, read_file,
write_file, kernel_state. Each MCP session has a kernel of its own, started on first use with the
sandbox flags (and the configuration file's [sandbox]), closed when the session ends: over stdio
when stdin closes or the process is stopped; over HTTP when the client ends the session (DELETE) or
it has been idle for --idle-timeout seconds. Over HTTP a bearer token is required: $KERNELCHAT_MCP_TOKEN
or --token-file (never a command line: others see it in `ps`), else one is generated and printed on
stderr, once. A host other than loopback needs --allow-remote. The server promises what the
sandbox promises (docs/mcp.md), nothing more.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import math
import os
import secrets
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from agent.frontends.options import add_sandbox_args, check_sandbox_options, kernel_options, read_secret

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken
    from mcp.server.mcpserver import MCPServer

    from agent.frontends.mcp_tools import SessionKernels

TOKEN_ENV = "KERNELCHAT_MCP_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_IDLE_S = 1800.0  # the SDK's default session idle timeout (30 min)
IDLE_MARGIN_S = 5.0  # a kernel outlives its idle session by this much: the SDK ends the session first
REAP_EVERY_S = 1.0
REFUSED = (401, 403, 404)  # answers that say nothing about a session's use (bad token, unknown session)

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def register(sub: Any) -> argparse.ArgumentParser:
    """The `mcp` subcommand's parser (cli.py applies the configuration file's sandbox values)."""
    # No abbreviations: `--token SECRET` must be refused, not taken for `--token-file` (and quoted).
    p = sub.add_parser("mcp", help="the sandboxed kernel as an MCP server (stdio, or streamable HTTP)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("transport")
    g.add_argument("--http", metavar="HOST:PORT", default=None,
                   help=f"serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (HOST defaults to "
                        f"{DEFAULT_HOST}: PORT alone will do)")
    g.add_argument("--token-file", metavar="FILE", default=None,
                   help=f"a file holding the bearer token HTTP clients must send (default ${TOKEN_ENV}, else a "
                        "generated one, printed on stderr); not the token itself: a command line is public")
    g.add_argument("--allow-remote", action="store_true",
                   help="let --http listen on a host other than loopback (the token is then all that guards it)")
    g.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_S, metavar="SECONDS",
                   help=f"over HTTP: end a session (and stop its kernel) after this long unused "
                        f"(default {DEFAULT_IDLE_S:g})")
    add_sandbox_args(p)
    p.set_defaults(func=cmd_mcp)
    return p


# -- checked before anything starts ----------------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, `:PORT` or `PORT` as (host, port); ValueError in one sentence."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = "", text.strip()
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--http {text}: give HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:8765")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


def check_http(args: argparse.Namespace) -> tuple[str, int, str, bool]:
    """(host, port, token, generated) for --http; ValueError in one sentence."""
    host, port = parse_address(args.http)
    if not is_loopback(host) and not args.allow_remote:
        raise ValueError(f"--http {args.http} would let other machines run code in the kernel; listen on "
                         f"{DEFAULT_HOST}, or add --allow-remote if that is meant (the token then guards it)")
    if not math.isfinite(args.idle_timeout) or args.idle_timeout <= 0:
        raise ValueError(f"--idle-timeout must be a number of seconds greater than 0, got {args.idle_timeout}")
    token = read_token_file(args.token_file) if args.token_file is not None else os.environ.get(TOKEN_ENV)
    if token is not None and len(token.strip()) < 16:
        raise ValueError(f"the token (--token-file or ${TOKEN_ENV}) must be at least 16 characters long")
    if token is None:
        return host, port, secrets.token_urlsafe(32), True
    return host, port, token.strip(), False


def read_token_file(path: str) -> str:
    """The token in `path` (its first line); ValueError in one sentence."""
    try:
        return read_secret(path)
    except ValueError as e:
        raise ValueError(f"--token-file: {e}") from None


def say(message: str) -> None:
    """A line for the operator, on stderr (stdout is the MCP stream over stdio)."""
    print(f"kernelchat mcp: {message}", file=sys.stderr, flush=True)


# -- the command -----------------------------------------------------------------------------------


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve until stdin closes (stdio) or the process is stopped (HTTP)."""
    check_sandbox_options(args)
    http = check_http(args) if args.http else None
    if http is None and (args.token_file or args.allow_remote):
        raise ValueError("--token-file and --allow-remote are for --http; over stdio the client that launches the "
                         "server is its only user")
    options = kernel_options(args)
    import anyio

    from agent.frontends.mcp_tools import SessionKernels

    kernels = SessionKernels(options, say)
    if http is None:
        signal.signal(signal.SIGTERM, stop_on_signal)  # a clean stop: the kernel is closed (cli.run: any left)
        anyio.run(serve_stdio, kernels)
        return 0
    host, port, token, generated = http
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/mcp"
    say(f"serving at {url}" + (f"; bearer token (generated, shown once): {token}" if generated else
                                "; clients send the bearer token you gave"))
    anyio.run(serve_http, kernels, host, port, token, args.idle_timeout)
    return 0


def stop_on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


async def serve_stdio(kernels: "SessionKernels") -> None:
    """Serve over stdin/stdout until stdin closes; then the kernel is stopped."""
    from agent.frontends.mcp_tools import build_server

    server = build_server(kernels)
    try:
        await server.run_stdio_async()
    finally:
        await kernels.close_all()


# -- HTTP: the token and the sessions --------------------------------------------------------------


class BearerToken:
    """The SDK's TokenVerifier for one shared secret, compared in constant time."""

    def __init__(self, token: str):
        self.secret = token.encode()

    async def verify_token(self, token: str) -> "AccessToken | None":
        from mcp.server.auth.provider import AccessToken

        if hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self.secret):
            return AccessToken(token="bearer", client_id="kernelchat", scopes=[])
        return None


def session_of(scope: Scope) -> str:
    """The request's Mcp-Session-Id ("" without one)."""
    for name, value in scope.get("headers", ()):
        if name == b"mcp-session-id":
            return value.decode("latin-1")
    return ""


class SessionActivity:
    """ASGI middleware that watches each MCP session's requests (public headers only): a session is
    active while a request of it is in flight or one ended less than `idle` seconds ago, and ends
    at once when the client DELETEs it. Refused requests (bad token, unknown session) do not count."""

    def __init__(self, app: ASGIApp, idle: float):
        self.app, self.idle = app, idle
        self.in_flight: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self.ended: set[str] = set()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key, status = session_of(scope), [0]

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        try:
            await self.app(scope, receive, watch)
        finally:
            self.in_flight[key] -= 1
            if not self.in_flight[key]:
                del self.in_flight[key]
            if status[0] and status[0] not in REFUSED:
                self.last[key] = time.monotonic()
                if key and scope.get("method") == "DELETE" and status[0] < 300:
                    self.ended.add(key)

    def active(self, key: str) -> bool:
        if key in self.ended:
            return False
        return key in self.in_flight or time.monotonic() - self.last.get(key, -math.inf) < self.idle

    def forget(self, key: str) -> None:
        self.ended.discard(key)
        self.last.pop(key, None)


async def reap(kernels: "SessionKernels", activity: SessionActivity) -> None:
    """Stop the kernels of sessions that ended or went idle; forget idle sessions that had none."""
    import anyio

    while True:
        await anyio.sleep(REAP_EVERY_S)
        for key in list(kernels.kernels):
            if not activity.active(key):
                await kernels.close(key)
                activity.forget(key)
        for key in [k for k in activity.last if k not in kernels.kernels and not activity.active(k)]:
            activity.forget(key)


def http_server(kernels: "SessionKernels", host: str, port: int, token: str) -> "MCPServer":
    from mcp.server.auth.settings import AuthSettings

    from agent.frontends.mcp_tools import build_server

    shown = f"[{host}]" if ":" in host else host
    auth = AuthSettings(issuer_url=f"http://{shown}:{port}", resource_server_url=None)
    return build_server(kernels, token_verifier=BearerToken(token), auth=auth)


async def serve_http(kernels: "SessionKernels", host: str, port: int, token: str, idle: float) -> None:
    """Serve streamable HTTP until SIGINT/SIGTERM; then every session's kernel is stopped."""
    import anyio
    import uvicorn

    app = http_server(kernels, host, port, token).streamable_http_app(host=host, session_idle_timeout=idle)
    activity = SessionActivity(app, idle + IDLE_MARGIN_S)
    server = uvicorn.Server(uvicorn.Config(activity, host=host, port=port, log_level="warning", lifespan="on"))
    # uvicorn stops on SIGINT/SIGTERM and then raises the signal again through the handler it found:
    # these do nothing, so the kernels are closed below rather than the process killed.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    failed = False
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reap, kernels, activity)
            try:
                await server.serve()
            except SystemExit:  # uvicorn's answer to an address it cannot bind
                failed = True
            tg.cancel_scope.cancel()
    finally:
        await kernels.close_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed or not server.started:
        raise OSError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")
