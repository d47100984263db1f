"""Round two of attacks on the host side of the sandbox, each with a real kernel: the kernel (model
code controls it entirely) forges iopub messages, swaps its own ipc socket for a link to a host
socket, fills the host's /tmp through its runtime folder, leaves a thread bomb behind, floods the
result's message with notes and its outputs with images.

Imports only `sandbox` (and the test helpers), so it can also run as user `nobody`."""

import json
import os
import socket
import tempfile
from pathlib import Path

import pytest

from sandbox import Kernel, safefs
from test_hostile_workspace import bounded  # fails the test if the host blocks

ROOT = os.getuid() == 0
SEND = "k = get_ipython().kernel\nk.session.send(k.iopub_socket, {kind!r}, {content}, parent=k.get_parent('shell'))\n"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    with Kernel(workspace=tmp_path_factory.mktemp("ws"), timeout=30) as k:
        yield k


# -- forged or malformed iopub messages: execute() returns a result, never raises -------------------

FORGED = {
    "stream text not a str": ("stream", "{'name': 'stdout', 'text': 5}"),
    "stream name unhashable": ("stream", "{'name': ['stdout'], 'text': 'x'}"),
    "content not JSON": ("stream", "b'\\xff\\xfe not json'"),
    "content nested too deep": ("stream", "b'[' * 100000"),
    "status without a state": ("status", "{}"),
    "content not an object": ("display_data", "b'[1, 2]'"),
}


@pytest.mark.parametrize("name", list(FORGED))
def test_forged_iopub_messages_never_break_execute(kernel, name):
    kind, content = FORGED[name]
    r = bounded(lambda: kernel.execute(SEND.format(kind=kind, content=content) + "'done'", timeout=20), 30)
    assert r.status == "ok" and r.result == "'done'", r
    assert kernel.execute("1 + 1", timeout=20).result == "2"


# -- the runtime folder: its sockets and its disk ---------------------------------------------------

SWAP_SOCKET = """
import json, os
from ipykernel.kernelapp import IPKernelApp
app = IPKernelApp.instance()
info = json.load(open(app.connection_file))
p = f"{{info['ip']}}-{{info['stdin_port']}}"
try:
    os.unlink(p)
    os.symlink({target!r}, p)
finally:
    app.stdin_socket.close(linger=0)  # the host's client reconnects to the path
"""


@pytest.mark.skipif(not ROOT, reason="as an ordinary user the sandbox shares the host's uid (docs/sandbox.md)")
def test_host_never_connects_to_a_socket_the_kernel_links_its_own_to(tmp_path):
    folder = tempfile.mkdtemp(prefix="kc-test-hostsock-")
    target = os.path.join(folder, "s")
    srv = socket.socket(socket.AF_UNIX)
    try:
        srv.bind(target)
        srv.listen(4)
        srv.settimeout(4)
        with Kernel(workspace=tmp_path, timeout=30) as k:
            bounded(lambda: k.execute(SWAP_SOCKET.format(target=target), timeout=20), 30)
            try:
                conn, _ = srv.accept()
                conn.close()
                connected = True
            except socket.timeout:
                connected = False
            assert not connected, "the host followed a link the kernel planted in its runtime folder"
    finally:
        srv.close()
        os.unlink(target)
        os.rmdir(folder)


def test_the_runtime_folder_cannot_fill_the_hosts_tmp(tmp_path):
    """The runtime folder lives in the host's /tmp, outside the workspace and its private /tmp."""
    with Kernel(workspace=tmp_path, timeout=60, disk_mb=20) as k:
        rt = k._runtime
        code = (f"import os, time\nfor i in range(60):\n    open(os.path.join({str(rt)!r}, f'fill-{{i}}'), 'wb')"
                ".write(b'x' * 2**20)\n    time.sleep(0.1)")
        r = bounded(lambda: k.execute(code, timeout=40), 50)
        assert r.status == "error", r
        assert "PermissionError" in (r.error_name or "") or "disk quota" in (r.message or ""), r
        # The quota is a watchdog checked about once a second: it stops the cell well before its
        # 60 MB, within a few seconds' writing (10 MB/s here) of the 20 MB quota.
        assert safefs.tree_bytes(rt) < 45 * 2**20
        assert k.execute("1 + 1").result == "2"


