"""Replay re-runs only the cells that completed: an interrupted or timed-out cell is recorded as such
in the tree and skipped when the kernel is brought to a branch (real kernels, a scripted model)."""

import _thread
import signal
import threading
import time

import pytest

from agent import Chat
from agent.core.events import ToolCallEvent
from agent.models.scripted import ScriptedBackend, python_call

# A sleep that first leaves a file saying it has begun (`interrupt-started`, `timeout-started`).
SLEEP = "import time\nopen('{0}-started', 'w').close()\ntime.sleep(60)  # {0}"


def when_it_appears(path, action, within=120.0):
    """Run `action` in a thread as soon as `path` exists: a test waits for the event it needs
    (a cell has begun), never for a fixed time that a busy machine may not keep to."""
    def watch():
        deadline = time.monotonic() + within
        while not path.exists():
            if time.monotonic() > deadline:
                return  # never began: the test's own assertions say what went wrong
            time.sleep(0.02)
        action()
    threading.Thread(target=watch, daemon=True).start()


def interrupt_soon(chat, workspace):
    """An on_event hook that interrupts the cell marked `# interrupt` once it is running."""
    def hook(ev):
        if isinstance(ev, ToolCallEvent) and ev.code and "# interrupt" in ev.code:
            when_it_appears(workspace / "interrupt-started", lambda: chat.started_kernel.interrupt())
    return hook


def turn_one():
    return [python_call("x = 41"), python_call(SLEEP.format("interrupt")), python_call(SLEEP.format("timeout")),
            "slept"]


def test_cells_that_did_not_finish_are_recorded_and_not_replayed(tmp_path):
    backend = ScriptedBackend(turn_one() + [python_call("y = x"), "y set", python_call("print(x + 1)"), "42"])
    with Chat(backend=backend, workspace=tmp_path, timeout=3) as chat:
        chat("define x, then sleep", on_event=interrupt_soon(chat, tmp_path))
        assert [n.cell.status for n in chat.tree.cells()] == ["ok", "interrupted", "timeout"]
        assert [n.cell.completed for n in chat.tree.cells()] == [True, False, False]
        chat("now y")
        t0 = time.monotonic()
        assert chat.edit(1, "print x + 1") == "42"  # the edit restarts the kernel and replays turn one
        assert time.monotonic() - t0 < 20  # neither sleep ran again
        assert "print(x + 1)" in chat.tree.cells()[-1].cell.code and chat.tree.cells()[-1].cell.output == "42"


def test_switch_skips_unfinished_cells_and_replay_all_runs_them(tmp_path):
    backend = ScriptedBackend(turn_one() + [python_call("junk = 1"), "other"])
    with Chat(backend=backend, workspace=tmp_path, timeout=3) as chat:
        chat("define x, then sleep", on_event=interrupt_soon(chat, tmp_path))
        first = next(b.id for b in chat.branches() if b.active)
        chat.edit(0, "something else")
        t0 = time.monotonic()
        chat.switch(first)
        assert time.monotonic() - t0 < 20
        assert any("2 that did not finish skipped" in n for n in chat.notices)
        res = chat.kernel().execute("print(x, 'junk' in globals())")
        assert res.stdout.strip() == "41 False"
        chat.replay = "all"
        chat.restart_kernel()  # the timed-out sleep runs again and times out (3 s): all means all
        assert chat.kernel().execute("print(x)").stdout.strip() == "41"


def test_replay_option_is_checked(tmp_path):
    with pytest.raises(ValueError, match="replay must be 'completed' or 'all'"):
        Chat(backend=ScriptedBackend([]), workspace=tmp_path, replay="some")


# The slow cell of the replay below: it says it has begun, then runs until `slow-may-end` exists.
SLOW = ("import os, time\nopen('slow-started', 'w').close()\ndeadline = time.monotonic() + 120\n"
        "while not os.path.exists('slow-may-end') and time.monotonic() < deadline:\n    time.sleep(0.02)\ny = 2")


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt, as in a terminal: a process started in the background
    (`make test &`) inherits SIGINT ignored, Python then installs no handler, and
    `_thread.interrupt_main()` does nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_long_replay_can_be_interrupted_and_the_kernel_catches_up_later(tmp_path, ctrl_c_raises):
    backend = ScriptedBackend([python_call("x = 1"), python_call(SLOW), "done", python_call("z = 3"), "other"])
    with Chat(backend=backend, workspace=tmp_path) as chat:
        (tmp_path / "slow-may-end").touch()  # the first time, the slow cell runs straight through
        chat("slow")
        first = next(b.id for b in chat.branches() if b.active)
        chat.edit(0, "else")
        chat.notices.clear()
        (tmp_path / "slow-may-end").unlink()
        (tmp_path / "slow-started").unlink()
        sent = []
        # Ctrl-C once the replay is inside the slow cell (x = 1 replayed before it)
        when_it_appears(tmp_path / "slow-started", lambda: (sent.append(time.monotonic()), _thread.interrupt_main()))
        with pytest.raises(KeyboardInterrupt):
            chat.switch(first)  # the slow cell cannot end by itself: only the Ctrl-C ends the switch
        assert sent and time.monotonic() - sent[0] < 60, "the Ctrl-C waited for the cell"
        behind = "the kernel is behind this branch (1 of 2 cell(s) replayed)"
        assert any(behind in n for n in chat.notices), chat.notices
        assert next(b for b in chat.branches() if b.active).id == first
        # The next use that follows the branch replays the rest (the slow cell, in full) first.
        (tmp_path / "slow-may-end").touch()
        res = chat.kernel().execute("print(x, y, 'z' in globals())")
        assert res.stdout.strip() == "1 2 False"
