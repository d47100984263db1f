"""The parent of an isolation="none" kernel (stdlib only, run by the host's interpreter):

    python reaper.py HOST_PID KERNEL_ARGV...

Without a PID namespace, a process that calls setsid() (or double-forks) leaves the kernel's
process group and would outlive it. This launcher is a child subreaper: orphans of the kernel
re-parent to it instead of to init, so when the kernel exits, or the host dies or asks us to
stop (SIGTERM), everything below us is killed. Our exit status mirrors the kernel's.
"""

import ctypes
import os
import signal
import sys
import time

# sandbox/procs.py (stdlib only), in the folder above this one: the script's folder is sys.path[0].
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from procs import descendants  # noqa: E402

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
# Blocked and taken with sigwaitinfo, never delivered to a handler: a handler's exception can
# land anywhere, and the parent-death signal comes more than once (once for each of the host's
# threads that dies while we are re-parented among them), so a second one used to cut kill_all
# short and leave the kernel's daemons to init.
STOP = {signal.SIGTERM, signal.SIGHUP}


def kill_all():
    for _ in range(200):
        pids = descendants(os.getpid())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:  # reap what died (orphans are ours to reap)
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if not pid:
                break
        if not pids:
            return
        time.sleep(0.01)


def wait_for(kernel):
    """The kernel's wait status, or None when we are told to stop first."""
    while True:
        while True:  # reap every child that has ended; SIGCHLD stays pending for the next
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if not pid:
                break
            if pid == kernel:
                return status
        if signal.sigwaitinfo(STOP | {signal.SIGCHLD}).si_signo != signal.SIGCHLD:
            return None


def main():
    host_pid, argv = int(sys.argv[1]), sys.argv[2:]
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP | {signal.SIGCHLD})
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != host_pid:  # the host died before the line above
        return 1
    os.environ["JPY_PARENT_PID"] = str(os.getpid())  # the kernel exits if we die
    code = None
    try:
        code = wait_for(os.posix_spawn(argv[0], argv, os.environ, setsigmask=()))
    finally:
        kill_all()
    if code is None:
        return 1
    if os.WIFSIGNALED(code):  # die the same way, so the host can say why
        sig = os.WTERMSIG(code)
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    return os.waitstatus_to_exitcode(code)


if __name__ == "__main__":
    sys.exit(main())
