"""Faults of the sandbox's processes and options, each planted for real against a real kernel:
fork bombs, secrets in command lines, truthy strings, oversized results, a host killed with
kill -9, setsid daemons under isolation="none", and threads burning CPU while the kernel idles."""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox import Kernel
from sandbox.options import has_gpu
from sandbox.procs import is_running, pids_of_uid, start_time

REPO = Path(__file__).resolve().parents[2]
AS_ROOT = os.getuid() == 0


def _gone(pid: int, started: int | None, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while is_running(pid, started):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- 1. fork bombs ------------------------------------------------------------------------------

FORK_BOMB = """
import os, time
n = 0
try:
    while True:
        pid = os.fork()
        if pid == 0:
            {child}
        n += 1
except OSError as e:
    print('stopped after', n, type(e).__name__)
"""
CHILDREN = {
    "children that sleep": "time.sleep(60); os._exit(0)",
    # each child leaves a sleeping grandchild in a session of its own, then exits
    "orphans in new sessions": "os.setsid()\n            os.fork() or time.sleep(60)\n            os._exit(0)",
}


@pytest.mark.parametrize("kind", list(CHILDREN))
def test_fork_bomb_leaves_the_kernel_usable_and_says_so(tmp_path, kind):
    with Kernel(workspace=tmp_path, max_procs=64, timeout=60) as k:
        assert k.execute("kept = 'alive'").ok
        r = k.execute(textwrap.dedent(FORK_BOMB).format(child=CHILDREN[kind]))
        assert r.status == "ok" and "stopped after" in r.stdout, r
        assert "process limit (max_procs=64)" in r.message and "leftover processes were killed" in r.message
        assert "kernelchat notice" not in r.stderr
        t0 = time.monotonic()
        nxt = k.execute("import threading; threading.Thread(target=print).start(); 1+1")
        assert (nxt.status, nxt.result) == ("ok", "2"), nxt
        assert time.monotonic() - t0 < 5
        assert k.execute("kept").result == "'alive'" and not nxt.message


# -- 2. secrets never in a command line ------------------------------------------------------------

@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_env_secrets_are_not_in_any_command_line(tmp_path, isolation):
    secret = f"sk-planted-{os.getpid()}-{isolation}"
    with Kernel(workspace=tmp_path, isolation=isolation, env={"API_KEY": secret}) as k:
        assert k.execute("import os; os.environ['API_KEY']").result == repr(secret)
        assert all(secret not in a for a in k._spec.argv)
        seen = []
        for path in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                if secret.encode() in Path(path).read_bytes():
                    seen.append(path)
            except OSError:
                pass
        assert seen == []


# -- 3. options are checked strictly -------------------------------------------------------------

BAD_OPTIONS = [
    ({"network": "false"}, "network must be True or False"),
    ({"network": 1}, "network must be True or False"),
    ({"gpu": "yes"}, "gpu must be True, False or 'auto'"),
    ({"timeout": True}, "timeout must be a positive number"),
    ({"timeout": "10"}, "timeout must be a positive number"),
    ({"timeout": float("nan")}, "timeout must be a positive number"),
    ({"memory_mb": True}, "memory_mb must be a whole number"),
    ({"memory_mb": "512"}, "memory_mb must be a whole number"),
    ({"memory_mb": 0}, "memory_mb must be a whole number"),
    ({"max_procs": 1.5}, "max_procs must be a whole number"),
    ({"max_file_mb": False}, "max_file_mb must be a whole number"),
    ({"cpu_seconds": "2"}, "cpu_seconds must be a whole number"),
    ({"tmp_mb": -3}, "tmp_mb must be a whole number"),
    ({"output_chars": 100}, "output_chars must be a whole number from 201 to 1,000,000,000"),
    ({"idle_cpu_limit": "0.5"}, "idle_cpu_limit must be a positive number"),
    ({"env": {"A=B": "x"}}, "'A=B' is not a valid variable name"),
    ({"env": {"": "x"}}, "'' is not a valid variable name"),
    ({"env": {"A\0B": "x"}}, "is not a valid variable name"),
    ({"env": {"A": "x\0y"}}, "the value of A holds a NUL"),
    ({"env": {"A": 1}}, "env must map str to str"),
    ({"env": "A=B"}, "env must be a dict"),
    ({"start": "no"}, "start must be True or False"),
]


@pytest.mark.parametrize("options,message", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_options_are_one_clear_value_error(tmp_path, options, message):
    before = set(os.listdir(tmp_path))
    with pytest.raises(ValueError, match=message) as err:
        Kernel(workspace=tmp_path, **options)
    assert "\n" not in str(err.value) and type(err.value) is ValueError
    assert set(os.listdir(tmp_path)) == before


def test_gpu_auto_resolves_by_detection(tmp_path):
    k = Kernel(workspace=tmp_path, gpu="auto", start=False)
    try:
        assert k.gpu is has_gpu()
    finally:
        k.close()


# -- 4. every field of a result is bounded ----------------------------------------------------------

LIMIT = 1000
BIG_CELLS = {
    "a 2 MB last expression": "'x' * 2_000_000",
    "a 2 MB error message": "raise ValueError('y' * 2_000_000)",
    "a deep recursion": "def f(n):\n    return f(n + 1)\nf(0)",
    "a 2 MB exception name": "raise type('E' * 2_000_000, (Exception,), {})()",
    "2,000 displays": "from IPython.display import display, HTML, Markdown\n"
                       "for i in range(2_000):\n    display(HTML('<b>%d</b>' % i + 'z' * 3000))",
}


@pytest.fixture(scope="module")
def small_kernel():
    with Kernel(output_chars=LIMIT, timeout=120) as k:
        yield k


@pytest.mark.parametrize("name", list(BIG_CELLS))
def test_result_fields_are_capped(small_kernel, name):
    r = small_kernel.execute(BIG_CELLS[name])
    assert r.status in ("ok", "error"), r.message
    whole = len(r.model_dump_json())
    assert whole < 12 * LIMIT, whole  # 5 text fields, each bounded, plus the rich outputs' budget
    for field in (r.result, r.error_value, r.traceback, r.error_name):
        assert field is None or len(field) < LIMIT + 100
    if name == "a 2 MB last expression":
        assert r.result.startswith("'xxx") and r.result.endswith("xxx'") and "characters of the result cut" in r.result
    if name == "a 2 MB error message":
        assert r.error_name == "ValueError" and "characters of the error message cut" in r.error_value
        assert "characters of the traceback cut" in r.traceback
    if name == "a deep recursion":
        assert r.error_name == "RecursionError"
    if name == "2,000 displays":
        assert 0 < len(r.outputs) <= 100
        assert "2,000 displays" in r.message and "dropped" in r.message
    assert small_kernel.execute("1+1").result == "2"


# -- 5. a host killed with kill -9 -------------------------------------------------------------------

HOST = """
import json, sys, time
sys.path.insert(0, {root!r})
from sandbox import Kernel
k = Kernel(workspace={ws!r}, isolation={iso!r})
r = k.execute("open('made-by-kernel.txt', 'w').write('x'); import subprocess; subprocess.Popen(['sleep', '1000'])")
assert r.ok, r
cg = [str(d) for d in k._spec.cgroup.dirs] if k._spec.cgroup else []
print(json.dumps({{"rt": str(k._runtime), "lease": str(k._lease.path), "uid": k.sandbox_uid, "cgroups": cg}}), flush=True)
time.sleep(1000)
"""


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_what_a_killed_host_left_is_repaired_at_the_next_start(tmp_path, isolation):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "mine.txt").write_text("the user's own file")
    owner = (4242, 4243) if AS_ROOT else (os.getuid(), os.getgid())
    if AS_ROOT:
        os.chown(ws, *owner)
        os.chown(ws / "mine.txt", *owner)
    script = HOST.format(root=str(REPO), ws=str(ws), iso=isolation)
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(host.stdout.readline())
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=30)
    rt, lease = Path(info["rt"]), Path(info["lease"])
    assert lease.exists() and rt.exists()  # what the dead host left
    if info["uid"] is not None:
        assert (ws / "mine.txt").stat().st_uid == info["uid"]
    other = tmp_path / "other"
    other.mkdir()
    with Kernel(workspace=other, isolation=isolation) as k:
        assert k.execute("1+1").result == "2"
    assert not lease.exists() and not rt.exists()
    handed_back = [ws, ws / "mine.txt"]
    if info["uid"] is not None or not AS_ROOT:  # (a root kernel without isolation writes as root)
        handed_back.append(ws / "made-by-kernel.txt")
    for path in handed_back:
        assert (path.stat().st_uid, path.stat().st_gid) == owner, path
    assert not any(Path(d).exists() for d in info["cgroups"])
    if info["uid"] is not None:
        assert pids_of_uid(info["uid"]) == []


