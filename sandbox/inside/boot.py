"""Runs inside the sandbox as the kernel's entry point (stdlib + ipykernel only).

    python boot.py CONNECTION_FILE OUTPUTS_DIR OUTPUT_CHARS [MAX_PROCS [IDLE_CPU_LIMIT]]

Starts an IPython kernel and caps each cell's stdout/stderr where it is produced:
past the limit the head and tail are kept, the rest goes to a file in the workspace,
so a cell printing gigabytes never crosses the wire. A `Guard` watches the sandbox's
processes between cells (the process limit, CPU burnt while idle) and says what it saw
in a notice line on stderr, which the host moves into the result's message.
"""

import collections
import ctypes
import os
import signal
import sys
import threading
import time

MARKER = "\n[kernelchat: {cut:,} characters of {name} cut; full {name} in {path}]\n"


class StreamCap:
    """An OutStream hook: per cell, pass `head` chars, spill the rest, keep a `tail`."""

    def __init__(self, stream, outputs_dir, limit):
        self.stream, self.outputs_dir = stream, outputs_dir
        self.head, self.tail_limit = limit // 2, limit - limit // 2
        self.cell = None
        self.bypass = False
        self._reset(None)
        # Hooks are thread-local and flushes run on the IO thread: register on both.
        stream.register_hook(self)
        stream.pub_thread.schedule(lambda: stream.register_hook(self))

    def _reset(self, cell):
        self.cell, self.sent, self.cut, self.spill, self.path = cell, 0, 0, None, None
        self.tail, self.tail_len = collections.deque(), 0
        self.head_text = []  # what was sent, so the file holds the whole output

    def __call__(self, msg):
        if self.bypass:
            return msg
        cell = msg["parent_header"].get("msg_id")
        if cell != self.cell:
            self._reset(cell)
        text = msg["content"]["text"]
        room = self.head - self.sent
        if len(text) <= room and not self.cut:
            self.sent += len(text)
            self.head_text.append(text)
            return msg
        keep, rest = text[:max(room, 0)], text[max(room, 0):]
        self.sent += len(keep)
        self.head_text.append(keep)
        self._overflow(rest)
        if keep:
            msg["content"]["text"] = keep
            return msg
        return None

    def _overflow(self, text):
        if self.spill is None:
            os.makedirs(self.outputs_dir, exist_ok=True)
            n = len([f for f in os.listdir(self.outputs_dir) if f.startswith("output-")])
            self.path = os.path.join(self.outputs_dir, f"output-{n + 1:04d}-{self.stream.name}.txt")
            self.spill = open(self.path, "w", encoding="utf-8", errors="replace")
            self.spill.write("".join(self.head_text))
        self.spill.write(text)
        self.cut += len(text)
        self.tail.append(text)
        self.tail_len += len(text)
        while self.tail and self.tail_len - len(self.tail[0]) >= self.tail_limit:
            self.tail_len -= len(self.tail.popleft())

    def finish(self):
        """After the cell: send the marker and the tail, outside the cap."""
        self.stream.flush()  # the hook runs at flush time: only now is `cut` known
        if not self.cut:
            return
        tail = "".join(self.tail)[-self.tail_limit:]
        self.spill.close()
        cut = self.cut - len(tail)
        self.bypass = True
        try:
            self.stream.write(MARKER.format(cut=cut, name=self.stream.name, path=self.path) + tail)
            self.stream.flush()
        finally:
            self.bypass = False
            self._reset(None)


NOTICE = "[kernelchat notice: {}]\n"  # the host's sandbox.guard.NOTICE reads these
HEADROOM = 8  # tasks the kernel keeps free for itself (it starts threads to run a cell)
MIN_IDLE_S = 0.5  # shorter gaps between cells are not judged for idle CPU
IDLE_REPORT_SHARE = 0.5  # of one core, while idle: worth a notice
WATCH_S = 1.0  # idle_cpu_limit: how often the watchdog samples


def _stat(path):
    """Fields of a /proc stat file after the command name (index 0 is field 3, the state)."""
    with open(path, "rb") as f:
        raw = f.read()
    return raw[raw.rfind(b")") + 2:].split()


