"""sandbox.Kernel(isolation="gateway") against a real Jupyter Kernel Gateway: the sandbox's
behaviour (results, errors, rich outputs, streaming, timeouts, death, caps, files, pool) over
REST + websocket, and clear errors for a bad token or an unreachable gateway."""

import textwrap
import time
from pathlib import Path

import pytest

from sandbox import ExecResult, Kernel, KernelError, KernelPool
from sandbox.gateway import GatewayError, GatewayKernel


@pytest.fixture(scope="module")
def gw_options(kernel_gateway):
    return dict(isolation="gateway", gateway_url=kernel_gateway.url, gateway_token=kernel_gateway.token)


@pytest.fixture(scope="module")
def gw_shared(gw_options):
    """One gateway kernel for the tests that neither kill nor wedge it."""
    with Kernel(timeout=60, **gw_options) as k:
        yield k


@pytest.fixture
def gw_kernel(gw_options, tmp_path):
    """A fresh gateway kernel for tests that break things."""
    with Kernel(workspace=tmp_path, timeout=60, **gw_options) as k:
        yield k


def test_dispatch_and_state_persists(gw_shared):
    assert isinstance(gw_shared, GatewayKernel) and isinstance(gw_shared, Kernel)
    assert gw_shared.kernel_id and gw_shared.alive and gw_shared.remote_workspace
    assert gw_shared.execute("x = 2**100").ok
    r = gw_shared.execute("print('hi'); import sys; print('warn', file=sys.stderr); x")
    assert isinstance(r, ExecResult)
    assert (r.status, r.stdout, r.stderr, r.result) == ("ok", "hi\n", "warn\n", "1267650600228229401496703205376")
    assert r.execution_count and r.duration > 0
    assert gw_shared.execute("import os; os.getcwd()").result == repr(gw_shared.remote_workspace)


def test_errors_are_results(gw_shared):
    r = gw_shared.execute("def f(:\n  pass")
    assert r.status == "error" and r.error_name == "SyntaxError"
    r = gw_shared.execute("1/0")
    assert (r.status, r.error_name, r.error_value) == ("error", "ZeroDivisionError", "division by zero")
    assert "\x1b[" not in r.traceback and "ZeroDivisionError" in r.traceback


def test_rich_outputs_saved_locally(gw_shared):
    r = gw_shared.execute(textwrap.dedent("""
        import matplotlib.pyplot as plt
        from IPython.display import display, HTML
        plt.plot([1, 2, 3]); plt.show()
        display(HTML("<b>bold</b>"))
    """))
    assert r.ok, r.traceback
    assert [o.mime for o in r.outputs] == ["image/png", "text/html"]
    png = Path(r.images[0])
    assert png.read_bytes()[:4] == b"\x89PNG" and png.parent == gw_shared.outputs_dir


def test_output_streams_live_to_callback(gw_shared):
    seen = []
    t0 = time.monotonic()
    r = gw_shared.execute("import time\nprint('first', flush=True)\ntime.sleep(1.0)\nprint('second')",
                          on_output=lambda kind, data: seen.append((kind, data, time.monotonic() - t0)))
    assert r.ok
    first = [t for kind, data, t in seen if kind == "stdout" and "first" in data]
    assert first and first[0] < 0.9, seen


def test_output_is_capped_head_and_tail_with_full_file(gw_shared):
    r = gw_shared.execute("for i in range(100000): print(i)")
    assert r.ok and r.truncated
    assert r.stdout.startswith("0\n1\n2\n") and r.stdout.rstrip().endswith("99999")
    assert "characters of stdout cut" in r.stdout and len(r.stdout) < gw_shared.limits.output_chars + 300
    full = Path(r.stdout_file)
    assert full.parent == gw_shared.outputs_dir  # a local file
    assert "\n54321\n" in full.read_text() and full.read_text().rstrip().endswith("99999")


def test_kernel_side_cap_bounds_the_network(gw_options, tmp_path):
    with Kernel(workspace=tmp_path, remote_output_chars=100_000, **gw_options) as k:
        r = k.execute("import sys\nfor _ in range(30):\n    sys.stdout.write('y' * 10**6)")
        assert r.ok and r.truncated and len(r.stdout) < k.limits.output_chars + 300
        # what crossed the network: about 100,000 characters, not 30 MB
        assert Path(r.stdout_file).stat().st_size < 200_000
        assert "full stdout in " + k.remote_workspace in Path(r.stdout_file).read_text()


