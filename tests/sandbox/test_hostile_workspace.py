"""The host side of the sandbox against a hostile workspace: code in a real kernel plants links
(to host files and folders, `outputs/` itself), FIFOs, hard links, odd names, huge trees, and
swaps them while the host works. Each test checks that no host file outside the workspace
changed (bytes, mode, owner), that nothing hung, and that the error says what happened.

Imports only `sandbox`: test_unprivileged.py reruns this file as user `nobody`."""

import base64
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from sandbox import Kernel
from sandbox import safefs
from sandbox.safechown import chown_tree

PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)
SHOW_PNG = f"from IPython.display import display, Image\ndisplay(Image(data={PNG!r}, format='png'))"
# Output sent straight to iopub bypasses the kernel's own cap (boot.py): the host cuts and spills it.
RAW_OUTPUT = ("k = get_ipython().kernel\nfor _ in range(12):\n    k.session.send(k.iopub_socket, 'stream', "
              "{'name': 'stdout', 'text': 'z' * 10**6}, parent=k.get_parent('shell'), ident=b'stream.stdout')")
ROOT = os.getuid() == 0


class Host:
    """A folder outside the workspace with files the sandbox must never touch."""

    def __init__(self, path: Path):
        self.path = path
        self.secret = path / "secret.txt"
        self.secret.write_bytes(b"host secret\n")
        self.secret.chmod(0o600)
        (path / "sub").mkdir()
        (path / "sub" / "inner.txt").write_bytes(b"inner\n")
        self.before = self.snapshot()

    def snapshot(self) -> dict:
        out = {}
        for p in sorted(self.path.rglob("*")):
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(self.path))] = (data, st.st_mode, st.st_uid, st.st_gid)
        return out

    def unchanged(self) -> None:
        assert self.snapshot() == self.before, "a host file outside the workspace changed"


@pytest.fixture
def host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("host"))
    yield h
    h.unchanged()


