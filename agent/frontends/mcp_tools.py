"""The tools `kernelchat mcp` offers: the sandboxed kernel's cells and workspace files over MCP.

One kernel per MCP session (`SessionKernels`), started on first use with the sandbox options and
closed when the session ends. Each tool answers a `CallToolResult`; bad input, a refused path or a
kernel that would not start is `isError` with one sentence, never an exception out of the server.
Workspace files are read and written only through the kernel's own host-side file code
(sandbox/hostfiles.py on sandbox/safefs.py: no link followed, nothing but a regular file opened).

The MCP SDK is imported here; `agent.frontends.mcp_server` imports this module only when the
server starts, so `kernelchat --help` and the one shot do not pay for it.
"""

from __future__ import annotations

import base64
import mimetypes
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import (BlobResourceContents, CallToolResult, ContentBlock, EmbeddedResource, ImageContent,
                       TextContent, ToolAnnotations)

from sandbox import ExecResult, KernelOptions, entry_kind, walk_files
from tools.python_tool import render, trim_traceback

if TYPE_CHECKING:
    from sandbox import Kernel

MAX_READ_BYTES = 1 << 20  # read_file answers at most this much
MAX_WRITE_BYTES = 10 << 20  # write_file takes at most this much
MAX_LISTED = 2_000  # list_files names at most this many
MAX_IMAGES = 20  # images per run_code answer
PROGRESS_EVERY = 1.0  # seconds between progress notifications of a running cell
INTERRUPT_TRIES = 30  # a cancelled cell: interrupted every second until it stops, this many times at most
SESSION_HEADER = "mcp-session-id"


class ToolInputError(ValueError):
    """A tool's input or state refused: its one sentence is the tool's error result."""


def error(message: str) -> CallToolResult:
    """An `isError` result of one sentence."""
    return CallToolResult(content=[TextContent(text=message)], is_error=True)


def text(message: str, structured: dict[str, Any] | None = None) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=message)], structured_content=structured)


def session_key(ctx: Context) -> str:
    """The MCP session a call belongs to: its `Mcp-Session-Id` over HTTP (handshake-era clients);
    "" over stdio (one client per process) and for sessionless (2026-07-28) HTTP requests."""
    headers = ctx.headers
    return (headers.get(SESSION_HEADER) or "") if headers else ""


class SessionKernels:
    """The kernels of the server's MCP sessions, one each, keyed by `session_key`."""

    def __init__(self, options: KernelOptions, say: Callable[[str], None] = lambda _: None):
        self.options = options
        self.say = say  # a line for the server's operator (stderr)
        self.kernels: dict[str, Kernel] = {}
        self.cells: dict[str, int] = {}
        self._locks: dict[str, anyio.Lock] = {}

    def peek(self, key: str) -> "Kernel | None":
        return self.kernels.get(key)

    async def get(self, key: str) -> "Kernel":
        """The session's kernel, started (in a worker thread) on first use."""
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            kernel = self.kernels.get(key)
            if kernel is None:
                if self.options.workspace is not None and self.kernels:
                    raise ToolInputError(f"the workspace {self.options.workspace} is in use by another MCP "
                                         "session; start the server without --workspace to give each session "
                                         "a kernel and a temporary workspace of its own")
                from sandbox import Kernel

                try:
                    kernel = await anyio.to_thread.run_sync(Kernel, self.options)
                except (ValueError, RuntimeError, OSError) as e:
                    raise ToolInputError(f"the kernel could not be started: {e}") from None
                self.kernels[key] = kernel
                self.cells[key] = 0
            return kernel

    async def close(self, key: str) -> None:
        """Stop the session's kernel (in a worker thread, shielded: a cancelled caller still closes it)."""
        kernel = self.kernels.pop(key, None)
        self._locks.pop(key, None)
        self.cells.pop(key, None)
        if kernel is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(kernel.close)
            if kernel.kept_workspace is not None:
                self.say(f"files kept in {kernel.kept_workspace}")

    async def close_all(self) -> None:
        for key in list(self.kernels):
            await self.close(key)


# -- run_code --------------------------------------------------------------------------------------