def test_a_lease_folder_that_is_not_private_is_refused(tmp_path, caplog):
    from sandbox.leases import private_dir

    assert private_dir(tmp_path / "fresh") and (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700
    planted = tmp_path / "planted"
    planted.mkdir()
    planted.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "fresh")
    assert private_dir(planted) is False and private_dir(link) is False
    assert "leases are off" in caplog.text


# -- 6. isolation="none": nothing outlives close() -----------------------------------------------------

DAEMONS = """
import os, subprocess, time
a = subprocess.Popen(['sleep', '1000'], start_new_session=True).pid
r, w = os.pipe()
if os.fork() == 0:  # double fork + setsid: the classic daemon
    os.setsid()
    pid = os.fork()
    if pid:
        os.write(w, str(pid).encode()); os._exit(0)
    time.sleep(1000); os._exit(0)
b = int(os.read(r, 20))
[a, b]
"""


def test_isolation_none_close_kills_setsid_daemons(tmp_path):
    k = Kernel(workspace=tmp_path, isolation="none")
    try:
        pids = eval(k.execute(DAEMONS).result)
        started = [start_time(p) for p in pids]
        assert all(is_running(p, s) for p, s in zip(pids, started))
    finally:
        k.close()
    assert all(_gone(p, s) for p, s in zip(pids, started))