class Guard:
    """Keeps the kernel usable and honest between cells.

    - After a cell: if the sandbox's tasks come within HEADROOM of max_procs (a fork bomb's
      children still alive), kill every process of the sandbox except the kernel, so the next
      cell can start its threads, and say so.
    - Before a cell: if something left by an earlier cell used CPU while the kernel was idle,
      say so; with idle_cpu_limit, a watchdog stops such threads and processes while idle."""

    def __init__(self, notify, max_procs, idle_cpu_limit):
        self.notify, self.max_procs, self.limit = notify, max_procs, idle_cpu_limit
        self.me, self.top = os.getpid(), os.getppid()  # top: bwrap's init (pid 1) or the reaper
        self.tick = os.sysconf("SC_CLK_TCK")
        self.idle_since, self.idle_snap = None, {}
        self.pending, self.gen = [], 0
        self.own_threads = None  # the kernel's own threads, taken before the first cell
        self.lock = threading.Lock()
        if idle_cpu_limit:
            threading.Thread(target=self._watch, name="kernelchat-idle-watch", daemon=True).start()

    # -- the sandbox's processes

    def others(self):
        """pids of the sandbox's other processes (not the kernel, not its launcher)."""
        if self.top == 1:  # our own PID namespace: /proc lists only the sandbox
            pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
        else:  # isolation="none": everything of ours is below the reaper
            pids = self._below(self.top)
        return [p for p in pids if p not in (1, self.me, self.top)]

    @staticmethod
    def _below(top):
        out, todo = [], [top]
        while todo:
            pid = todo.pop()
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                        kids = [int(c) for c in f.read().split()]
                except OSError:
                    continue
                out += kids
                todo += kids
        return out

    def snapshot(self):
        """{pid: (start time, CPU ticks, tasks, state)} of the kernel and the others."""
        out = {}
        for pid in [self.me] + self.others():
            try:
                f = _stat(f"/proc/{pid}/stat")
            except (OSError, IndexError):
                continue
            out[pid] = (f[19], int(f[11]) + int(f[12]), int(f[17]), f[0])
        return out

    def _kill_others(self):
        killed = set()
        for _ in range(200):
            live = [p for p, v in self.snapshot().items() if p != self.me and v[3] not in (b"Z", b"X")]
            if not live:
                break
            for pid in live:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except OSError:
                    pass
            time.sleep(0.005)
            self._reap()
        self._reap()
        return len(killed)

    @staticmethod
    def _reap():
        """Our own killed children stay zombies (and count against the limit) until reaped."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return

    # -- cell hooks

    def before_cell(self, *_):
        with self.lock:
            self.gen += 1
            notes, self.pending = self.pending, []
            since, old, self.idle_since = self.idle_since, self.idle_snap, None
        if self.own_threads is None:
            self.own_threads = {t.native_id for t in threading.enumerate()}
        if since is not None and not notes and time.monotonic() - since >= MIN_IDLE_S:
            idle = time.monotonic() - since
            used = self._cpu_since(old, self.snapshot()) / self.tick
            if used > 0.2 and used / idle > IDLE_REPORT_SHARE:
                notes.append(f"while the kernel was idle for {idle:.1f} s, a thread or process left running by "
                             f"an earlier cell used {used:.1f} s of CPU ({used / idle:.0%} of a core); it is "
                             "still running (stop it, or set idle_cpu_limit to have it stopped)")
        for note in notes:
            self.notify(note)

    def after_cell(self, *_):
        snap = self.snapshot()
        if self.max_procs:
            tasks = sum(v[2] for v in snap.values()) + 2  # + bwrap's two processes, or the reaper
            if self.max_procs - tasks < HEADROOM and len(snap) > 1:
                n = self._kill_others()
                self.notify(f"the cell ran into the process limit (max_procs={self.max_procs}): its {n} "
                            "leftover processes were killed so that the kernel keeps working")
                snap = self.snapshot()
            if self.max_procs - sum(v[2] for v in snap.values()) - 2 < HEADROOM:  # threads of the kernel itself
                left = [t for t in threading.enumerate() if t.native_id not in (self.own_threads or ())]
                self.notify(f"the cell left {len(left)} threads running in the kernel, at the process limit "
                            f"(max_procs={self.max_procs}): new threads and processes fail until they end "
                            "(restart the kernel to stop them)")
        with self.lock:
            self.gen += 1
            self.idle_since, self.idle_snap = time.monotonic(), snap

    @staticmethod
    def _cpu_since(old, new):
        return sum(v[1] - (old[p][1] if p in old and old[p][0] == v[0] else 0) for p, v in new.items())

    # -- idle_cpu_limit

    def _threads(self):
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                f = _stat(f"/proc/self/task/{tid}/stat")
            except (OSError, IndexError):
                continue
            out[int(tid)] = int(f[11]) + int(f[12])
        return out

    def _watch(self):
        while True:
            try:
                self._watch_loop()
            except Exception:  # noqa: BLE001 - a failed sample must not end the watchdog
                time.sleep(WATCH_S)

    def _watch_loop(self):
        prev, strikes, gen = None, 0, None
        while True:
            time.sleep(WATCH_S)
            with self.lock:
                idle, now_gen = self.idle_since is not None and self.own_threads is not None, self.gen
            if not idle or now_gen != gen:
                prev, strikes, gen = None, 0, now_gen
                if not idle:
                    continue
            threads, procs = self._threads(), {p: v for p, v in self.snapshot().items() if p != self.me}
            if prev is not None:
                t_used = {t: c - prev[0].get(t, c) for t, c in threads.items()}
                p_used = {p: v[1] - (prev[1][p][1] if p in prev[1] and prev[1][p][0] == v[0] else 0)
                          for p, v in procs.items()}
                share = (sum(t_used.values()) + sum(p_used.values())) / self.tick / WATCH_S
                strikes = strikes + 1 if share > self.limit else 0
                if strikes >= 2:
                    self._stop(t_used, p_used, share, gen)
                    strikes = 0
            prev = (threads, procs)

    def _stop(self, t_used, p_used, share, gen):
        busy = self.tick * WATCH_S * min(self.limit, 0.1)
        by_tid = {t.native_id: t for t in threading.enumerate()}
        stopped, native = [], 0
        for tid, used in t_used.items():
            if used < busy or tid in self.own_threads:
                continue
            t = by_tid.get(tid)
            if t is None:
                native += 1
                continue
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(SystemExit))
            stopped.append(f"thread {t.name!r}".replace("]", ")"))
        for pid, used in p_used.items():
            if used >= busy:
                try:
                    os.kill(pid, signal.SIGKILL)
                    stopped.append(f"process {pid}")
                except OSError:
                    pass
        what = ", ".join(stopped) or "nothing it could stop"
        note = (f"while the kernel was idle, work left running by an earlier cell used {share:.0%} of a core, "
                f"over idle_cpu_limit={self.limit:g}: stopped {what}")
        if native:
            note += f" ({native} busy thread(s) outside Python could not be stopped)"
        with self.lock:
            if self.gen == gen and not self.pending:  # one notice per idle spell
                self.pending.append(note)


def quiet(hook):
    """The Guard's checks must never disturb a cell: a failure of theirs is dropped."""
    def run(*args):
        try:
            hook(*args)
        except Exception:  # noqa: BLE001
            pass
    return run


def main():
    connection_file, outputs_dir, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    max_procs = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    idle_cpu_limit = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    sys.argv = [sys.argv[0], "-f", connection_file]
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # the runtime dir holds no user modules
    os.makedirs(os.environ.get("HOME", "/tmp/home"), exist_ok=True)
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize()
    caps = {s.name: StreamCap(s, outputs_dir, limit) for s in (sys.stdout, sys.stderr) if hasattr(s, "register_hook")}

    def notify(text):
        text = text.replace("\n", " ").replace("]", ")")  # one line, as the host reads it
        cap = caps.get("stderr")
        if cap is not None:
            cap.bypass = True  # a notice is never cut
        try:
            sys.stderr.write(NOTICE.format(text))
            sys.stderr.flush()
        finally:
            if cap is not None:
                cap.bypass = False

    guard = Guard(notify, max_procs, idle_cpu_limit)

    def post_run_cell(*_):
        for cap in caps.values():
            cap.finish()
        quiet(guard.after_cell)()

    app.shell.events.register("pre_run_cell", quiet(guard.before_cell))
    app.shell.events.register("post_run_cell", post_run_cell)
    app.start()


if __name__ == "__main__":
    main()
