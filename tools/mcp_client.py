"""MCP servers' tools in the chat: `MCPServers` starts a chat's servers (the official SDK's client,
over stdio or streamable HTTP) on a background event loop, offers their tools as `server__tool`
Runnables, and stops them with the chat. A server that fails to start, dies, hangs or answers
nonsense is one sentence (a notice, or the tool's result) and the chat goes on."""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import json
import queue
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator

from tools.mcp_specs import MCPServerSpec
from tools.schema import Outcome, Output, ToolContext, parse_arguments

if TYPE_CHECKING:
    from sandbox import ExecResult

SEPARATOR = "__"
MAX_TOOL_NAME = 64  # what OpenAI's API takes
MAX_TOOLS = 127  # a request takes at most 128 tools (OpenAI's limit), python one of them
MAX_SCHEMA_CHARS = 16_000  # every request carries every offered tool's schema: one tool's at most,
MAX_SCHEMAS_CHARS = 128_000  # and all of them together (about 32,000 tokens)
MAX_IMAGE_BYTES = 10 << 20
MAX_IMAGES = 10
CLOSE_SECONDS = 10.0


class MCPTool:
    """One tool of an MCP server, as the loop runs every tool (tools.schema.Runnable)."""

    def __init__(self, servers: "MCPServers", server: str, tool: Any):
        self.servers, self.server, self.tool_name = servers, server, tool.name
        self.name = tool_name(server, tool.name)
        params = tool.input_schema if isinstance(tool.input_schema, dict) else {"type": "object"}
        self.description = (tool.description or tool.name).strip()
        self.schema = {"type": "function", "function": {
            "name": self.name, "description": f"[MCP server {server}] {self.description}"[:1024],
            "parameters": params if params.get("type") == "object" else {"type": "object", "properties": {}}}}

    def code(self, arguments: str) -> None:
        return None

    def run(self, arguments: str, context: ToolContext) -> Generator[Output, None, Outcome]:
        try:
            args = parse_arguments(self.name, arguments)
        except ValueError as e:
            return Outcome(f"Error: {e}. Send a JSON object matching the tool's schema.", "invalid")
        progress: queue.Queue = queue.Queue()
        future = self.servers.submit(self.server, self.tool_name, args, lambda text: progress.put(text))
        future.add_done_callback(lambda _: progress.put(None))
        try:
            while (text := progress.get()) is not None:
                yield "notice", text
            result = future.result()
        except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C: the request is cancelled on the server
            future.cancel()
            raise
        except MCPToolError as e:
            return Outcome(f"Error: {e}", "error")
        return self.servers.outcome(self.server, self.tool_name, result)


def tool_name(server: str, tool: str) -> str:
    """`server__tool`, in the characters and length that every model API takes."""
    return (server + SEPARATOR + re.sub(r"[^A-Za-z0-9_-]", "_", tool))[:MAX_TOOL_NAME]


class MCPToolError(RuntimeError):
    """An MCP server failed a call or is not running: one sentence, for the model and the user."""


