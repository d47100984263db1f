"""Temporary workspaces (workspace=None) on close, with real kernels: removed when they hold no
file, kept (and named in `kept_workspace`) when the code wrote one, never a step outside them."""

import shutil

import pytest

from sandbox import Kernel
from sandbox.saferm import remove_tree


def test_an_empty_run_removes_the_temporary_workspace():
    k = Kernel()
    assert k.temporary_workspace and k.execute("x = 6 * 7\nprint(x)").stdout == "42\n"
    assert k.execute("import os; os.makedirs('a/b/c')").ok  # empty folders are nothing to keep
    ws = k.workspace
    assert (ws / "outputs").is_dir() and (ws / "a/b/c").is_dir()
    k.close()
    assert not ws.exists() and k.kept_workspace is None


def test_a_file_written_by_the_kernel_keeps_the_workspace():
    k = Kernel()
    ws = k.workspace
    try:
        assert k.execute("import os; os.makedirs('data'); open('data/result.csv', 'w').write('a,b\\n1,2\\n')").ok
        k.close()
        assert k.kept_workspace == ws and (ws / "data/result.csv").read_text() == "a,b\n1,2\n"
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def test_planted_links_to_host_files_are_neither_followed_nor_counted(tmp_path):
    """Links to a host file and a host folder (and `outputs` swapped for a link): the workspace holds
    no file of its own, so it goes; the links go with it and what they point at stays."""
    secret = tmp_path / "host.txt"
    secret.write_text("keep me")
    folder = tmp_path / "hostdir"
    folder.mkdir()
    (folder / "inner.txt").write_text("keep me too")
    k = Kernel()
    ws = k.workspace
    code = (f"import os, shutil; os.symlink({str(secret)!r}, 'file-link'); os.symlink({str(folder)!r}, 'dir-link')\n"
            f"os.makedirs('deep/er'); os.symlink({str(folder)!r}, 'deep/er/link')\n"
            f"shutil.rmtree('outputs'); os.symlink({str(folder)!r}, 'outputs')")
    assert k.execute(code).ok
    k.close()
    assert shutil.rmtree.avoids_symlink_attacks
    assert not ws.exists() and k.kept_workspace is None
    assert secret.read_text() == "keep me" and (folder / "inner.txt").read_text() == "keep me too"


def test_keep_workspace_forces_either_way_and_a_given_folder_is_never_removed(tmp_path):
    with Kernel(keep_workspace=True, start=False) as k:
        pass
    assert k.kept_workspace == k.workspace and k.workspace.is_dir()
    k.workspace.rmdir()
    k = Kernel(keep_workspace=False)
    assert k.execute("open('x.txt', 'w').write('x')").ok
    k.close()
    assert not k.workspace.exists() and k.kept_workspace is None
    with Kernel(workspace=tmp_path, start=False) as k:
        assert not k.temporary_workspace
    assert tmp_path.is_dir() and k.kept_workspace is None
    with pytest.raises(ValueError, match="keep_workspace must be"):
        Kernel(keep_workspace="yes", start=False)


LOCK_UP = ("import os\n"
           "for d, mode in (('locked', 0o000), ('readonly', 0o500), ('nosearch', 0o600)):\n"
           "    os.makedirs(d + '/inner'); open(d + '/inner/f.txt', 'w').write('x'); open(d + '/g.txt', 'w').write('y')\n"
           "    os.chmod(d + '/inner', mode); os.chmod(d, mode)\n")


def test_folders_the_code_locked_up_are_removed_all_the_same():
    """chmod 000 / 500 / 600 folders (a plain user's rmtree can neither enter nor empty them; root's
    can, so this bites in the unprivileged run of tests/sandbox/test_unprivileged.py): a workspace to
    be removed goes whole, and one kept because it holds files does not break close()."""
    k = Kernel(keep_workspace=False)
    ws = k.workspace
    assert k.execute(LOCK_UP).ok
    k.close()
    assert not ws.exists() and k.kept_workspace is None
    k = Kernel()
    ws = k.workspace
    try:
        assert k.execute(LOCK_UP).ok
        k.close()  # holds files (or cannot be walked whole): kept, named
        assert k.kept_workspace == ws
    finally:
        remove_tree(ws)
