import pytest

from sandbox import Kernel


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


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory):
    """Base URL (…/v1) of `transformers serve` running the converted embedded model, once per session."""
    from agent.embedded import embedded_model_dir

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
    deadline = _time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with _urlrequest.urlopen(base + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if _time.monotonic() > deadline:
                pytest.fail(f"transformers serve not healthy within 90 s:\n{log.read_text()[-3000:]}")
            _time.sleep(0.3)
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
    from agent.backends.local import LocalBackend

    return LocalBackend("hf:smollm2", progress=False)