def interrupt_until_done(kernel: "Kernel", done: threading.Event) -> None:
    """Interrupt the kernel now and each second until the cancelled cell's worker is done (an
    interrupt sent before the cell started would be lost); in a thread of its own."""
    def loop() -> None:
        for _ in range(INTERRUPT_TRIES):
            try:
                kernel.interrupt()
            except Exception:  # noqa: BLE001 - a dead or closed kernel: nothing to stop
                return
            if done.wait(1.0):
                return

    threading.Thread(target=loop, name="mcp-interrupt", daemon=True).start()


async def run_cell(kernel: "Kernel", code: str, ctx: Context) -> ExecResult:
    """`kernel.execute(code)` in a worker thread, with a progress notification each second while it
    runs (its last line of output in the message). Cancelled (the client cancelled the request, or
    went away): the cell is interrupted, its state kept."""
    t0 = time.monotonic()
    done = threading.Event()
    last = [""]

    def on_output(kind: str, value: object) -> None:
        if kind in ("stdout", "stderr") and isinstance(value, str) and value.strip():
            last[0] = value.strip().splitlines()[-1][:120]

    def work() -> ExecResult:
        try:
            return kernel.execute(code, on_output=on_output)
        finally:
            done.set()

    async def progress() -> None:
        n = 0
        while True:
            await anyio.sleep(PROGRESS_EVERY)
            n += 1
            message = f"running, {time.monotonic() - t0:.0f} s" + (f": {last[0]}" if last[0] else "")
            try:
                await ctx.report_progress(n, None, message)
            except Exception:  # noqa: BLE001 - a client that cannot take it: the cell runs on
                return

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(progress)
            res = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
            tg.cancel_scope.cancel()
    except anyio.get_cancelled_exc_class():
        if not done.is_set():
            interrupt_until_done(kernel, done)
        raise
    return res


def cell_result(res: ExecResult) -> CallToolResult:
    """An ExecResult as MCP content: the rendered text (stdout, stderr, value, trimmed traceback,
    notes), its figures as image content (the bytes the host kept in the result: the file at
    `path` is the sandbox's to replace), and the fields as structured content."""
    content: list[ContentBlock] = [TextContent(text=render(res))]
    for o in res.outputs:
        if o.mime.startswith("image/") and o.data and len(content) <= MAX_IMAGES:
            content.append(ImageContent(data=o.data, mime_type=o.mime))
    structured = {"status": res.status, "stdout": res.stdout, "stderr": res.stderr, "result": res.result,
                  "error_name": res.error_name, "error_value": res.error_value,
                  "traceback": trim_traceback(res.traceback) if res.traceback else None,
                  "execution_count": res.execution_count, "duration": round(res.duration, 3),
                  "images": res.images, "message": res.message, "state_lost": res.state_lost}
    return CallToolResult(content=content, structured_content=structured, is_error=not res.ok)


# -- files -----------------------------------------------------------------------------------------


def local_files(kernel: "Kernel") -> None:
    """Refuse the file tools on a kernel whose files are on another machine."""
    if kernel.isolation == "gateway":
        raise ToolInputError("the kernel runs on a gateway, so its files are on another machine; "
                             "read and write them with run_code instead")


def inside(path: str) -> str:
    """`path` as given, refused when empty (the kernel checks the rest: sandbox/hostfiles.py)."""
    if not isinstance(path, str) or not path.strip() or path.strip() in (".", "/"):
        raise ToolInputError("give a path relative to the workspace, e.g. data/results.csv")
    return path.strip()


def refusal(e: ValueError) -> ToolInputError:
    """The sandbox's refusal of a path, in one sentence."""
    why = str(e)
    if "outside the workspace" in why or "absolute path" in why:
        why += "; only files inside the kernel's workspace can be used"
    return ToolInputError(why)


