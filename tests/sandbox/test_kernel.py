"""sandbox.Kernel with real ipykernels: execution, results, timeouts, death, output caps, files."""

import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox import ExecResult, Kernel, KernelPool
from sandbox.procs import pids_of_uid


def test_state_persists_and_results(shared_kernel):
    assert shared_kernel.execute("x = 2**100").ok
    r = shared_kernel.execute("print('hi'); import sys; print('warn', file=sys.stderr); x")
    assert isinstance(r, ExecResult)
    assert (r.status, r.stdout, r.stderr, r.result) == ("ok", "hi\n", "warn\n", "1267650600228229401496703205376")
    assert r.execution_count and r.duration > 0


def test_errors_are_results_not_exceptions(shared_kernel):
    r = shared_kernel.execute("def f(:\n  pass")
    assert r.status == "error" and r.error_name == "SyntaxError"
    r = shared_kernel.execute("1/0")
    assert (r.status, r.error_name, r.error_value) == ("error", "ZeroDivisionError", "division by zero")
    assert "\x1b[" not in r.traceback and "ZeroDivisionError" in r.traceback


def test_bad_arguments_raise_value_error(shared_kernel, tmp_path):
    with pytest.raises(ValueError, match="code must be a str"):
        shared_kernel.execute(42)
    with pytest.raises(ValueError, match="timeout must be a positive"):
        shared_kernel.execute("1", timeout=0)
    with pytest.raises(ValueError, match="does not exist"):
        Kernel(workspace=tmp_path / "missing")
    with pytest.raises(ValueError, match="isolation must be"):
        Kernel(isolation="docker")


def test_rich_outputs_saved_as_files(shared_kernel):
    r = shared_kernel.execute(textwrap.dedent("""
        import matplotlib.pyplot as plt
        from IPython.display import display, HTML, Markdown, SVG
        plt.plot([1, 2, 3]); plt.title("line"); plt.show()
        display(HTML("<b>bold</b>"), Markdown("# Title"))
        display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="5" height="5"/></svg>'))
    """))
    assert r.ok, r.traceback
    kinds = [o.mime for o in r.outputs]
    assert kinds == ["image/png", "text/html", "text/markdown", "image/svg+xml"]
    png, svg = r.images
    assert Path(png).read_bytes()[:4] == b"\x89PNG" and Path(png).parent == shared_kernel.outputs_dir
    assert "<svg" in Path(svg).read_text()
    assert r.outputs[1].text == "<b>bold</b>"


def test_output_streams_live_to_callback(shared_kernel):
    seen = []
    t0 = time.monotonic()
    r = shared_kernel.execute("import time\nprint('first', flush=True)\ntime.sleep(1.0)\nprint('second')",
                              on_output=lambda kind, data: seen.append((kind, data, time.monotonic() - t0)))
    assert r.ok
    first = [t for kind, data, t in seen if kind == "stdout" and "first" in data]
    assert first and first[0] < 0.9, seen  # arrived while the cell was still sleeping


def test_timeout_interrupts_and_keeps_state(kernel):
    kernel.execute("kept = 41")
    t0 = time.monotonic()
    r = kernel.execute("while True:\n    pass", timeout=1)
    assert r.status == "timeout" and not r.state_lost
    assert time.monotonic() - t0 < 3
    assert kernel.execute("kept + 1").result == "42"


def test_timeout_that_ignores_interrupt_restarts(kernel):
    kernel.execute("lost = 1")
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.05)"
    r = kernel.execute(code, timeout=1)
    assert r.status == "timeout" and r.state_lost and "restarted" in r.message
    assert kernel.execute("lost").error_name == "NameError"


@pytest.mark.parametrize("code", [
    "import os; os._exit(3)",
    "import ctypes; ctypes.string_at(0)",                     # segfault
    "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",  # what the OOM killer does
])
def test_death_is_detected_fast_and_kernel_restarts(kernel, code):
    kernel.execute("before = 1")
    t0 = time.monotonic()
    r = kernel.execute(code, timeout=30)
    assert r.status == "died" and r.state_lost
    assert "state" in r.message and "lost" in r.message
    assert time.monotonic() - t0 < 1.0 + 1.5  # detected within 1 s; the restart takes the rest
    assert kernel.execute("1+1").result == "2"
    assert kernel.execute("before").error_name == "NameError"


