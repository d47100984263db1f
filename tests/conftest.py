import os

import pytest

from sandbox import Kernel

# The command line keeps a local model loaded in a background process (agent/models/resident.py);
# tests start it only where they test it (tests/agent/models/test_resident.py), not on every CLI run.
os.environ["KERNELCHAT_KEEP_ALIVE"] = "0"


@pytest.fixture(scope="session")
def shared_kernel():
    """One sandboxed kernel for the tests that neither kill nor wedge it."""
    with Kernel(timeout=60) as k:
        yield k


@pytest.fixture
def kernel(tmp_path):
    """A fresh sandboxed kernel for tests that break things."""
    with Kernel(workspace=tmp_path, timeout=60) as k:
        yield k


# -- a real OpenAI-compatible server: `transformers serve` with the embedded model -------------------

import os as _os
import shutil as _shutil
import socket as _socket
import subprocess as _subprocess
import sys as _sys
import time as _time
import urllib.request as _urlrequest
from pathlib import Path as _Path


def _free_port() -> int:
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (a fixture: test modules cannot import a
    conftest by name once a folder below has its own conftest.py)."""
    return _free_port()


def _wait_until_ready(proc, request, log: _Path, name: str, seconds: float) -> None:
    """Poll `request` until it answers 200; fail with the server's log if it exits or takes too long."""
    deadline = _time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with _urlrequest.urlopen(request, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if _time.monotonic() > deadline:
            pytest.fail(f"{name} not ready within {seconds:g} s:\n{log.read_text()[-3000:]}")
        _time.sleep(0.2)


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory):
    """Base URL (…/v1) of `transformers serve` running the converted embedded model, once per session."""
    from agent.models.embedded import embedded_model_dir

    folder = embedded_model_dir(progress=False)
    exe = _shutil.which("transformers", path=str(_Path(_sys.executable).parent)) or _shutil.which("transformers")
    if exe is None:
        pytest.fail("the `transformers` CLI is missing: pip install 'transformers[serving]'")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = _subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(port), str(folder)],
                                 stdout=out, stderr=_subprocess.STDOUT, start_new_session=True,
                                 env={**_os.environ, "TOKENIZERS_PARALLELISM": "false"})
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(proc, _urlrequest.Request(base + "/health"), log, "transformers serve", 90)
        yield base + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except _subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def local_backend():
    """The embedded SmolLM2 loaded once per test session (converted on first use, ~30 s, then cached)."""
    from agent.models.transformers_backend import TransformersBackend

    return TransformersBackend("hf:smollm2", progress=False)


@pytest.fixture(scope="session")
def qwen_05b_gguf() -> _Path:
    """The real tool-trained Qwen2.5-Coder-0.5B-Instruct GGUF, fetched by the project's own script
    (`make models` does it during setup; here it only checks the digest, ~1 s, when cached)."""
    root = _Path(__file__).resolve().parents[1]
    out = _subprocess.run([_sys.executable, str(root / "bench" / "fetch_qwen.py"), "0.5b"], capture_output=True,
                          text=True, timeout=1800)
    assert out.returncode == 0, f"bench/fetch_qwen.py failed: {out.stderr[-1000:]}"
    return _Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def qwen_05b(qwen_05b_gguf):
    """The 0.5B loaded once per test session (converted to fp16 safetensors on first use, then cached)."""
    from agent.models.transformers_backend import TransformersBackend

    return TransformersBackend(str(qwen_05b_gguf), progress=False)


# -- a real Jupyter Kernel Gateway on 127.0.0.1, for sandbox.gateway --------------------------------


class _Gateway:
    def __init__(self, url: str, token: str, log: _Path):
        self.url, self.token, self.log = url, token, log


@pytest.fixture(scope="session")
def kernel_gateway(tmp_path_factory):
    """`jupyter kernelgateway` with a random port and token and docs/kernel_gateway_config.py
    (TCP_NODELAY on websockets, death noticed within 1 s); killed at the end of the session."""
    import secrets as _secrets
    import signal as _signal

    root = tmp_path_factory.mktemp("gateway")
    port, token = _free_port(), _secrets.token_hex(16)
    config = _Path(__file__).resolve().parents[1] / "docs" / "kernel_gateway_config.py"
    log = root / "gateway.log"
    with open(log, "wb") as out:
        proc = _subprocess.Popen([_sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                                  f"--KernelGatewayApp.port={port}", f"--KernelGatewayApp.auth_token={token}",
                                  f"--config={config}"],
                                 cwd=root, stdout=out, stderr=_subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = _urlrequest.Request(url + "/api", headers={"Authorization": f"token {token}"})
        _wait_until_ready(proc, ready, log, "jupyter kernelgateway", 60)
        yield _Gateway(url, token, log)
    finally:
        proc.terminate()  # the gateway shuts its kernels down
        try:
            proc.wait(timeout=15)
        except _subprocess.TimeoutExpired:
            pass
        try:
            _os.killpg(proc.pid, _signal.SIGKILL)  # and anything left in its session
        except OSError:
            pass
        proc.wait()


# -- no model server left behind ----------------------------------------------------------------------


def _model_servers() -> dict[str, int]:
    """Resident model servers answering in the runtime folders a test's command may use: this
    environment's, and the default one of a command run with a minimal environment."""
    from agent.core.dirs import runtime_dir
    from agent.models.resident import servers

    return {info["socket"]: info["pid"] for folder in {runtime_dir(), _Path.home() / ".cache" / "kernelchat" / "run"}
            for info in servers(folder)}


@pytest.fixture(scope="session", autouse=True)
def no_model_server_left_behind():
    """A test that runs the command line without KERNELCHAT_KEEP_ALIVE=0 leaves a model server
    running for minutes: stop it, and fail the session so the test gets fixed. (Not where only the
    sandbox is copied: tests/sandbox/test_unprivileged.py.)"""
    try:
        import agent.models.resident  # noqa: F401
    except ImportError:
        yield
        return
    before = _model_servers()
    yield
    from agent.models.resident import ask

    left = {sock: pid for sock, pid in _model_servers().items() if before.get(sock) != pid}
    for sock in left:
        try:
            ask(_Path(sock), {"op": "stop"}, timeout=5.0)
        except (OSError, ValueError, RuntimeError):
            pass
    assert not left, f"model servers left running by the tests (stopped now): {left}"