def read_workspace_file(kernel: "Kernel", path: str) -> CallToolResult:
    local_files(kernel)
    rel = inside(path)
    try:
        data = kernel.read_file(rel, max_bytes=MAX_READ_BYTES)
    except ValueError as e:
        if "over the limit" in str(e) or "past the limit" in str(e):
            raise ToolInputError(f"{rel!r} is larger than {MAX_READ_BYTES:,} bytes, the most read_file returns; "
                                 "look at a part of it with run_code") from None
        raise refusal(e) from None
    mime = mimetypes.guess_type(rel)[0] or "application/octet-stream"
    structured = {"path": rel, "bytes": len(data), "mime": mime}
    if mime.startswith("image/") and mime != "image/svg+xml":
        return CallToolResult(content=[ImageContent(data=base64.b64encode(data).decode(), mime_type=mime)],
                              structured_content=structured)
    try:
        return text(data.decode("utf-8"), structured)
    except UnicodeDecodeError:
        blob = BlobResourceContents(uri=f"file:///{rel.lstrip('/')}", mime_type=mime,
                                    blob=base64.b64encode(data).decode())
        return CallToolResult(content=[EmbeddedResource(resource=blob)], structured_content=structured)


def write_workspace_file(kernel: "Kernel", path: str, content: str) -> CallToolResult:
    """Write (or replace) a text file: folders made as needed, none followed; whatever was at the
    name (a link included) is replaced, never written through; the file and disk limits hold."""
    local_files(kernel)
    rel = inside(path)
    data = content.encode("utf-8")
    if len(data) > MAX_WRITE_BYTES:
        raise ToolInputError(f"{len(data):,} bytes is more than write_file takes ({MAX_WRITE_BYTES:,}); "
                             "write large files with run_code")
    try:
        written = kernel.write_file(rel, data)
    except ValueError as e:
        raise refusal(e) from None
    return text(f"wrote {len(data):,} bytes to {written}", {"path": written, "bytes": len(data)})


def list_workspace(kernel: "Kernel", path: str) -> CallToolResult:
    """Regular files below the workspace (or below `path` in it), no link followed."""
    if kernel.isolation == "gateway":
        names = kernel.files()
    else:
        rel = path.strip().strip("/") if path.strip() not in ("", ".", "/") else ""
        if rel and entry_kind(kernel.workspace, rel) != "folder":
            raise ToolInputError(f"{rel!r} is not a folder in the workspace (nor a link: none is followed)")
        names = sorted(walk_files(kernel.workspace))
        names = [n for n in names if not rel or n.startswith(rel + "/")]
    shown = names[:MAX_LISTED]
    more = f"\n[... and {len(names) - len(shown):,} more]" if len(names) > len(shown) else ""
    return text("\n".join(shown) + more if shown else "(no files)", {"files": shown, "total": len(names)})


# -- the server ------------------------------------------------------------------------------------


def kernel_facts(kernel: "Kernel", cells: int) -> dict[str, Any]:
    """What kernel_state reports of a started kernel."""
    return {"started": True, "alive": kernel.alive, "execution_count": kernel.execution_count, "cells_run": cells,
            "restarts": kernel.restarts, "workspace": str(kernel.workspace),
            "temporary_workspace": kernel.temporary_workspace, "isolation": kernel.isolation,
            "network": kernel.network, "gpu": kernel.gpu, "timeout_s": kernel.timeout,
            "limits": kernel.limits.model_dump()}


