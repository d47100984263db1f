"""A small MCP server for the tests (the official SDK's MCPServer, over stdio or streamable HTTP).

    python mcp_test_server.py                  stdio: add, echo_env, plot, slow, fail, die
    python mcp_test_server.py --http PORT      the same over streamable HTTP on 127.0.0.1:PORT
    python mcp_test_server.py --never-answer   reads stdin, never answers (a hung server)
    python mcp_test_server.py --exit-at-once   exits with a message on stderr
    python mcp_test_server.py --invalid        answers every request with a result that is not MCP's
"""

import json
import os
import sys
import time


def misbehave(mode: str) -> None:
    if mode == "--never-answer":
        for _ in sys.stdin:
            pass
        time.sleep(3600)
    if mode == "--exit-at-once":
        print("test server: cannot open its database", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "--invalid":
        for line in sys.stdin:
            msg = json.loads(line)
            if "id" in msg:
                sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": "nonsense",
                                             "protocolVersion": 42}}) + "\n")
                sys.stdout.flush()


def build():
    from mcp.server.mcpserver import Context, Image, MCPServer

    server = MCPServer("kernelchat-test")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two whole numbers."""
        return a + b

    @server.tool()
    def echo_env(name: str) -> str:
        """The value of an environment variable of the server, or <unset>."""
        return os.environ.get(name, "<unset>")

    @server.tool()
    def plot() -> Image:
        """A tiny PNG image."""
        import base64
        png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
        return Image(data=png, format="png")

    @server.tool()
    async def slow(seconds: float, ctx: Context) -> str:
        """Sleep, reporting progress each half second."""
        import anyio
        steps = max(int(seconds / 0.5), 1)
        for i in range(steps):
            await ctx.report_progress(i + 1, steps, "sleeping")
            await anyio.sleep(seconds / steps)
        return "slept"

    @server.tool()
    def fail(reason: str) -> str:
        """Raise an error."""
        raise ValueError(f"failed on purpose: {reason}")

    @server.tool()
    def die() -> str:
        """Exit the server process mid-call."""
        os._exit(1)

    return server


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] != "--http":
        misbehave(sys.argv[1])
    elif len(sys.argv) > 2:
        import anyio
        anyio.run(lambda: build().run_streamable_http_async(host="127.0.0.1", port=int(sys.argv[2]),
                                                            log_level="warning") if False else
                  build().run_streamable_http_async(host="127.0.0.1", port=int(sys.argv[2])))
    else:
        build().run()
