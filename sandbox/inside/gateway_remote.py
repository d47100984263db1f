"""Runs inside a remote (gateway) kernel, stdlib only: the kernel's working folder, the output
cap, and file transfer in base64 chunks (the kernel gateway has no contents API by default).

GatewayKernel sends this file's source once per kernel process and installs it as the module
`_kernelchat_remote`; it then calls these functions through `user_expressions`, which leaves
the user's namespace and `_`/`Out` untouched. Every function returns JSON text (a str's repr
is never abbreviated by IPython, unlike long lists)."""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

WORKSPACE = None


def setup(workspace, env, boot_src, output_chars):
    """Enter (creating it) the workspace, set `env`, cap stdout/stderr at `output_chars`."""
    global WORKSPACE
    os.environ.update(env)
    if workspace is None:
        workspace = tempfile.mkdtemp(prefix="kernelchat-ws-")
    os.makedirs(workspace, exist_ok=True)
    os.chdir(workspace)
    WORKSPACE = os.path.realpath(workspace)
    if boot_src and output_chars:
        try:
            _install_cap(boot_src, os.path.join(WORKSPACE, "outputs"), output_chars)
        except Exception:  # noqa: BLE001 - an older ipykernel: the host-side cap still bounds what we keep
            pass
    return json.dumps(WORKSPACE)


def _install_cap(boot_src, outputs_dir, limit):
    # boot.py's StreamCap, the local kernels' cap: past `limit` the rest goes to a file here.
    boot = types.ModuleType("_kernelchat_boot")
    exec(compile(boot_src, "kernelchat_boot", "exec"), boot.__dict__)
    caps = [boot.StreamCap(s, outputs_dir, limit) for s in (sys.stdout, sys.stderr) if hasattr(s, "register_hook")]
    if caps:
        from IPython import get_ipython

        get_ipython().events.register("post_run_cell", lambda *_: [c.finish() for c in caps])


def _inside(relpath):
    """The real path of `relpath` in the workspace; ValueError when it leads outside."""
    path = os.path.realpath(os.path.join(WORKSPACE, relpath))
    if path != WORKSPACE and not path.startswith(WORKSPACE + os.sep):
        raise ValueError(f"{relpath!r} is outside the workspace {WORKSPACE!r}")
    return path


def write_chunk(relpath, b64, first, last):
    """Append one chunk to `relpath` (through a .part file, renamed on the last chunk)."""
    path = _inside(relpath)
    part = path + ".kcpart"
    if first:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(part, "wb" if first else "ab") as f:
        f.write(base64.b64decode(b64))
    if last:
        os.replace(part, path)
    return json.dumps(path)


def walk(relpath):
    """{"kind": "file"|"dir", "files": [[relative to relpath, size], ...]}; links leading
    outside the workspace are refused (a file) or skipped (inside a folder)."""
    root = _inside(relpath)
    if os.path.isfile(root):
        return json.dumps({"kind": "file", "files": [["", os.path.getsize(root)]]})
    if not os.path.isdir(root):
        raise ValueError(f"{relpath!r} does not exist in the workspace")
    files, folders = [], [root]
    while folders:  # a stack, not os.walk: that recurses per level (RecursionError past ~1000)
        try:
            with os.scandir(folders.pop()) as it:
                entries = list(it)
        except OSError:  # locked, or a path past PATH_MAX
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                folders.append(e.path)
                continue
            try:
                real = _inside(e.path)
            except ValueError:
                continue
            if os.path.isfile(real):
                files.append([os.path.relpath(e.path, root), os.path.getsize(real)])
    return json.dumps({"kind": "dir", "files": sorted(files)})


def read_chunk(relpath, offset, size):
    with open(_inside(relpath), "rb") as f:
        f.seek(offset)
        return json.dumps(base64.b64encode(f.read(size)).decode("ascii"))


def remove_workspace():
    if WORKSPACE and os.path.isdir(WORKSPACE):
        os.chdir(tempfile.gettempdir())
        # rm -rf and chmod -R walk any depth (shutil.rmtree recurses per level: RecursionError past
        # ~1000) and follow no link met on the way; chmod opens up folders the code locked.
        for argv in (["rm", "-rf", "--", WORKSPACE], ["chmod", "-R", "u+rwx", "--", WORKSPACE],
                     ["rm", "-rf", "--", WORKSPACE]):
            if not os.path.lexists(WORKSPACE):
                break
            try:
                subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError):  # no rm here (not a POSIX system)
                shutil.rmtree(WORKSPACE, ignore_errors=True)
                break
    return json.dumps(True)