class MCPServers:
    """A chat's MCP servers: `start()` connects them all (a notice per one that failed), `tools()`
    offers theirs, `close()` stops them. The SDK is async; its clients live on one event loop in a
    thread of their own, and each server's connection is held open by a task there until close."""

    def __init__(self, specs: dict[str, MCPServerSpec]):
        self.specs = dict(specs)
        self.clients: dict[str, Any] = {}
        self.offered: dict[str, list[Any]] = {}  # server: the tools it listed
        self.offer: list[MCPTool] = []  # the tools offered to the model (sorted_tools, once, at start)
        self.failed: dict[str, str] = {}  # server: why it is not running
        self.folder = Path(tempfile.mkdtemp(prefix="kernelchat-mcp-"))  # logs and images: the host's own
        self.images = 0
        self.loop = asyncio.new_event_loop()
        self.stop: asyncio.Event | None = None
        self.holders: dict[str, concurrent.futures.Future] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, name="kernelchat-mcp", daemon=True)
        self.thread.start()

    # -- starting and stopping -------------------------------------------------------------------

    def start(self) -> list[str]:
        """Connect every server at once; the notices say which did not start, and why."""
        self.stop = self.call_soon(asyncio.Event)
        ready = {name: concurrent.futures.Future() for name in self.specs}
        for name, spec in self.specs.items():
            self.holders[name] = asyncio.run_coroutine_threadsafe(self.hold(name, spec, ready[name]), self.loop)
        notices = []
        for name, spec in self.specs.items():
            try:
                self.offered[name] = ready[name].result(timeout=spec.startup_timeout)
            except concurrent.futures.TimeoutError:
                self.holders[name].cancel()
                self.failed[name] = f"it did not answer within {spec.startup_timeout:g} s"
            except Exception as e:  # noqa: BLE001 - said in one sentence
                self.failed[name] = self.why(name, e)
            if name in self.failed:
                notices.append(f"MCP server {name!r} ({spec.shown()}) did not start: {self.failed[name]}; "
                               "its tools are not offered")
        self.offer, left_out = self.sorted_tools()
        return notices + left_out

    async def hold(self, name: str, spec: MCPServerSpec, ready: concurrent.futures.Future) -> None:
        """Connect, list the tools, and keep the connection until `close`."""
        from mcp import Client

        try:
            with open(self.folder / f"{name}.log", "w") as log:
                async with Client(self.transport(name, spec, log), read_timeout_seconds=spec.timeout) as client:
                    tools = await list_all_tools(client)
                    self.clients[name] = client
                    ready.set_result(tools)
                    assert self.stop is not None
                    await self.stop.wait()
        except BaseException as e:  # noqa: BLE001 - a start that failed, or a server that died
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else MCPToolError("startup was cancelled"))
            elif name not in self.failed and not (self.stop and self.stop.is_set()):
                self.failed[name] = f"it stopped ({self.why(name, e)})"
            self.clients.pop(name, None)
            if not isinstance(e, Exception):
                raise

    def transport(self, name: str, spec: MCPServerSpec, log: Any) -> Any:
        if spec.url is not None:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(headers=spec.resolved_headers(name),
                                      timeout=httpx2.Timeout(30.0, read=max(spec.timeout, 30.0)))
            return streamable_http_client(spec.url, http_client=http)
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=spec.command, args=spec.args, env=spec.resolved_env(name),
                                       cwd=spec.cwd)
        return stdio_client(params, errlog=log)

    def why(self, name: str, e: BaseException, log: bool = True) -> str:
        """An exception from the SDK or the transport, in one sentence, with the server's last log line."""
        from pydantic import ValidationError

        e = innermost(e)
        text = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        if isinstance(e, FileNotFoundError):
            text = f"its command was not found ({text})"
        elif isinstance(e, ValidationError):
            text = f"it answered with something that is not MCP ({text})"
        last = self.last_log_line(name) if log else ""
        return text + (f"; its last words on stderr: {last!r}" if last else "")

    def last_log_line(self, name: str) -> str:
        try:
            lines = [line for line in (self.folder / f"{name}.log").read_text(errors="replace").splitlines()
                     if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip()[:200] if lines else ""

    def close(self) -> None:
        """Stop every server (each SDK transport ends its process: stdin closed, then SIGTERM, SIGKILL)."""
        if not self.thread.is_alive():
            return
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        for holder in self.holders.values():
            try:
                holder.result(timeout=CLOSE_SECONDS)
            except BaseException:  # noqa: BLE001 - already said, or cancelled
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=CLOSE_SECONDS)

    def call_soon(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the loop's thread (objects bound to the loop are made there)."""
        async def make() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result()

    # -- the tools -----------------------------------------------------------------------------

    def tools(self) -> list[MCPTool]:
        """The running servers' tools (a name taken twice keeps the first: `start` says so)."""
        return self.offer

    def sorted_tools(self) -> tuple[list[MCPTool], list[str]]:
        """The tools offered, and a notice for each not offered: its name (cut to what model APIs
        take) is already another tool's, its schema is too large to send with every request, or the
        tools before it fill what a request carries (MAX_TOOLS, MAX_SCHEMAS_CHARS)."""
        kept: dict[str, MCPTool] = {}
        notices, over, total = [], {}, 0
        for server, tools in self.offered.items():
            for tool in tools:
                t = MCPTool(self, server, tool)
                what = f"MCP server {server!r}'s tool {tool.name[:80]!r} is not offered"
                if (size := schema_chars(t.schema)) > MAX_SCHEMA_CHARS:
                    said = f"{size:,} characters" if size < float("inf") else "nested too deeply to write"
                    notices.append(f"{what}: its schema is {said}, over the {MAX_SCHEMA_CHARS:,} characters "
                                   "that every request would carry")
                elif (first := kept.get(t.name)) is not None:
                    notices.append(f"{what}: its name {t.name!r} is already that of {first.server!r}'s tool "
                                   f"{first.tool_name[:80]!r}")
                elif len(kept) >= MAX_TOOLS or total + size > MAX_SCHEMAS_CHARS:
                    over[server] = over.get(server, 0) + 1
                else:
                    kept[t.name] = t
                    total += size
        notices += [f"MCP server {server!r}: {n:,} of its tools are not offered: a request carries at most "
                    f"{MAX_TOOLS} tools from MCP servers (python is one more) and {MAX_SCHEMAS_CHARS:,} characters "
                    "of their schemas, which the tools before them fill" for server, n in over.items()]
        return list(kept.values()), notices

    def submit(self, server: str, tool: str, arguments: dict[str, Any],
               on_progress: Callable[[str], None]) -> concurrent.futures.Future:
        """Call a tool; the future's result is the SDK's CallToolResult, or MCPToolError in one sentence."""
        async def call() -> Any:
            client = self.clients.get(server)
            if client is None:
                raise MCPToolError(f"the MCP server {server!r} is not running ({self.failed.get(server, 'it stopped')}); "
                               "its tools cannot be used in this chat")
            spec = self.specs[server]

            async def progress(done: float, total: float | None, message: str | None) -> None:
                share = f" {done:g}/{total:g}" if total else f" {done:g}"
                on_progress(f"{tool_name(server, tool)}:{share}" + (f" {message}" if message else ""))
            try:
                return await asyncio.wait_for(client.call_tool(tool, arguments, progress_callback=progress),
                                              spec.timeout)
            except (TimeoutError, asyncio.TimeoutError):
                raise MCPToolError(f"the MCP server {server!r} did not answer {tool!r} within {spec.timeout:g} s "
                               "(its `timeout`)") from None
            except Exception as e:  # noqa: BLE001 - the SDK's error, a dead transport, an invalid result
                if closed(e):  # the process exited or the connection broke: no later call can work
                    self.clients.pop(server, None)
                    self.failed[server] = f"it exited or closed the connection during a call to {tool!r}"
                    raise MCPToolError(f"the MCP server {server!r} stopped: {self.failed[server]}; its tools cannot "
                                       "be used in this chat any more") from None
                raise MCPToolError(f"the MCP server {server!r} failed the call to {tool!r}: {self.why(server, e, False)}") from None
        return asyncio.run_coroutine_threadsafe(call(), self.loop)

    def outcome(self, server: str, tool: str, result: Any) -> Outcome:
        """A CallToolResult as the model reads it (images saved, said by path) and as front ends show it."""
        from sandbox import ExecResult, RichOutput

        parts, outputs = [], []
        for block in getattr(result, "content", None) or []:
            kind = getattr(block, "type", "")
            if kind == "text":
                parts.append(block.text)
            elif kind == "image" and len(outputs) >= MAX_IMAGES:
                parts.append(f"[an image, not saved: a result keeps at most {MAX_IMAGES}]")
            elif kind == "image":
                saved = self.save_image(server, tool, block.data, block.mime_type)
                if isinstance(saved, str):
                    parts.append(saved)
                else:
                    data = base64.b64encode(saved.read_bytes()).decode()  # canonical: no line breaks
                    outputs.append(RichOutput(mime=block.mime_type, path=str(saved), data=data))
                    parts.append(f"[image saved: {saved}]")
            elif kind == "resource":
                res = block.resource
                text = getattr(res, "text", None)
                parts.append(text if text is not None else f"[resource {res.uri} ({res.mime_type or 'binary'})]")
            elif kind == "resource_link":
                parts.append(f"[resource link: {block.uri}]")
            else:
                parts.append(f"[{kind or 'unknown'} content, not shown]")
        structured = getattr(result, "structured_content", None)
        if structured is not None and not parts:
            parts.append(json.dumps(structured, default=str, ensure_ascii=False))
        failed = bool(getattr(result, "is_error", False))
        text = "\n".join(parts) or "[done, no output]"
        if failed:
            text = f"Error: {server}{SEPARATOR}{tool} reported an error: {text}"
        status = "error" if failed else "ok"
        shown: ExecResult = ExecResult(status="error" if failed else "ok", outputs=outputs)
        return Outcome(text, status, cell=shown)

    def save_image(self, server: str, tool: str, data: str, mime: str) -> Path | str:
        """An image from a server into this chat's own folder (never a workspace); a problem as text."""
        ext = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp",
               "image/svg+xml": "svg"}.get(mime)
        if ext is None:
            return f"[an image of type {mime[:60]!r}, not shown]"
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return "[an image whose data is not valid base64, not shown]"
        if len(raw) > MAX_IMAGE_BYTES:
            return f"[an image of {len(raw):,} bytes, over {MAX_IMAGE_BYTES:,}: not saved]"
        self.images += 1
        path = self.folder / f"{server}{SEPARATOR}{re.sub(r'[^A-Za-z0-9_-]', '_', tool)[:40]}-{self.images}.{ext}"
        path.write_bytes(raw)
        return path

    def describe(self) -> list[tuple[str, str, str]]:
        """(server, what it runs, status) for /tools."""
        return [(name, spec.shown(), "running" if name in self.clients else f"not running: {self.failed.get(name, '?')}")
                for name, spec in self.specs.items()]


def schema_chars(schema: dict[str, Any]) -> float:
    """The length of a tool's schema as JSON (infinite: one nested too deeply to write)."""
    try:
        return len(json.dumps(schema, default=str))
    except (RecursionError, ValueError):  # ValueError: a circular reference
        return float("inf")


def innermost(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:  # anyio's task groups wrap
        e = e.exceptions[0]
    return e


def closed(e: BaseException) -> bool:
    """Whether an error says the connection is gone (the server exited, the stream broke)."""
    import anyio
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED

    e = innermost(e)
    return (isinstance(e, MCPError) and e.code == CONNECTION_CLOSED) or isinstance(
        e, (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, BrokenPipeError))


async def list_all_tools(client: Any, max_pages: int = 100) -> list[Any]:
    tools, cursor = [], None
    for _ in range(max_pages):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def connect(specs: dict[str, MCPServerSpec]) -> tuple[MCPServers, list[str]]:
    """Start these servers; the connections and a notice for each that did not start."""
    servers = MCPServers(specs)
    try:
        return servers, servers.start()
    except BaseException:
        servers.close()
        raise


__all__ = ["MCPServers", "MCPTool", "MCPToolError", "connect", "tool_name"]