def bounded(fn, seconds: float):
    """Run fn(); fail if it takes longer than `seconds` (the host blocked on something)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: the host blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


def run(k: Kernel, code: str, timeout: float = 30):
    r = bounded(lambda: k.execute(code, timeout=timeout), timeout + 3)
    assert r.status in ("ok", "error"), (r.status, r.message, r.traceback)
    return r


# -- 1. rich outputs ---------------------------------------------------------------------------

OUTPUTS_REPLACED = {
    "link to a host folder": "os.symlink({host!r}, 'outputs')",
    "dangling link to a new host folder": "os.symlink({host!r} + '/made', 'outputs')",
    "FIFO": "os.mkfifo('outputs')",
    "link to /dev/zero": "os.symlink('/dev/zero', 'outputs')",
    "regular file": "open('outputs', 'w').write('x')",
}


@pytest.mark.parametrize("plant", OUTPUTS_REPLACED, ids=list(OUTPUTS_REPLACED))
def test_figure_when_outputs_is_replaced(kernel, host, plant):
    code = "import os, shutil\nshutil.rmtree('outputs', ignore_errors=True)\n" + OUTPUTS_REPLACED[plant].format(
        host=str(host.path))
    run(kernel, code)
    r = run(kernel, SHOW_PNG, timeout=10)
    assert r.ok, r.traceback
    [img] = r.outputs
    assert img.path is None and base64.b64decode(img.data) == PNG  # the image travels in the result
    assert "could not be saved as a file" in r.message and "outputs" in r.message, r.message
    assert not (host.path / "made").exists()


@pytest.mark.parametrize("plant", ["link to host file", "dangling link", "FIFO", "folder"])
def test_figure_named_like_a_planted_object(kernel, host, plant):
    target = {"link to host file": f"os.symlink({str(host.secret)!r}, p)",
              "dangling link": f"os.symlink({str(host.path / 'new.png')!r}, p)",
              "FIFO": "os.mkfifo(p)", "folder": "os.mkdir(p)"}[plant]
    # One name planted: the host counts one figure-* file, so its next name is exactly this one.
    run(kernel, f"import os\np = 'outputs/figure-0002.png'\n{target}")
    r = run(kernel, SHOW_PNG, timeout=10)
    assert r.ok and not r.message, r.message
    [img] = r.outputs
    assert img.path.endswith("figure-0002-2.png") and Path(img.path).read_bytes() == PNG
    assert not (host.path / "new.png").exists()


def test_image_over_max_file_mb_is_neither_saved_nor_kept(tmp_path):
    with Kernel(workspace=tmp_path, max_file_mb=1, timeout=30) as k:
        r = run(k, f"from IPython.display import display, Image\ndisplay(Image(data={PNG!r} + bytes(3 * 2**20), "
                   "format='png'))")
        assert r.ok and r.outputs == [] and "over max_file_mb" in r.message, r.message
        assert not any(n.startswith("figure-") for n in os.listdir(tmp_path / "outputs"))


def test_svg_bytes_travel_in_the_result(kernel):
    r = run(kernel, "from IPython.display import SVG\nSVG('<svg xmlns=\"http://www.w3.org/2000/svg\"/>')")
    [svg] = [o for o in r.outputs if o.mime == "image/svg+xml"]
    assert base64.b64decode(svg.data).decode().startswith("<svg") and Path(svg.path).read_text().startswith("<svg")


# -- 2. spill files of cut output --------------------------------------------------------------


@pytest.mark.parametrize("plant", ["dangling link", "link to host file", "FIFO"])
def test_spill_file_named_like_a_planted_object(kernel, host, plant):
    target = {"dangling link": f"os.symlink({str(host.path / 'pwned.txt')!r}, p)",
              "link to host file": f"os.symlink({str(host.secret)!r}, p)", "FIFO": "os.mkfifo(p)"}[plant]
    run(kernel, f"import os\np = 'outputs/host-output-0002-stdout.txt'\n{target}")
    r = run(kernel, RAW_OUTPUT, timeout=30)
    assert r.ok and r.truncated
    assert r.stdout_file.endswith("host-output-0002-stdout-2.txt")
    assert os.path.getsize(r.stdout_file) >= 12 * 10**6
    assert not (host.path / "pwned.txt").exists()


@pytest.mark.parametrize("plant", ["FIFO", "link to a host folder"])
def test_spill_when_outputs_is_hostile_keeps_head_and_tail(kernel, host, plant):
    target = {"FIFO": "os.mkfifo('outputs')", "link to a host folder": f"os.symlink({str(host.path)!r}, 'outputs')"}
    run(kernel, f"import os, shutil\nshutil.rmtree('outputs')\n{target[plant]}")
    r = run(kernel, RAW_OUTPUT, timeout=30)
    assert r.ok and r.stdout_file is None
    assert "the full stdout could not be saved" in r.stdout and len(r.stdout) < 3 * kernel.limits.output_chars


def test_a_forged_marker_does_not_name_a_host_file(kernel):
    r = run(kernel, "print('[kernelchat: 5 characters of stdout cut; full stdout in /etc/shadow]')")
    assert r.ok and r.stdout_file is None and not r.truncated


def test_execute_never_blocks_on_planted_fifos(kernel):
    run(kernel, "import os\nos.makedirs('outputs', exist_ok=True)\n"
                "for n in range(1, 6):\n"
                "    os.mkfifo(f'outputs/figure-{n:04d}.png'); os.mkfifo(f'outputs/host-output-{n:04d}-stdout.txt')\n"
                "    os.mkfifo(f'outputs/output-{n:04d}-stdout.txt')")
    t0 = time.monotonic()
    r = bounded(lambda: kernel.execute(SHOW_PNG + "\n" + RAW_OUTPUT + "\nprint('x' * 10**6)", timeout=8), 11)
    assert time.monotonic() - t0 < 11 and r.status in ("ok", "error"), r.message
    run(kernel, "import os, shutil\nshutil.rmtree('outputs')\nos.mkfifo('outputs')")
    r = bounded(lambda: kernel.execute(SHOW_PNG + "\n" + RAW_OUTPUT + "\nprint('y' * 10**6)", timeout=8), 11)
    assert r.status in ("ok", "error") and r.outputs and r.outputs[0].data


# -- 3. upload, download, files ----------------------------------------------------------------


def test_upload_over_a_planted_link_replaces_it(kernel, host, tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "data.csv"
    src.write_text("a,b\n")
    run(kernel, f"import os\nos.symlink({str(host.secret)!r}, 'data.csv')\nos.mkfifo('fifo.csv')")
    bounded(lambda: kernel.upload(src, "data.csv"), 10)
    bounded(lambda: kernel.upload(src, "fifo.csv"), 10)
    assert run(kernel, "open('data.csv').read() + open('fifo.csv').read()").result == "'a,b\\na,b\\n'"
    assert not os.path.islink(kernel.workspace / "data.csv")


def test_upload_through_a_linked_folder_is_refused(kernel, host, tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "x.csv"
    src.write_text("x")
    run(kernel, f"import os\nos.symlink({str(host.path)!r}, 'sub')")
    with pytest.raises(ValueError, match="'sub' is a symbolic link.*outside the workspace"):
        kernel.upload(src, "sub/x.csv")
    with pytest.raises(ValueError, match="'sub' is a symbolic link"):
        kernel.upload(src.parent, "sub")


def test_upload_of_a_tree_skips_its_links_and_fifos(kernel, host, tmp_path_factory):
    src = tmp_path_factory.mktemp("tree")
    (src / "ok.txt").write_text("fine")
    (src / "leak.txt").symlink_to(host.secret)
    (src / "leakdir").symlink_to(host.path)
    os.mkfifo(src / "pipe")
    bounded(lambda: kernel.upload(src, "up"), 10)
    assert kernel.files() == ["up/ok.txt"]


def test_upload_over_a_hard_link_to_a_host_file_leaves_the_host_file(kernel, host, tmp_path_factory):
    # The sandbox cannot make this link (the workspace is its own mount: EXDEV); a user or an
    # unsandboxed run could have. The host must still never write through it.
    os.link(host.secret, kernel.workspace / "hard.txt")
    src = tmp_path_factory.mktemp("src") / "new.txt"
    src.write_text("new")
    kernel.upload(src, "hard.txt")
    assert (kernel.workspace / "hard.txt").read_text() == "new"


def test_the_sandbox_cannot_hard_link_a_host_file(kernel):
    r = run(kernel, "import os\ntry:\n    os.link('/usr/bin/env', 'hl'); print('linked')\n"
                    "except OSError as e:\n    print(type(e).__name__)")
    if kernel.isolation == "bwrap":
        assert "linked" not in r.stdout, r.stdout


def test_download_refuses_links_and_special_files(kernel, host, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    run(kernel, f"import os\nos.symlink({str(host.secret)!r}, 'link')\nos.mkfifo('pipe')\n"
                f"os.symlink({str(host.path)!r}, 'dirlink')\nos.symlink('/dev/zero', 'zero')")
    for name, what in (("link", "symbolic link"), ("pipe", "FIFO"), ("zero", "symbolic link")):
        with pytest.raises(ValueError, match=f"'{name}' is a {what}"):
            bounded(lambda: kernel.download(name, out / name), 10)
    with pytest.raises(ValueError, match="'dirlink' is a symbolic link"):
        kernel.download("dirlink/secret.txt", out / "s")
    with pytest.raises(ValueError, match="outside the workspace"):
        kernel.download("../" + host.path.name + "/secret.txt", out / "s")
    with pytest.raises(ValueError, match="outside the workspace"):
        kernel.download(str(host.secret), out / "s")
    assert list(out.iterdir()) == []


def test_download_of_a_folder_copies_only_files_and_folders(kernel, host, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "copy"
    run(kernel, f"import os\nos.makedirs('d/e')\nopen('d/e/f.txt', 'w').write('ok')\n"
                f"os.symlink({str(host.secret)!r}, 'd/leak')\nos.symlink({str(host.path)!r}, 'd/e/leakdir')\n"
                "os.mkfifo('d/pipe')\nos.symlink('.', 'd/loop')")
    bounded(lambda: kernel.download("d", out), 10)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["e", "e/f.txt"]


def test_files_reveal_nothing_through_links(kernel, host):
    run(kernel, f"import os\nos.symlink({str(host.secret)!r}, 'exists')\nos.symlink({str(host.path / 'no')!r}, 'no')\n"
                f"os.symlink({str(host.path)!r}, 'hostdir')\nos.symlink('.', 'loop')\nos.symlink('..', 'up')\n"
                "os.mkfifo('pipe')\nopen('real.txt', 'w').write('x')")
    assert bounded(kernel.files, 5) == ["real.txt"]


def test_unicode_newline_and_undecodable_names(kernel, tmp_path_factory):
    run(kernel, "import os\nos.mkdir('d')\nfor n in ['d/a\\nb.txt', 'd/ü😀.txt']:\n    open(n, 'w').write(n)\n"
                "open(b'd/\\xff.bin', 'wb').write(b'raw')")
    names = kernel.files()
    assert {"d/a\nb.txt", "d/ü😀.txt", "d/\udcff.bin"} <= set(names), names
    out = tmp_path_factory.mktemp("out") / "d"
    kernel.download("d", out)
    assert (out / "a\nb.txt").read_text() == "d/a\nb.txt" and os.path.exists(os.path.join(os.fsencode(out), b"\xff.bin"))


def test_a_huge_and_deep_tree_stays_bounded(kernel):
    r = run(kernel, "import os\nfor d in range(105):\n    os.mkdir(f't{d}')\n    for i in range(1000):\n"
                    "        open(f't{d}/{i}', 'w').close()\n"
                    "deep = 'deep/' + '/'.join(['d'] * 300)\nos.makedirs(deep)\nopen(deep + '/bottom.txt', 'w').close()",
            timeout=120)
    assert r.ok, r.traceback
    t0 = time.monotonic()
    names = bounded(kernel.files, 30)
    took = time.monotonic() - t0
    assert len(names) <= safefs.MAX_ENTRIES and took < 30
    t0 = time.monotonic()
    usage = safefs.tree_usage(kernel.workspace)
    print(f"\nfiles() over 105,300 entries: {took:.2f} s; tree_usage: {time.monotonic() - t0:.2f} s, {usage}")
    assert not usage.complete


# -- 4. handing ownership back -----------------------------------------------------------------

needs_root = pytest.mark.skipif(not ROOT, reason="ownership changes only when the host runs as root")


@needs_root
def test_close_hands_back_without_following_links(tmp_path, host):
    outside = host.path / "sub" / "inner.txt"
    with Kernel(workspace=tmp_path, timeout=30) as k:
        assert k.sandbox_uid is not None
        run(k, f"import os\nos.symlink({str(host.secret)!r}, 'shadow')\nos.symlink({str(host.path)!r}, 'hostdir')\n"
               "os.mkdir('mine')\nopen('mine/f', 'w').write('x')\nos.chmod('mine/f', 0o4755)")
        k.restart()  # the start's chown (to the sandbox's uid) must not follow them either
        host.unchanged()
    owner = (tmp_path.stat().st_uid, tmp_path.stat().st_gid)
    for p in (tmp_path / "mine", tmp_path / "mine" / "f", tmp_path / "shadow"):
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == owner, p
    assert not (tmp_path / "mine" / "f").stat().st_mode & stat.S_ISUID
    assert outside.stat().st_uid == host.before["sub/inner.txt"][2]


@needs_root
def test_hard_linked_host_file_is_not_given_to_the_sandbox(tmp_path, host):
    os.link(host.secret, tmp_path / "hard.txt")
    with Kernel(workspace=tmp_path, timeout=30) as k:
        assert host.secret.stat().st_uid == 0
        r = run(k, "open('hard.txt', 'a').write('pwned')")
        assert r.status == "error" and r.error_name == "PermissionError"
    host.unchanged()


@needs_root
def test_chown_tree_never_follows_a_folder_swapped_for_a_link(tmp_path, host):
    # What a racing sandbox would do: folders become links to a host folder and back. (The walk
    # this replaced, os.walk + chown by path, gave the host's files away within 100 rounds.)
    ws = tmp_path / "ws"
    for j in range(20):
        (ws / f"d{j}").mkdir(parents=True)
        for i in range(20):
            (ws / f"d{j}" / f"f{i}").write_text("x")
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            for j in range(20):
                try:
                    os.rename(ws / f"d{j}", ws / f"x{j}")
                    os.symlink(host.path, ws / f"d{j}")
                except OSError:
                    pass
            time.sleep(0.002)
            for j in range(20):
                try:
                    os.unlink(ws / f"d{j}")
                    os.rename(ws / f"x{j}", ws / f"d{j}")
                except OSError:
                    pass
            time.sleep(0.001)

    t = threading.Thread(target=swap, daemon=True)
    t.start()
    try:
        for i in range(100):
            chown_tree(ws, 12345 + i % 2, 12345 + i % 2)
    finally:
        stop.set()
        t.join()
    host.unchanged()


# -- 6. disk quota -----------------------------------------------------------------------------


def test_disk_quota_stops_a_cell_and_keeps_the_state(tmp_path):
    with Kernel(workspace=tmp_path, disk_mb=30, timeout=60) as k:
        run(k, "x = 41")
        t0 = time.monotonic()
        r = run(k, "import time\nf = open('big.bin', 'wb')\nfor i in range(600):\n"
                   "    f.write(b'x' * 2**20); f.flush(); time.sleep(0.01)", timeout=60)
        took = time.monotonic() - t0
        assert r.status == "error" and "over its disk quota of 30 MB" in r.message, (r.status, r.message)
        assert took < 8 and os.path.getsize(tmp_path / "big.bin") < 400 * 2**20
        assert run(k, "x + 1").result == "42"
        r = run(k, "f.close()\nimport os\nos.remove('big.bin')")
        assert r.ok and not r.message
        r = run(k, "open('b.bin', 'wb').write(b'x' * 40 * 2**20)")  # a quick cell: caught right after it
        assert r.status == "error" and "disk quota" in r.message


def test_default_disk_quota_is_a_share_of_the_free_space(tmp_path):
    with Kernel(workspace=tmp_path, timeout=30, start=False) as k:
        st = os.statvfs(tmp_path)
        assert 0 < k.limits.disk_mb <= st.f_bavail * st.f_frsize // 2**20 // 4 + 1
    with Kernel(workspace=tmp_path, timeout=30, start=False, disk_mb=None) as k:
        assert k.limits.disk_mb is None


# -- races with a kernel that keeps swapping names ---------------------------------------------


def test_download_and_files_while_the_kernel_swaps_a_file_for_a_link(kernel, host, tmp_path_factory):
    run(kernel, "import os, threading\nopen('real', 'w').write('plain')\n"
                f"def swap():\n    while True:\n        try:\n            os.symlink({str(host.secret)!r}, 'tmp')\n"
                "            os.rename('tmp', 'f.txt')\n            os.link('real', 'tmp2'); os.rename('tmp2', 'f.txt')\n"
                "        except OSError:\n            pass\nthreading.Thread(target=swap, daemon=True).start()")
    out = tmp_path_factory.mktemp("out")
    got = set()
    for i in range(200):
        try:
            got.add(kernel.download("f.txt", out / f"{i}").read_bytes())
        except ValueError as e:
            assert any(w in str(e) for w in ("symbolic link", "does not exist", "keeps changing")), e
        kernel.files()  # lists f.txt only while it is a regular file; never fails
    assert got <= {b"plain"} and b"host secret\n" not in got


def test_upload_while_the_kernel_swaps_the_target_folder(kernel, host, tmp_path_factory):
    src = tmp_path_factory.mktemp("tree")
    for i in range(50):
        (src / f"f{i}.txt").write_text("data")
    run(kernel, "import os, threading\nos.mkdir('t')\n"
                f"def swap():\n    while True:\n        try:\n            os.rename('t', 't2'); os.symlink({str(host.path)!r}, 't')\n"
                "            os.unlink('t'); os.rename('t2', 't')\n        except OSError:\n            pass\n"
                "threading.Thread(target=swap, daemon=True).start()")
    for _ in range(30):
        try:
            kernel.upload(src, "t/in")
        except ValueError as e:
            assert any(w in str(e) for w in ("symbolic link", "removed while", "keeps changing")), e
    host.unchanged()


# -- 7. gateway kernels: names from the remote listing -----------------------------------------


@pytest.fixture
def gw(request, tmp_path):
    pytest.importorskip("kernel_gateway")
    gateway = request.getfixturevalue("kernel_gateway")
    with Kernel(workspace=tmp_path, timeout=60, isolation="gateway", gateway_url=gateway.url,
                gateway_token=gateway.token) as k:
        yield k


@pytest.mark.parametrize("name", ["../escaped.txt", "/tmp/escaped-abs.txt", "a/../../escaped.txt"])
def test_gateway_download_refuses_names_that_leave_dest(gw, tmp_path_factory, name):
    out = tmp_path_factory.mktemp("gwout")
    run(gw, "import sys, json, base64\nm = sys.modules['_kernelchat_remote']\n"
            f"m.walk = lambda rel: json.dumps({{'kind': 'dir', 'files': [['ok.txt', 2], [{name!r}, 5]]}})\n"
            "m.read_chunk = lambda rel, off, size: json.dumps(base64.b64encode(b'pwned' if off == 0 else b'').decode())")
    with pytest.raises(ValueError, match="outside the workspace|absolute path"):
        gw.download("x", out / "dest")
    assert sorted(p.name for p in out.rglob("*")) == ["dest", "ok.txt"]
    assert not os.path.exists("/tmp/escaped-abs.txt")


def test_gateway_upload_skips_local_links(gw, host, tmp_path_factory):
    src = tmp_path_factory.mktemp("tree")
    (src / "ok.txt").write_text("fine")
    (src / "leak.txt").symlink_to(host.secret)
    os.mkfifo(src / "pipe")
    bounded(lambda: gw.upload(src, "up"), 30)
    assert [f for f in gw.files() if f.startswith("up/")] == ["up/ok.txt"]
