"""Files and values past every sane size, through the real command line in a subprocess: a config or
task file nested thousands deep, limits of 10**20, files of gigabytes under an address-space limit.
Each is one sentence on stderr and exit code 2, never a traceback; and a cell that ran is not turned
into a failure by a cleanup step that failed afterwards."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
HUGE = 10**20


def kernelchat(tmp_path: Path, *args: str, address_space_mb: int | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """`kernelchat ARGS` with its configuration and data under `tmp_path`, optionally under RLIMIT_AS."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "KERNELCHAT_CACHE": str(tmp_path / "cache")}
    for k in ("KERNELCHAT_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        env.pop(k, None)

    def limit() -> None:
        if address_space_mb:
            resource.setrlimit(resource.RLIMIT_AS, (address_space_mb << 20, address_space_mb << 20))

    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)


def config(tmp_path: Path, text: str | None = None, size: int | None = None) -> Path:
    path = tmp_path / "config" / "kernelchat" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        if text is not None:
            f.write(text)
        if size is not None:
            f.truncate(size)  # sparse: gigabytes that take no disk
    return path


def one_sentence(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout[-500:], out.stderr[-2000:])
    err = out.stderr.strip()
    assert "Traceback" not in err and err.startswith("kernelchat") and len(err.splitlines()) <= 2, err
    return " ".join(err.split())


# -- the configuration file and the flags ----------------------------------------------------------

@pytest.mark.parametrize("text, says", [
    ("x = " + "[" * 50_000 + "]" * 50_000, "its TOML is nested too deeply to read"),
    ("[sandbox]\nmemory_mb = " + "{a = " * 400 + "1" + "}" * 400, "nested too deeply"),
    ("model = " + "9" * 5000, "a number in it has too many digits to read"),
    (f"[sandbox]\nmemory_mb = {HUGE}", "sandbox.memory_mb: input should be less than or equal to 1000000000000"),
    (f"[sandbox]\ndisk_mb = {HUGE}", "sandbox.disk_mb: input should be less than or equal to 1000000000000"),
    ("k" * 100_000 + " = 1", "unknown key 'kkkkk"),
])
def test_a_config_file_past_every_bound_is_one_sentence(tmp_path, text, says):
    path = config(tmp_path, text)
    err = one_sentence(kernelchat(tmp_path, "exec", "print(1)"))
    assert str(path) in err and says in err and len(err) < 600, err


@pytest.mark.parametrize("flag", ["--memory-mb", "--disk-mb"])
def test_a_limit_flag_past_its_range_is_one_sentence(tmp_path, flag):
    err = one_sentence(kernelchat(tmp_path, "exec", flag, str(HUGE), "print(1)"))
    assert f"{flag} must be a whole number of MB from 1 to 1,000,000,000,000, got {HUGE}" in err


def test_a_huge_config_file_under_an_address_space_limit(tmp_path):
    """3 GiB (sparse) under a 1 GiB address space: refused by its size, never read whole."""
    path = config(tmp_path, "model = 'x'\n", size=3 << 30)
    err = one_sentence(kernelchat(tmp_path, "exec", "print(1)", address_space_mb=1024))
    assert f"{path}: the configuration file is over 1,048,576 bytes" in err


# -- conversation files ----------------------------------------------------------------------------

def test_huge_and_deep_conversations_are_listed_each_with_one_sentence(tmp_path):
    """Under a 450 MB address space: a 300 MB file cannot be loaded (MemoryError, said), a 2 GiB one
    is refused by its size before it is read, one nested 100,000 deep is said too."""
    folder = tmp_path / "data" / "kernelchat" / "conversations"
    folder.mkdir(parents=True)
    for name, size in (("big-aaa.json", 300 << 20), ("huge-bbb.json", 2 << 30)):
        with open(folder / name, "wb") as f:
            f.truncate(size)
    (folder / "deep-ccc.json").write_text("[" * 100_000)
    out = kernelchat(tmp_path, "conversations", "--json", address_space_mb=450)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = {c["id"]: c["error"] for c in json.loads(out.stdout)["conversations"]}
    assert "not enough memory to load the conversation (314,572,800 bytes)" in errors["aaa"]
    assert "the conversation is over 1,073,741,824 bytes" in errors["bbb"]
    assert "nested too deeply" in errors["ccc"]


# -- task files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, says", [
    ('prompts = ["a"]\nx = ' + "[" * 50_000 + "]" * 50_000, "invalid TOML: nested too deeply to read"),
    ('prompts = ["a"]\nx = ' + "9" * 5000, "invalid TOML: a number has too many digits to read"),
    ('prompts = ["a"]\n#' + "x" * (5 << 20), "the task file is over 4,194,304 bytes"),
    (f'prompts = ["a"]\n[sandbox]\nmemory_mb = {HUGE}', "sandbox.memory_mb: Input should be less than or equal to"),
    ("prompts = [" + ",".join(["1"] * 100_000) + "]", "and 99,980 more problems"),
])
def test_a_task_file_past_every_bound_is_one_error(tmp_path, text, says):
    (tmp_path / "t.toml").write_text(text)
    out = kernelchat(tmp_path, "run", "t.toml", "--out", str(tmp_path / "out"), address_space_mb=2048)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.startswith("kernelchat run: invalid task file") and says in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.splitlines()) <= 22 and not (tmp_path / "out").exists()


# -- kernelchat exec: the cell's outcome stands ----------------------------------------------------

LEASE_TO_FOLDER = """
import glob, os
host = open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()[1]  # the reaper's parent
for p in glob.glob(f"/tmp/kernelchat-{os.getuid()}/leases/{host}-*.json"):
    os.remove(p); os.mkdir(p)  # the host's lease, swapped for a folder: releasing it fails
print("done", f"host={host}")
"""


def test_exec_warns_and_keeps_the_cells_exit_code_when_cleanup_fails(tmp_path):
    """Trusted code (isolation none) swaps the host's lease for a folder: the cell ran, so exit 0 and
    its output, then one warning line; before, close() raised and exec exited 2."""
    out = kernelchat(tmp_path, "exec", "--isolation", "none", "--workspace", str(tmp_path / "ws"), LEASE_TO_FOLDER)
    host = out.stdout.split("host=")[-1].split()[0] if "host=" in out.stdout else None
    try:
        assert out.returncode == 0 and "done" in out.stdout, (out.stdout[-1000:], out.stderr[-2000:])
        err = out.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert "the kernel was stopped, but cleaning up after it did not finish (IsADirectoryError" in err
    finally:
        for p in Path(f"/tmp/kernelchat-{os.getuid()}/leases").glob(f"{host}-*.json") if host else ():
            p.rmdir()  # the swapped-in folder: this run's only
