"""`kernelchat mcp` with real MCP on both sides: the SDK's client talks to the server process over
stdio and streamable HTTP, and the server runs real sandboxed kernels (the default isolation).

One stdio server and one HTTP server serve the module (a kernel start costs seconds); the tests
that end a session start their own."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import anyio
import anyio.from_thread
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parents[3]
TOKEN = "test-token-" + "x" * 24


class Session:
    """A connected MCP client on a background event loop, called from the (sync) tests."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, client: Client):
        self.portal, self.client = portal, client

    def call(self, tool: str, progress: list | None = None, **arguments: Any):
        async def record(value: float, total: float | None, message: str | None) -> None:
            progress.append(message)

        return self.portal.call(lambda: self.client.call_tool(tool, arguments,
                                                              progress_callback=record if progress is not None
                                                              else None))

    def text(self, tool: str, **arguments: Any) -> str:
        r = self.call(tool, **arguments)
        assert not r.is_error, r.content
        return r.content[0].text

    def cancel_after(self, seconds: float, tool: str, **arguments: Any) -> bool:
        """Call and cancel it after `seconds`; True when it was cancelled (not finished)."""
        async def go() -> bool:
            with anyio.move_on_after(seconds) as scope:
                await self.client.call_tool(tool, arguments)
            return scope.cancelled_caught

        return self.portal.call(go)


@contextmanager
def connect(target: Any, **client_args: Any) -> Iterator[Session]:
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(Client(target, **client_args)) as client:
            yield Session(portal, client)


def stdio_params(*flags: str) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if k != "KERNELCHAT_MCP_TOKEN"}
    return StdioServerParameters(command=sys.executable, args=["-m", "agent", "mcp", *flags], env=env,
                                 cwd=str(REPO))


