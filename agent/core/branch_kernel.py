"""`BranchKernel`: the sandboxed kernel that follows the conversation's active branch.

Conversations are trees, and the kernel's state belongs to one branch: after an edit, a retry, an
undo or a switch, the cells of the branch now active are replayed (or, by `sync`, the state is kept
or reset). It remembers which cells the live kernel has run, so a pure continuation replays nothing
and a branch change replays only what is needed. Cells that came from a file run only with consent
(agent.core.consent).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Callable, Literal

from sandbox import Kernel, KernelOptions

from agent.core.consent import FileCells, allowed, refusal_notice
from agent.core.tree import Node, Tree

Sync = Literal["replay", "keep", "reset"]
Replay = Literal["completed", "all"]
Approve = Callable[[str], "bool | str | None"]


class BranchKernel:
    """The kernel of a conversation, started on first use, kept on the active branch.

    `kernel`: a started Kernel to use, or the KernelOptions to start one with (None: the defaults;
    `options` are KernelOptions fields, as a shorthand). `sync`: on a branch change, "replay" the
    branch's cells into a fresh kernel, "keep" the state as it is, or "reset" to a clean one.
    `replay`: which cells a replay re-runs: "completed" (ok or an ordinary error; not interrupted,
    timed out or killed ones) or "all". `approve`: asked once before cells from a file run.
    `busy`: a context in which the time of a replay counts (the budget's). `notices`: where what
    the user should be told is put (the session shows them before the next turn)."""

    def __init__(self, kernel: Kernel | KernelOptions | None = None, *, sync: Sync = "replay",
                 replay: Replay = "completed", approve: Approve | None = None, progress: bool = True,
                 busy: Callable[[], AbstractContextManager] = nullcontext, notices: list[str] | None = None,
                 **options: Any):
        if sync not in ("replay", "keep", "reset"):
            raise ValueError(f"sync must be 'replay', 'keep' or 'reset', got {sync!r}")
        if replay not in ("completed", "all"):
            raise ValueError(f"replay must be 'completed' or 'all', got {replay!r}")
        if isinstance(kernel, Kernel):
            if options:
                raise TypeError(f"kernel options ({', '.join(sorted(options))}) were given beside a started "
                                "Kernel, which has its own")
            self.options, self.started = kernel.options, kernel
        else:
            base = kernel if kernel is not None else KernelOptions()
            self.started = None
            self.options = base.updated(**options)
        self.sync, self.replay, self.approve, self.progress = sync, replay, approve, progress
        self.busy = busy
        self.notices = notices if notices is not None else []
        self.cells: list[str] = []  # the cell nodes the live kernel has executed, in order
        # Cells from a loaded file run only with consent: those not yet allowed, and those refused
        # (not asked about again until an explicit restart).
        self.unconsented: set[str] = set()
        self.refused: set[str] = set()
        self.source: Path | None = None  # the file they came from

    @property
    def timeout(self) -> float:
        """A cell's time limit, in seconds."""
        return self.started.timeout if self.started is not None else self.options.timeout

    @property
    def workspace(self) -> Path | None:
        """The started kernel's workspace, else the one it will get (None: a temporary one)."""
        if self.started is not None:
            return self.started.workspace
        return Path(self.options.workspace) if self.options.workspace else None

    def kernel(self, tree: Tree, follow_branch: bool = True) -> Kernel:
        """The kernel, started on first use with the branch's cells replayed (`follow_branch=False`:
        as it is, whatever branch its state came from)."""
        if self.started is None:
            self.started = Kernel(self.options)
            self.cells = []
        if not self.started.alive:
            self.started.start()
        if follow_branch:
            self.follow(tree)
        return self.started

    def follow(self, tree: Tree) -> None:
        """Bring a started kernel to the tree's active branch (by `sync`); an unstarted one waits."""
        if self.started is None:
            return  # started lazily, replaying then
        wanted = [n.id for n in tree.cells()]
        have = self.cells
        if have == wanted[:len(have)] and self.sync != "reset":
            todo = wanted[len(have):]  # a pure continuation: nothing to undo
            if todo and self.sync == "replay":
                self._replay(tree, todo)
            return
        if self.sync == "keep":
            self.notices.append("kernel state kept (sync='keep'): variables from the other branch may still be defined")
            self.cells = wanted
            return
        self._restart(len(wanted))
        if self.sync == "reset":
            self.notices.append("kernel reset: it starts clean, without this branch's earlier state")
            self.cells = wanted
            return
        self._replay(tree, wanted)

    def restart(self, tree: Tree, mode: Literal["replay", "reset"] = "replay") -> None:
        """Restart the kernel; `replay` re-runs the branch's cells, `reset` starts clean."""
        if self.started is None:
            return
        self._restart(len(tree.cells()))
        if mode == "replay":
            self.refused.clear()  # asked for: the file's cells not allowed so far are asked about again
            self._replay(tree, [n.id for n in tree.cells()])
        else:
            self.cells = [n.id for n in tree.cells()]

    def distrust(self, tree: Tree, source: Path) -> None:
        """The tree's cells came from `source`, someone's file: none runs before `approve` allows it."""
        self.unconsented = {i for i, n in tree.nodes.items() if n.cell is not None}
        self.source = source

    def close(self) -> None:
        if self.started is not None:
            self.started.close()

    def _restart(self, behind: int) -> None:
        """Restart, forgetting the cells first: a restart cut short by Ctrl-C leaves a kernel that
        holds none of them, and the next cell that follows the branch replays them all."""
        self.cells = []
        try:
            self.started.restart()
        except KeyboardInterrupt:
            self.notices.append(f"replay stopped: the kernel is behind this branch (0 of {behind} cell(s) replayed); "
                                "the rest is replayed before the next cell")
            raise

    def _replay(self, tree: Tree, node_ids: list[str]) -> None:
        from rich.progress import Progress

        cells = [tree.nodes[i] for i in node_ids]
        # A cell that did not finish (interrupted, timed out) is skipped: its state is at best partial,
        # and a `time.sleep(60)` stopped by Ctrl-C must not cost 60 s on every switch. It still counts
        # as accounted for, so the kernel is taken to be at the branch.
        run = [n for n in cells if self.replay == "all" or n.cell.completed]
        self._ask_consent([n for n in run if n.id in self.unconsented and n.id not in self.refused])
        refused = [n for n in run if n.id in self.unconsented]
        run = [n for n in run if n.id not in self.unconsented]
        skipped = {n.id for n in cells} - {n.id for n in run}
        failed = done = 0
        with self.busy(), Progress(transient=True, disable=not self.progress or len(run) < 3) as bar:
            task = bar.add_task("replaying the branch's cells", total=len(run))
            try:
                for node in cells:
                    if node.id not in skipped:
                        res = self.started.execute(node.cell.code, timeout=self.timeout)
                        failed += res.status not in ("ok", "error")
                        done += 1
                        bar.advance(task)
                    self.cells.append(node.id)
            except KeyboardInterrupt:
                # The kernel holds a prefix of the branch's cells (the cell cut short is not counted),
                # so the next cell that follows the branch replays the rest, from that cell, first.
                self.started.interrupt()
                self.notices.append(f"replay stopped: the kernel is behind this branch ({done} of {len(run)} "
                                    "cell(s) replayed); the rest is replayed before the next cell")
                raise
        if not cells:
            self.notices.append("kernel restarted: this branch has run no code yet")
            return
        if refused:
            self.notices.append(refusal_notice(len(refused), self.approve is not None))
        unfinished = len(skipped) - len(refused)
        self.notices.append(f"kernel brought to this branch: {len(run)} cell(s) replayed"
                            + (f", {unfinished} that did not finish skipped" if unfinished else "")
                            + (f", {failed} did not finish" if failed else ""))

    def _ask_consent(self, nodes: list[Node]) -> None:
        """Ask once, through `approve`, whether these cells from the file may run; an answer holds
        for the rest of the session (a refusal until an explicit restart)."""
        if not nodes:
            return
        ids = {n.id for n in nodes}
        cells = FileCells([n.cell.code for n in nodes], self.source or "the conversation file", self.workspace)
        if allowed(self.approve, cells):
            self.unconsented -= ids
        else:
            self.refused |= ids


__all__ = ["BranchKernel", "Sync", "Replay", "Approve"]
