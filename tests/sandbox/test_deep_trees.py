"""Folder trees thousands deep, and folders locked with chmod 000, made by a real kernel: closing a
temporary workspace, a pool's kernel and a kernel's runtime folder never raises (Python 3.11's
shutil.rmtree recurses once per level: RecursionError), follows no link, leaves nothing behind
unsaid. Run as root and again as `nobody` (tests/sandbox/test_unprivileged.py)."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sandbox import Kernel, KernelPool
from sandbox.saferm import remove_tree

DEPTH = 1500  # past Python's recursion limit (1000): shutil.rmtree and os.walk raise here
# Run in the kernel: DEPTH nested folders under `top` (os.chdir: no path grows past PATH_MAX), a
# file and a link to a host folder halfway, and a locked folder holding a file at the bottom.
DEEP = """
import os
def deep(top, host=None, depth={depth}):
    here = os.getcwd()
    os.makedirs(top, exist_ok=True)
    os.chdir(top)
    for i in range(depth):
        os.mkdir('d'); os.chdir('d')
        if i == depth // 2 and host:
            os.symlink(host, 'host-link'); open('data.txt', 'w').write('x')
    os.makedirs('locked/inner'); open('locked/inner/f.txt', 'w').write('y')
    os.chmod('locked/inner', 0); os.chmod('locked', 0)
    os.chdir(here)
""".format(depth=DEPTH)


@pytest.fixture
def host_folder(tmp_path):
    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "keep.txt").write_text("host file")
    tmp_path.chmod(0o755)  # as root: the kernel's own uid must reach the link's target to plant it
    return folder


def test_a_deep_locked_tree_goes_with_a_removed_workspace(host_folder):
    k = Kernel(keep_workspace=False)
    ws = k.workspace
    assert k.execute(DEEP + f"deep('a', {str(host_folder)!r})", timeout=60).ok
    k.close()  # no RecursionError, no descriptor per level
    assert not ws.exists() and k.kept_workspace is None
    assert [p.name for p in host_folder.iterdir()] == ["keep.txt"] and (host_folder / "keep.txt").read_text() == "host file"


def test_a_deep_tree_keeps_a_temporary_workspace_and_names_it():
    """Past 128 levels the walk that looks for files is cut short, so the workspace is kept (it may
    hold the code's data), and named; close() itself never fails."""
    k = Kernel()
    ws = k.workspace
    try:
        assert k.execute(DEEP + "deep('a')", timeout=60).ok
        k.close()
        assert k.kept_workspace == ws and ws.is_dir()
    finally:
        assert remove_tree(ws).complete and not ws.exists()


def test_a_locked_folder_holding_a_file_keeps_the_workspace():
    """chmod 000 hides what a folder holds from a plain user's walk: that is not "no file", so the
    workspace is kept (as root the file is seen: kept too)."""
    k = Kernel()
    ws = k.workspace
    try:
        assert k.execute("import os; os.makedirs('box'); open('box/data.txt', 'w').write('x'); os.chmod('box', 0)").ok
        k.close()
        assert k.kept_workspace == ws
    finally:
        assert remove_tree(ws).complete and not ws.exists()


def test_a_pool_kernel_removes_its_deep_workspace():
    with KernelPool(size=1) as pool:
        k = pool.acquire()
        ws = k.workspace
        assert k.execute(DEEP + "deep('a')", timeout=60).ok
        k.close()
        assert not ws.exists()


def test_the_kernel_runtime_folder_goes_whatever_the_code_made_there():
    """The runtime folder (connection file, ipc sockets) is writable by the kernel where it runs as
    the host's user (isolation="none"; an ordinary user's bwrap too): a deep locked tree there is
    removed on restart and on close."""
    k = Kernel(isolation="none", keep_workspace=False)
    find = "import ipykernel.connect, os; rt = os.path.dirname(ipykernel.connect.get_connection_file()); print(rt)\n"
    try:
        r = k.execute(find + DEEP + "deep(os.path.join(rt, 'x'))", timeout=60)
        assert r.ok, r
        first = Path(r.stdout.strip())
        assert (first / "x").is_dir()
        k.restart()
        assert not first.exists()
        second = Path(k.execute(find + DEEP + "deep(os.path.join(rt, 'x'))", timeout=60).stdout.strip())
        assert (second / "x").is_dir()
    finally:
        k.close()
    assert not second.exists()


# -- sandbox.saferm on its own --------------------------------------------------------------------


def test_a_locked_workspace_root_is_opened_up_but_never_its_parent(tmp_path):
    parent = tmp_path / "parent"
    root = parent / "ws"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f").write_text("x")
    os.symlink(tmp_path, root / "a" / "up")  # a link is removed, never followed
    (root / "a").chmod(0o500)
    root.chmod(0)
    parent.chmod(0o755)
    done = remove_tree(root)
    assert done.complete and done.sentence() == "" and not root.exists()
    assert os.stat(parent).st_mode & 0o777 == 0o755 and os.stat(tmp_path).st_mode & 0o777 != 0


def test_a_link_or_a_file_at_the_root_is_unlinked_not_followed(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("k")
    (tmp_path / "link").symlink_to(target)
    assert remove_tree(tmp_path / "link").complete and not (tmp_path / "link").is_symlink()
    assert (target / "keep.txt").read_text() == "k"
    assert remove_tree(tmp_path / "missing").complete


SAY = """
import os, sys
sys.path.insert(0, sys.argv[1])
from saferm import remove_or_say
print(remove_or_say(sys.argv[2]))
"""


def _descend(top: Path, depth: int) -> int:
    """A descriptor of the folder `depth` levels of `d` below `top` (its path is past PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


@pytest.mark.skipif(os.getuid() != 0 or not Path("/usr/bin/python3").exists() or not shutil.which("setpriv"),
                    reason="needs root (to plant another user's folder) and a system Python")
def test_what_a_plain_user_cannot_remove_is_said_once():
    """A folder another user owns at the bottom of a plain user's deep tree: everything else goes,
    what is left is one warning line with the count (no traceback, no line per entry)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="kernelchat-saferm-"))  # pytest's own is private to root
    try:
        _said_once(tmp_path)
    finally:
        remove_tree(tmp_path)


def _said_once(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "sandbox" / "saferm.py", lib / "saferm.py")
    ws = tmp_path / "ws"
    ws.mkdir()
    fd = _descend(ws, 0)
    for _ in range(DEPTH):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    for name in ("theirs", "mine"):
        os.mkdir(name, dir_fd=fd)
        for i in range(5):
            os.close(os.open(f"{name}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)
    subprocess.run(["chown", "-R", "65534:65534", str(ws)], check=True)
    fd = _descend(ws, DEPTH)
    for name in ("theirs", *(f"theirs/f{i}" for i in range(5))):
        os.chown(name, 0, 0, dir_fd=fd)
    os.close(fd)
    for p in (tmp_path, lib):
        p.chmod(0o755)
    (lib / "saferm.py").chmod(0o644)
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                          "-c", SAY, str(lib), str(ws)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out
    assert out.stderr.strip() == (f"could not remove 1 entry under {ws} (permission denied); "
                                  "remove it by hand"), out.stderr
    left = subprocess.run(["find", str(ws)], capture_output=True, text=True).stdout.split()
    assert len(left) == 8 and sum(p.endswith("/theirs") for p in left) == 1, left  # ws, its folder, theirs, 5 files
    assert remove_tree(ws).complete and not ws.exists()  # root's removal takes the rest