def kernel_processes(workspace: str) -> list[psutil.Process]:
    """Processes whose command line names the kernel's workspace (the kernel's boot.py is given its
    outputs folder, inside it)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(workspace in part for part in p.info["cmdline"] or ()):
            found.append(p)
    return found


def wait_gone(workspace: str, seconds: float = 20) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while (left := kernel_processes(workspace)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture(scope="module")
def stdio() -> Iterator[Session]:
    with connect(stdio_params("--timeout", "60")) as s:
        yield s


# -- over stdio ------------------------------------------------------------------------------------


def test_tools_are_listed_with_their_arguments(stdio):
    tools = {t.name: t for t in stdio.portal.call(stdio.client.list_tools).tools}
    assert set(tools) == {"run_code", "interrupt", "restart", "list_files", "read_file", "write_file",
                          "kernel_state"}
    assert tools["run_code"].input_schema["required"] == ["code"]
    assert set(tools["write_file"].input_schema["properties"]) == {"path", "content"}


def test_run_code_returns_stdout_and_the_value_and_state_persists(stdio):
    r = stdio.call("run_code", code="x = 6 * 7\nprint('hello')\nx")
    assert not r.is_error
    assert "hello" in r.content[0].text and "Out: 42" in r.content[0].text
    assert r.structured_content["status"] == "ok" and r.structured_content["result"] == "42"
    assert r.structured_content["stdout"] == "hello\n" and r.structured_content["execution_count"]
    assert "Out: 43" in stdio.text("run_code", code="x + 1")


def test_an_error_is_an_error_result_with_a_trimmed_traceback(stdio):
    r = stdio.call("run_code", code="def f():\n    return 1 / 0\nf()")
    assert r.is_error
    text = r.content[0].text
    assert "ZeroDivisionError" in text and "1 / 0" in text
    assert len(text.splitlines()) <= 14 and "-----" not in text  # trimmed: no IPython rule lines
    s = r.structured_content
    assert s["status"] == "error" and s["error_name"] == "ZeroDivisionError"
    assert "Out: 1" in stdio.text("run_code", code="1")  # the kernel goes on


def test_a_plot_comes_back_as_an_image(stdio):
    r = stdio.call("run_code", code="import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    assert not r.is_error, r.content
    images = [c for c in r.content if c.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG")
    assert r.structured_content["images"] and r.structured_content["images"][0].endswith(".png")


def test_the_sandbox_keeps_host_files_out_of_reach(stdio, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    r = stdio.call("run_code", code=f"open({str(secret)!r}).read()")
    assert r.is_error and "FileNotFoundError" in r.content[0].text
    assert "host's secret" not in str(r.content)
    for path in (str(secret), "/etc/shadow", "../secret.txt", str(Path.home() / ".ssh" / "id_rsa")):
        r = stdio.call("read_file", path=path)
        assert r.is_error and "outside the workspace" in r.content[0].text, (path, r.content)


def test_write_file_and_read_file_round_trip(stdio):
    assert "wrote" in stdio.text("write_file", path="notes/a.txt", content="héllo\nworld\n")
    assert stdio.text("read_file", path="notes/a.txt") == "héllo\nworld\n"
    assert "Out: 'héllo\\nworld\\n'" in stdio.text("run_code", code="open('notes/a.txt').read()")
    stdio.text("run_code", code="open('notes/a.txt', 'a').write('more\\n')")  # the sandbox may change it
    assert stdio.text("read_file", path="notes/a.txt").endswith("more\n")
    assert "notes/a.txt" in stdio.text("list_files").splitlines()
    assert stdio.text("list_files", path="notes") == "notes/a.txt"


def test_links_planted_in_the_workspace_are_not_followed(stdio, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    stdio.text("run_code", code=f"import os\nos.symlink({str(secret)!r}, 'link.txt')\n"
                                f"os.symlink({str(tmp_path)!r}, 'linkdir')")
    r = stdio.call("read_file", path="link.txt")
    assert r.is_error and "symbolic link" in r.content[0].text and "host's secret" not in str(r.content)
    r = stdio.call("read_file", path="linkdir/secret.txt")
    assert r.is_error and "host's secret" not in str(r.content)
    assert "link.txt" not in stdio.text("list_files")
    stdio.text("write_file", path="link.txt", content="replaced")  # the link is replaced, not written through
    assert secret.read_text() == "the host's secret"
    assert stdio.text("read_file", path="link.txt") == "replaced"
    r = stdio.call("write_file", path="linkdir/new.txt", content="x")
    assert r.is_error and "symbolic link" in r.content[0].text and not (tmp_path / "new.txt").exists()


def test_a_fifo_planted_in_the_workspace_is_never_opened(stdio):
    """A reader of a FIFO blocks until a writer comes (and a writer until a reader): the file tools
    refuse anything but a regular file without opening it, at once."""
    stdio.text("run_code", code="import os\nos.mkfifo('pipe')\nos.makedirs('d', exist_ok=True)\nos.mkfifo('d/pipe2')")
    t0 = time.monotonic()
    r = stdio.call("read_file", path="pipe")
    assert r.is_error and "not a regular file" in r.content[0].text
    r = stdio.call("read_file", path="d/pipe2")
    assert r.is_error and "not a regular file" in r.content[0].text
    listed = stdio.text("list_files")
    assert "pipe" not in listed
    stdio.text("write_file", path="pipe", content="replaced")  # the FIFO is replaced, never opened
    assert stdio.text("read_file", path="pipe") == "replaced"
    assert time.monotonic() - t0 < 10


def test_bad_input_is_one_sentence_not_a_crash(stdio):
    r = stdio.call("read_file", path="missing/nothing.txt")
    assert r.is_error and "does not exist" in r.content[0].text
    r = stdio.call("run_code")  # no code
    assert r.is_error
    r = stdio.call("read_file", path="")
    assert r.is_error and "relative to the workspace" in r.content[0].text
    stdio.text("run_code", code="open('big.bin', 'wb').write(b'x' * (2 << 20))")
    r = stdio.call("read_file", path="big.bin")
    assert r.is_error and "larger than 1,048,576 bytes" in r.content[0].text
    assert "Out: 2" in stdio.text("run_code", code="1 + 1")


def test_kernel_state_says_what_the_sandbox_is(stdio):
    r = stdio.call("kernel_state")
    s = r.structured_content
    assert s["alive"] is True and s["isolation"] == "bwrap" and s["network"] is False
    assert s["cells_run"] >= 1 and s["execution_count"] >= 1 and Path(s["workspace"]).is_dir()
    assert s["limits"]["memory_mb"]


def test_progress_is_reported_while_a_cell_runs(stdio):
    progress: list = []
    r = stdio.call("run_code", progress=progress, code="import time\nprint('step one', flush=True)\n"
                                                        "time.sleep(2.5)\n'done'")
    assert not r.is_error and "Out: 'done'" in r.content[0].text
    assert len(progress) >= 2 and all(m.startswith("running, ") for m in progress)
    assert any("step one" in m for m in progress)


def test_cancelling_a_call_interrupts_the_cell_and_keeps_the_state(stdio):
    stdio.text("run_code", code="y = 41")
    t0 = time.monotonic()
    assert stdio.cancel_after(1.5, "run_code", code="y += 1\nimport time\ntime.sleep(60)\ny = -1")
    assert "Out: 42" in stdio.text("run_code", code="y")  # the sleep was interrupted: y never became -1
    assert time.monotonic() - t0 < 20


def test_restart_loses_the_state_and_says_so(stdio):
    stdio.text("run_code", code="z = 1")
    assert "state" in stdio.text("restart") and "lost" in stdio.text("restart")
    r = stdio.call("run_code", code="z")
    assert r.is_error and "NameError" in r.content[0].text


def test_no_kernel_is_left_after_the_client_disconnects():
    with connect(stdio_params()) as s:
        workspace = s.call("kernel_state").structured_content  # not started yet: says so
        assert workspace["started"] is False
        assert "Out: 1" in s.text("run_code", code="1")
        workspace = s.call("kernel_state").structured_content["workspace"]
        assert kernel_processes(workspace)
    assert wait_gone(workspace) == []


# -- over streamable HTTP --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, log: Path | None = None) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text() if log else proc.returncode
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, log.read_text() if log else "not listening"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def http_server(tmp_path_factory) -> Iterator[str]:
    """`kernelchat mcp --http` on a free port, the token in its environment (not on a command line)."""
    port = free_port()
    log = tmp_path_factory.mktemp("mcp-http") / "server.log"
    env = {**os.environ, "KERNELCHAT_MCP_TOKEN": TOKEN}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "mcp", "--http", f"127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_listening(proc, port, log)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=20) == 0, log.read_text()
        finally:
            proc.kill()
    assert TOKEN not in log.read_text()  # a given token is never printed


def http_client(url: str, token: str | None = TOKEN) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers,
                                                                      timeout=httpx2.Timeout(30, read=300)))


def test_http_with_the_token_runs_code_and_each_session_has_its_kernel(http_server):
    with connect(http_client(http_server), mode="legacy") as one, \
            connect(http_client(http_server), mode="legacy") as two:
        one.text("run_code", code="a = 'one'")
        two.text("run_code", code="a = 'two'")
        assert "Out: 'one'" in one.text("run_code", code="a")
        progress: list = []
        r = two.call("run_code", progress=progress, code="import time\ntime.sleep(2.5)\na")
        assert "Out: 'two'" in r.content[0].text and len(progress) >= 2
        assert one.cancel_after(1.5, "run_code", code="import time\ntime.sleep(60)\na = 'late'")
        assert "Out: 'one'" in one.text("run_code", code="a")  # interrupted: the state is kept
        ws_one = one.call("kernel_state").structured_content["workspace"]
        ws_two = two.call("kernel_state").structured_content["workspace"]
        assert ws_one != ws_two and kernel_processes(ws_one)
    assert wait_gone(ws_one) == [] and wait_gone(ws_two) == []  # the sessions ended: their kernels stopped


def test_http_without_a_session_works_too(http_server):
    with connect(http_client(http_server)) as s:  # the default: 2026-07-28, one request per exchange
        assert "Out: 4" in s.text("run_code", code="2 + 2")


@pytest.mark.parametrize("token", [None, "wrong-token-" + "y" * 24, TOKEN[:-1]])
def test_http_refuses_a_missing_or_wrong_token(http_server, token):
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    r = httpx2.post(http_server, json=body, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(Exception):
        with connect(http_client(http_server, token)) as s:
            s.text("run_code", code="1")


# -- the command line ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "mcp", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, stdin=subprocess.DEVNULL)


def test_a_remote_host_needs_allow_remote_and_a_bad_address_is_one_sentence():
    r = run_cli("--http", "0.0.0.0:8765")
    assert r.returncode == 2 and "--allow-remote" in r.stderr and r.stdout == ""
    r = run_cli("--http", "127.0.0.1:notaport")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr


def test_a_generated_token_is_printed_once_on_stderr_never_on_stdout():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KERNELCHAT_MCP_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "mcp", "--http", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert f"http://127.0.0.1:{port}/mcp" in line and "token" in line
        token = line.rsplit(" ", 1)[1].strip()
        assert len(token) >= 40
        wait_listening(proc, port)
        with connect(http_client(f"http://127.0.0.1:{port}/mcp", token), mode="legacy") as s:
            assert s.call("kernel_state").structured_content["started"] is False
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert out == "" and token not in err and proc.returncode == 0


def test_the_token_comes_from_a_file_never_from_the_command_line(tmp_path):
    """A command line is public (`ps`, shell history): there is no --token, only --token-file."""
    r = run_cli("--http", "8765", "--token", TOKEN)
    assert r.returncode == 2 and "unrecognized arguments: --token" in r.stderr  # not an abbreviation
    r = run_cli("--http", "8765", "--token-file", str(tmp_path / "missing"))
    assert r.returncode == 2 and "--token-file" in r.stderr and "cannot read" in r.stderr
    (tmp_path / "short").write_text("short\n")
    r = run_cli("--http", "8765", "--token-file", str(tmp_path / "short"))
    assert r.returncode == 2 and "at least 16 characters" in r.stderr
    secret = "file-token-" + "z" * 30
    (tmp_path / "token").write_text(secret + "\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KERNELCHAT_MCP_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "agent", "mcp", "--http", str(port), "--token-file",
                             str(tmp_path / "token")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(proc, port)
        with connect(http_client(f"http://127.0.0.1:{port}/mcp", secret), mode="legacy") as s:
            assert s.call("kernel_state").structured_content["started"] is False
        with pytest.raises(Exception):
            with connect(http_client(f"http://127.0.0.1:{port}/mcp", TOKEN), mode="legacy") as s:
                s.text("kernel_state")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert secret not in out + err and proc.returncode == 0