# -- limits ----------------------------------------------------------------------------------------

THREAD_BOMB = """
import threading, time
started = 0
try:
    for _ in range(500):
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        started += 1
except RuntimeError:
    pass
print("started", started)
"""


def test_a_thread_bomb_left_in_the_kernel_is_said(tmp_path):
    with Kernel(workspace=tmp_path, max_procs=64, timeout=60) as k:
        r = bounded(lambda: k.execute(THREAD_BOMB, timeout=30), 40)
        assert r.ok and "started" in r.stdout, r
        assert r.message and "threads" in r.message and "max_procs=64" in r.message, r
        assert "restart" in r.message


def test_notes_on_unusable_figures_are_bounded(kernel):
    code = "from IPython.display import display\nfor _ in range(5000):\n    display({'image/png': 5}, raw=True)"
    r = bounded(lambda: kernel.execute(code, timeout=60), 70)
    assert r.ok, r
    assert "not text" in r.message
    assert len(r.message) < 2000, len(r.message)


def test_image_bytes_kept_in_one_result_are_bounded(kernel):
    # 40 distinct images of 2 MB: 80 MB (their base64: 107 MB) would otherwise sit in the result,
    # the conversation file and the model's tree; 100 displays of 256 MB each would be 25 GB.
    code = ("import base64, os\nfrom IPython.display import display\n"
            "for i in range(40):\n"
            "    display({'image/png': base64.b64encode(b'\\x89PNG' + os.urandom(2 * 2**20)).decode()}, raw=True)")
    r = bounded(lambda: kernel.execute(code, timeout=90), 100)
    assert r.ok, r
    kept = sum(len(o.data or "") for o in r.outputs)
    assert kept <= 40 * 2**20, kept
    assert "figures" in (r.message or ""), r.message
    assert len(r.images) == 40  # every one is still saved under outputs/


# -- a workspace that belongs to an ordinary user, started by root ---------------------------------

@pytest.mark.skipif(not ROOT, reason="root hands the workspace to the sandbox's own uid")
def test_a_users_hard_link_and_the_workspace_mode_survive_a_run(tmp_path):
    """A user's file hard-linked into the workspace is never given to the sandbox (it would then
    write the twin outside), and the workspace's own mode is restored after the sandbox opened it."""
    user = 4242
    outside, ws = tmp_path / "outside", tmp_path / "ws"
    outside.mkdir()
    ws.mkdir(mode=0o750)
    ws.chmod(0o750)
    twin = outside / "notes.txt"
    twin.write_text("the user's own notes\n")
    os.link(twin, ws / "notes.txt")
    for p in (outside, ws, twin):
        os.chown(p, user, user)
    with Kernel(workspace=ws, timeout=30) as k:
        r = bounded(lambda: k.execute("import os\ntry:\n    open('notes.txt', 'a').write('pwned')\n"
                                      "except PermissionError as e:\n    print('refused')\n"
                                      "os.chmod('.', 0o777)"), 40)
        assert "refused" in r.stdout, r
    assert twin.read_text() == "the user's own notes\n"
    assert (twin.stat().st_uid, twin.stat().st_gid) == (user, user)
    st = ws.stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (user, oct(0o750))


def test_a_sparse_file_stays_sparse_when_downloaded(kernel, tmp_path):
    """1 GB apparent, a few KB used: within the quota in the workspace, and it must not become
    1 GB on the host's disk when downloaded."""
    r = bounded(lambda: kernel.execute("f = open('sparse.bin', 'wb'); f.seek(1 * 2**30); f.write(b'end'); f.close()"), 40)
    assert r.ok, r
    dest = bounded(lambda: kernel.download("sparse.bin", tmp_path / "sparse.bin"), 120)
    st = dest.stat()
    assert st.st_size == 1 * 2**30 + 3
    assert st.st_blocks * 512 < 16 * 2**20, f"{st.st_blocks * 512:,} bytes on disk"
    with open(dest, "rb") as f:
        f.seek(1 * 2**30)
        assert f.read() == b"end"