def test_timeout_interrupts_and_keeps_state(gw_kernel):
    gw_kernel.execute("kept = 41")
    t0 = time.monotonic()
    r = gw_kernel.execute("while True:\n    pass", timeout=1)
    assert r.status == "timeout" and not r.state_lost
    assert time.monotonic() - t0 < 3
    assert gw_kernel.execute("kept + 1").result == "42"


def test_timeout_that_ignores_interrupt_restarts(gw_kernel):
    gw_kernel.execute("lost = 1")
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.05)"
    r = gw_kernel.execute(code, timeout=1)
    assert r.status == "timeout" and r.state_lost and "restarted" in r.message
    assert gw_kernel.execute("lost").error_name == "NameError"


def test_death_is_detected_and_kernel_restarts(gw_kernel):
    gw_kernel.execute("before = 1")
    gw_kernel.execute("open('kept.txt', 'w').write('files survive')")
    old = gw_kernel.kernel_id
    t0 = time.monotonic()
    r = gw_kernel.execute("import os; os._exit(3)", timeout=30)
    assert r.status == "died" and r.state_lost and "lost" in r.message
    assert time.monotonic() - t0 < 6  # the gateway polls every 1 s (docs/kernel_gateway_config.py)
    assert gw_kernel.kernel_id != old and gw_kernel.restarts == 1
    assert gw_kernel.execute("1+1").result == "2"
    assert gw_kernel.execute("before").error_name == "NameError"
    assert gw_kernel.execute("open('kept.txt').read()").result == "'files survive'"


def test_death_between_cells_is_reported_on_the_next(gw_kernel):
    gw_kernel.execute("import os, threading; threading.Timer(0.2, os._exit, (1,)).start()")
    deadline = time.monotonic() + 30  # until the gateway notices and says so on the websocket
    while gw_kernel.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    r = gw_kernel.execute("1+1")
    assert r.result == "2" and r.state_lost and "died" in r.message


def test_interrupt_returns_quickly(gw_kernel):
    from test_kernel import SLEEPER, interrupt_once_running

    sent = []
    r = gw_kernel.execute(SLEEPER, on_output=interrupt_once_running(gw_kernel, sent))
    assert r.error_name == "KeyboardInterrupt" and sent
    assert time.monotonic() - sent[0] < 10  # at once, not after the 30 s sleep


def test_upload_download_and_escape(gw_kernel, tmp_path):
    src = tmp_path.parent / "host-data.csv"
    src.write_text("a,b\n1,2\n")
    remote = gw_kernel.upload(src, "data/in.csv")
    assert str(remote) == gw_kernel.remote_workspace + "/data/in.csv"
    assert gw_kernel.execute("open('data/in.csv').read()").result == "'a,b\\n1,2\\n'"
    big = tmp_path.parent / "big.bin"
    big.write_bytes(bytes(range(256)) * 20_000)  # 5 MB: three chunks
    gw_kernel.upload(big)
    gw_kernel.execute("open('artifact.txt', 'w').write('made inside')")
    out = gw_kernel.download("artifact.txt", tmp_path.parent / "out.txt")
    assert out.read_text() == "made inside"
    assert gw_kernel.download("big.bin", tmp_path.parent / "big-back.bin").read_bytes() == big.read_bytes()
    folder = tmp_path.parent / "folder-back"
    gw_kernel.download("data", folder)
    assert (folder / "in.csv").read_text() == "a,b\n1,2\n"
    assert {"artifact.txt", "big.bin", "data/in.csv"} <= set(gw_kernel.files())
    gw_kernel.execute("import os; os.symlink('/etc/hostname', 'link')")
    with pytest.raises(ValueError, match="outside the workspace"):
        gw_kernel.download("link", tmp_path.parent / "stolen")
    with pytest.raises(ValueError, match="outside the workspace"):
        gw_kernel.upload(src, "../escape.csv")
    with pytest.raises(ValueError, match="does not exist"):
        gw_kernel.download("missing.txt", tmp_path.parent / "m")


def test_pool_and_environment_variables(kernel_gateway, monkeypatch):
    monkeypatch.setenv("KERNELCHAT_GATEWAY_URL", kernel_gateway.url)
    monkeypatch.setenv("KERNELCHAT_GATEWAY_TOKEN", kernel_gateway.token)
    with KernelPool(size=1, isolation="gateway") as pool:
        deadline = time.monotonic() + 30
        while not pool.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        k = pool.acquire()
        assert isinstance(k, GatewayKernel) and k.execute("1+1").result == "2"
        assert time.monotonic() - t0 < 0.5
        k2 = pool.acquire()
        assert k2.execute("3").result == "3" and k2.remote_workspace != k.remote_workspace
        k.close()
        k2.close()
        assert not k.alive