def build_server(kernels: SessionKernels, **server_args: Any) -> MCPServer:
    """The MCP server and its tools over `kernels` (`server_args`: MCPServer's, e.g. auth)."""
    server = MCPServer("kernelchat", instructions=(
        "A persistent, sandboxed Python (IPython) kernel. run_code runs a cell; variables, imports and "
        "files persist between calls. The working directory is the kernel's workspace; the file tools "
        "read and write there only."), log_level="WARNING", **server_args)

    async def guarded(ctx: Context, action: Callable[["Kernel"], CallToolResult]) -> CallToolResult:
        """`action(kernel)` in a worker thread; a refusal is its one sentence as an error result."""
        try:
            kernel = await kernels.get(session_key(ctx))
            return await anyio.to_thread.run_sync(action, kernel)
        except ToolInputError as e:
            return error(str(e))
        except OSError as e:  # e.g. a folder the sandbox made unreadable
            return error(f"the workspace refused that: {e.strerror or e}")

    @server.tool(annotations=ToolAnnotations(title="Run Python code", open_world_hint=False))
    async def run_code(code: str, ctx: Context) -> CallToolResult:
        """Run Python code in the persistent sandboxed kernel: stdout, stderr, the last expression's
        value, the error's traceback, and figures (as images). State persists between calls."""
        key = session_key(ctx)
        try:
            kernel = await kernels.get(key)
        except ToolInputError as e:
            return error(str(e))
        try:
            res = await run_cell(kernel, code, ctx)
        except (ValueError, RuntimeError) as e:  # a closed kernel, a bad value: one sentence
            return error(f"the cell could not run: {e}")
        kernels.cells[key] = kernels.cells.get(key, 0) + 1
        return cell_result(res)

    @server.tool(annotations=ToolAnnotations(title="Interrupt the running cell", idempotent_hint=True))
    async def interrupt(ctx: Context) -> CallToolResult:
        """Interrupt the cell that is running (KeyboardInterrupt in it); the kernel's state is kept."""
        kernel = kernels.peek(session_key(ctx))
        if kernel is None:
            return text("no kernel is running yet: nothing to interrupt")
        await anyio.to_thread.run_sync(kernel.interrupt)
        return text("interrupt sent: a running cell stops with KeyboardInterrupt; the kernel's state is kept")

    @server.tool(annotations=ToolAnnotations(title="Restart the kernel", destructive_hint=True))
    async def restart(ctx: Context) -> CallToolResult:
        """Restart the kernel: ALL its state (variables, imports) is lost; workspace files stay."""
        kernel = kernels.peek(session_key(ctx))
        if kernel is None:
            return await guarded(ctx, lambda k: text("the kernel started fresh (it had not started yet)"))
        await anyio.to_thread.run_sync(kernel.interrupt)  # a running cell holds the kernel until it stops

        def again(k: "Kernel") -> CallToolResult:
            k.restart()
            return text("the kernel was restarted: its state (variables, imports) was lost; files in the "
                        "workspace are kept")
        return await guarded(ctx, again)

    @server.tool(annotations=ToolAnnotations(title="List workspace files", read_only_hint=True))
    async def list_files(ctx: Context, path: str = "") -> CallToolResult:
        """The files in the kernel's workspace (or in one folder of it), relative paths."""
        return await guarded(ctx, lambda k: list_workspace(k, path))

    @server.tool(annotations=ToolAnnotations(title="Read a workspace file", read_only_hint=True))
    async def read_file(path: str, ctx: Context) -> CallToolResult:
        """Read a file in the kernel's workspace (at most 1 MB): text as text, an image as an image,
        other bytes as a base64 resource. Links are not followed."""
        return await guarded(ctx, lambda k: read_workspace_file(k, path))

    @server.tool(annotations=ToolAnnotations(title="Write a workspace file", destructive_hint=True))
    async def write_file(path: str, content: str, ctx: Context) -> CallToolResult:
        """Write a text file in the kernel's workspace (folders made as needed), replacing what is there."""
        return await guarded(ctx, lambda k: write_workspace_file(k, path, content))

    @server.tool(annotations=ToolAnnotations(title="The kernel's state", read_only_hint=True))
    async def kernel_state(ctx: Context) -> CallToolResult:
        """Whether the kernel is alive, its execution count, workspace, isolation, network, GPU and limits."""
        key = session_key(ctx)
        kernel = kernels.peek(key)
        if kernel is None:
            o = kernels.options
            facts = {"started": False, "isolation": o.isolation or "default (bwrap where it runs)",
                     "network": o.network, "gpu": o.gpu, "timeout_s": o.timeout,
                     "workspace": str(o.workspace) if o.workspace else "a temporary folder, made at start"}
            return text("the kernel starts with the first run_code call\n" + format_facts(facts), facts)
        facts = await anyio.to_thread.run_sync(kernel_facts, kernel, kernels.cells.get(key, 0))
        return text(format_facts(facts), facts)

    return server


def format_facts(facts: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in facts.items())