def test_output_is_capped_head_and_tail_with_full_file(kernel):
    r = kernel.execute("for i in range(100000): print(i)")
    assert r.ok and r.truncated
    assert r.stdout.startswith("0\n1\n2\n") and r.stdout.rstrip().endswith("99999")
    assert "characters of stdout cut" in r.stdout and len(r.stdout) < 2 * kernel.limits.output_chars
    full = Path(r.stdout_file).read_text()
    assert "\n54321\n" in full and full.rstrip().endswith("99999")


def test_200mb_of_output_keeps_host_memory_bounded(kernel):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = kernel.execute("import sys\nchunk = 'y' * 10**6\nfor _ in range(200):\n    sys.stdout.write(chunk)", timeout=120)
    assert r.ok and len(r.stdout) < 3 * kernel.limits.output_chars
    assert os.path.getsize(r.stdout_file) >= 200 * 10**6
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"host grew by {grown_mb:.0f} MB"


def test_fd_level_output_bypassing_python_is_capped_by_host(kernel):
    r = kernel.execute("import os\nfor _ in range(20):\n    os.write(1, b'z' * 10**6)\nimport time; time.sleep(0.5)", timeout=60)
    assert r.ok and len(r.stdout) < 3 * kernel.limits.output_chars and r.stdout_file


def test_upload_download_and_escape(kernel, tmp_path):
    src = tmp_path.parent / "host-data.csv"
    src.write_text("a,b\n1,2\n")
    kernel.upload(src, "data/in.csv")
    assert kernel.execute("open('data/in.csv').read()").result == "'a,b\\n1,2\\n'"
    kernel.execute("open('artifact.txt', 'w').write('made inside')")
    out = kernel.download("artifact.txt", tmp_path.parent / "out.txt")
    assert out.read_text() == "made inside"
    assert "artifact.txt" in kernel.files()
    kernel.execute("import os; os.symlink('/etc/hostname', 'link')")
    with pytest.raises(ValueError, match="outside the workspace"):
        kernel.download("link", tmp_path.parent / "stolen")
    with pytest.raises(ValueError, match="outside the workspace"):
        kernel.upload(src, "../escape.csv")


def test_no_orphans_after_close_even_with_escaped_children(tmp_path):
    k = Kernel(workspace=tmp_path)
    k.execute("import subprocess\nsubprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
              "import os\nif os.fork() == 0:\n    os.setsid(); import time; time.sleep(1000)")
    uid = k.sandbox_uid
    pid = k.pid
    k.close()
    assert not Path(f"/proc/{pid}").exists()
    if uid is not None:
        deadline = time.monotonic() + 10  # the kernel's processes are gone as soon as they are reaped
        while pids_of_uid(uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pids_of_uid(uid) == []


HOST_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from sandbox import Kernel
k = Kernel()
k.execute("import subprocess; subprocess.Popen(['sleep', '1000'])")
print(k.pid, k.sandbox_uid, flush=True)
{tail}
"""


@pytest.mark.parametrize("how", ["kill -9", "exit without close"])
def test_no_orphans_when_host_dies(how):
    tail = "time.sleep(1000)" if how == "kill -9" else "sys.exit(0)"
    script = HOST_SCRIPT.format(root=str(Path(__file__).resolve().parents[2]), tail=tail)
    host = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid, uid = host.stdout.readline().split()
    if how == "kill -9":
        host.kill()
    host.wait(timeout=30)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
    if uid != "None":
        assert pids_of_uid(int(uid)) == []


def test_pool_hands_out_started_kernels():
    with KernelPool(size=1) as pool:
        deadline = time.monotonic() + 30
        while not pool.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        k = pool.acquire()
        r = k.execute("1+1")
        first = time.monotonic() - t0
        assert r.result == "2" and first < 0.5, first
        k2 = pool.acquire()  # the replacement (started in the background, or now)
        assert k2.execute("3").result == "3" and k2.workspace != k.workspace
        k.close()
        k2.close()


def interrupt_once_running(kernel, sent: list):
    """An on_output callback: interrupt the cell once its first output says it is running (the
    event the test needs, not a fixed delay that a busy machine may not keep to)."""
    import threading

    def on_output(stream, text):
        if not sent and "sleeping" in str(text):
            sent.append(time.monotonic())
            threading.Thread(target=kernel.interrupt, daemon=True).start()
    return on_output


SLEEPER = "import time; print('sleeping', flush=True); time.sleep(30)"


def test_interrupt_returns_quickly(kernel):
    sent = []
    r = kernel.execute(SLEEPER, on_output=interrupt_once_running(kernel, sent))
    assert r.error_name == "KeyboardInterrupt" and sent
    assert time.monotonic() - sent[0] < 10  # at once, not after the 30 s sleep