def test_chat_runs_on_the_gateway(kernel_gateway, monkeypatch, tmp_path):
    from agent import Chat
    from agent.models.scripted import ScriptedBackend, python_call

    monkeypatch.setenv("KERNELCHAT_GATEWAY_URL", kernel_gateway.url)
    monkeypatch.setenv("KERNELCHAT_GATEWAY_TOKEN", kernel_gateway.token)
    backend = ScriptedBackend([python_call("import os\nprint(2**100, os.getcwd())"), "done"])
    with Chat(backend=backend, isolation="gateway", workspace=tmp_path, progress=False) as chat:
        assert chat("What is 2**100?") == "done"
        assert isinstance(chat.kernel(), GatewayKernel)
        assert "1267650600228229401496703205376" in backend.requests[1][-1].content


def test_bad_token_is_a_clear_error(kernel_gateway):
    with pytest.raises(GatewayError, match="refused the token"):
        Kernel(isolation="gateway", gateway_url=kernel_gateway.url, gateway_token="wrong")


def test_unreachable_gateway_is_a_clear_error(free_port):
    with pytest.raises(KernelError, match="cannot reach the kernel gateway"):
        Kernel(isolation="gateway", gateway_url=f"http://127.0.0.1:{free_port}", gateway_token="t")


def test_missing_url_is_a_value_error(monkeypatch):
    monkeypatch.delenv("KERNELCHAT_GATEWAY_URL", raising=False)
    with pytest.raises(ValueError, match="needs the gateway's URL"):
        Kernel(isolation="gateway")


def test_run_tasks_with_their_kernels_on_the_gateway(kernel_gateway, tmp_path, monkeypatch):
    """`kernelchat run --gateway URL`: every task's kernel runs on the gateway."""
    from agent.frontends import cli

    monkeypatch.delenv("KERNELCHAT_GATEWAY_URL", raising=False)
    from agent.models.scripted import ScriptedBackend, python_call
    from agent.models.cassette import Cassette, RecordingBackend
    from agent.frontends.runner import run_tasks
    from agent.frontends.tasks import load_tasks

    task = tmp_path / "on-gateway.toml"
    task.write_text('prompts = ["go"]\n[[checks]]\nkernel = "where == \'gateway\'"\n')
    tasks = load_tasks([task])
    cassette = tmp_path / "c.json"
    rec = RecordingBackend(ScriptedBackend([python_call("where = 'gateway'; print(where)"), "done"]),
                           Cassette(cassette), task=tasks[0].name)
    results = run_tasks(tasks, tmp_path / "out", {tasks[0].name: rec}, show_progress=False,
                        kernel_options={"isolation": "gateway", "gateway_url": kernel_gateway.url,
                                        "gateway_token": kernel_gateway.token})
    assert results[0].status == "passed", results[0]
    token = tmp_path / "token"
    token.write_text(kernel_gateway.token + "\n")
    code = cli.main(["run", str(task), "--replay", str(cassette), "--out", str(tmp_path / "out2"),
                     "--gateway", kernel_gateway.url, "--gateway-token-file", str(token), "--no-progress"])
    assert code == 0


def test_a_deep_locked_tree_is_listed_and_removed_on_the_gateway(gw_options, tmp_path, caplog):
    """1,500 nested folders and a chmod 000 one in the gateway kernel's temporary folder: the folder
    download walks it (os.walk recursed per level) and, as a local one, copies nothing past 128
    folders deep here; closing removes the remote folder all the same."""
    k = Kernel(timeout=60, **gw_options)
    ws = Path(k.remote_workspace)  # the gateway runs on this machine here
    code = ("import os\nhere = os.getcwd(); os.makedirs('tree'); os.chdir('tree')\nfor _ in range(1500):\n"
            "    os.mkdir('d'); os.chdir('d')\nopen('deep.txt', 'w').write('x'); os.makedirs('locked/in')\n"
            "os.chmod('locked/in', 0); os.chmod('locked', 0); os.chdir(here); open('tree/top.txt', 'w').write('t')")
    try:
        assert k.execute(code).ok
        k.download("tree", tmp_path / "back")  # no RecursionError
        assert [p.name for p in (tmp_path / "back").iterdir()] == ["top.txt"]  # no deep chain here
        assert "skipped 1 file(s) more than 128 folders deep" in caplog.text
    finally:
        k.close()
    assert not ws.exists()