def test_isolation_none_daemons_die_with_a_killed_host(tmp_path):
    script = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\nfrom sandbox import Kernel\n"
              f"k = Kernel(workspace={str(tmp_path)!r}, isolation='none')\n"
              f"print(k.execute({DAEMONS!r}).result, flush=True)\ntime.sleep(1000)\n")
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = eval(host.stdout.readline())
        started = [start_time(p) for p in pids]
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=30)
    assert all(_gone(p, s) for p, s in zip(pids, started))



def test_isolation_none_daemons_die_when_stop_signals_come_in_a_burst(tmp_path):
    # A killed host's parent-death signal comes once per host thread that dies: the reaper must
    # finish killing whatever a second (or fiftieth) signal interrupts.
    k = Kernel(workspace=tmp_path, isolation="none")
    try:
        pids = eval(k.execute(DAEMONS).result)
        reaper = int(k.execute("import os; os.getppid()").result)
        started = [start_time(p) for p in pids]
        for n in range(200):
            try:
                os.kill(reaper, signal.SIGHUP if n % 3 == 2 else signal.SIGTERM)
            except ProcessLookupError:
                break
        assert all(_gone(p, s) for p, s in zip(pids, started))
    finally:
        k.close()

# -- 7. CPU burnt while the kernel is idle --------------------------------------------------------------

# A pure-Python busy loop that allocates nothing (the issue's `[0 for _ in iter(int, 1)]` also eats memory).
BURNER = ("import threading\ndef burn():\n    while True:\n        pass\n"
          "threading.Thread(target=burn, name='burner', daemon=True).start()")


def test_a_thread_burning_cpu_while_idle_is_reported(tmp_path):
    with Kernel(workspace=tmp_path) as k:
        assert k.execute(BURNER).ok
        time.sleep(1.5)
        r = k.execute("1+1")
        assert r.result == "2" and "idle" in r.message and "of CPU" in r.message, r.message
        assert "idle_cpu_limit" in r.message


def test_idle_cpu_limit_stops_the_thread(tmp_path):
    with Kernel(workspace=tmp_path, idle_cpu_limit=0.5) as k:
        assert k.execute(BURNER).ok
        time.sleep(5.5)  # the watchdog samples each second and acts after two busy seconds
        r = k.execute("import threading; sorted(t.name for t in threading.enumerate() if t.name == 'burner')")
        assert r.result == "[]", r
        assert "over idle_cpu_limit=0.5" in r.message and "'burner'" in r.message, r.message
        time.sleep(1.5)
        quiet = k.execute("1+1")
        assert quiet.result == "2" and not quiet.message
