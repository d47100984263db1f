"""`Session`: a small coordinator of a backend, its budget, the tools, a `Conversation` (the tree
and its file) and a `BranchKernel` (the sandboxed kernel that follows the active branch). It knows
no model by name: `agent.chat.Chat` resolves model strings and picks the turn strategy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from sandbox import Kernel, KernelOptions
from tools.python_tool import PythonTool
from tools.schema import Runnable, Tool, as_tool

from agent.core import store
from agent.core.backend import Backend
from agent.core.branch_kernel import Approve, BranchKernel, Replay, Sync
from agent.core.budget import Budget, BudgetExceeded, BudgetTracker, Price
from agent.core.conversation import Conversation, ExportFormat, export
from agent.core.events import AnswerEvent, Event, NoticeEvent
from agent.core.loop import COMPLETION_ALLOWANCE, PLAIN, TurnStrategy, user_message
from agent.core.messages import Message, Usage
from agent.core.tree import Branch, Node, OutcomeStatus, Tree, TurnOutcome

PYTHON = PythonTool()


class Session:
    """A conversation with a backend that runs Python in a sandboxed kernel (see `agent.Chat`)."""

    def __init__(self, backend: Backend, *, system: str | None = None, tools: list[Callable | Tool | Runnable] = (),
                 budget: Budget | None = None, max_steps: int = 10, use_python: bool = True,
                 kernel: Kernel | KernelOptions | BranchKernel | None = None, approve: Approve | None = None,
                 temperature: float | None = None, path: str | Path | None = None, progress: bool = True,
                 strategy: TurnStrategy = PLAIN, **kernel_options: Any):
        """`strategy`: how a turn runs (the plain tool loop by default). `approve`: asked before a
        cell runs (None: cells run; cells from a loaded file are refused without it). `kernel`: a
        started Kernel, the KernelOptions to start one with on first use, or a whole BranchKernel;
        `kernel_options` are BranchKernel's (`sync`, `replay`) and KernelOptions fields (`workspace`,
        `timeout`, `isolation`, ...), as a shorthand."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.tracker = BudgetTracker()
        self.strategy = strategy
        self.notices: list[str] = []  # shown before the next turn
        self.tools: dict[str, Runnable] = {t.name: t for t in map(as_tool, tools)}
        self.use_python, self.max_steps, self.temperature, self.progress = use_python, max_steps, temperature, progress
        # Tool calls written under a grammar of the tools' schemas, where the backend can (llama.cpp):
        # True or False asks; None leaves the backend's default.
        self.constrain_calls: bool | None = None
        self.history = Conversation(system, path)  # no file before the first message
        self.use_backend(backend)
        self.tracker.budget = budget or Budget()  # max_usd for a model without a price: ValueError
        if isinstance(kernel, BranchKernel):
            if kernel_options:
                raise TypeError(f"{', '.join(sorted(kernel_options))}: given beside a BranchKernel, which has its own")
            self.branch_kernel = kernel
            kernel.notices = self.notices
        else:
            self.branch_kernel = BranchKernel(kernel, approve=approve, progress=progress, busy=self.tracker.busy,
                                              notices=self.notices, **kernel_options)
        self.turn_ended = False  # the running turn's outcome is stored

    def use_backend(self, backend: Backend) -> None:
        """Talk to another model from the next request on; the system prompt stays. A money budget
        needs the model's price: a model without one is refused (ValueError) and nothing changes."""
        self.tracker.set_model(backend.model, backend.price, backend.price_help)
        self.backend, self.model = backend, backend.model
        self.max_tokens_per_step = COMPLETION_ALLOWANCE

    # -- the parts, as the loop and front ends see them ------------------------------------------

    @property
    def tree(self) -> Tree:
        return self.history.tree

    @property
    def system(self) -> str:
        """The system prompt: the root of the tree (setting it changes every branch's next request)."""
        return self.history.system

    @system.setter
    def system(self, text: str) -> None:
        self.history.set_system(text)

    @property
    def id(self) -> str:
        return self.history.id

    @id.setter
    def id(self, conv_id: str) -> None:
        self.history.id = conv_id

    @property
    def path(self) -> Path | None:
        """The conversation's file (None: not saved)."""
        return self.history.path

    @path.setter
    def path(self, path: str | Path | None) -> None:
        self.history.path = Path(path) if path else None

    @property
    def approve(self) -> Approve | None:
        """Asked before a cell runs, and once before cells from a loaded file run."""
        return self.branch_kernel.approve

    @approve.setter
    def approve(self, approve: Approve | None) -> None:
        self.branch_kernel.approve = approve

    @property
    def timeout(self) -> float:
        """A cell's time limit, in seconds."""
        return self.branch_kernel.timeout

    @property
    def sync(self) -> Sync:
        """On a branch change: replay the branch's cells, keep the state, or reset (BranchKernel)."""
        return self.branch_kernel.sync

    @sync.setter
    def sync(self, sync: Sync) -> None:
        self.branch_kernel.sync = sync

    @property
    def replay(self) -> Replay:
        """Which cells a replay re-runs: "completed" or "all" (BranchKernel)."""
        return self.branch_kernel.replay

    @replay.setter
    def replay(self, replay: Replay) -> None:
        self.branch_kernel.replay = replay

    # -- the turn ------------------------------------------------------------------------------

    def run(self, prompt: str) -> Iterator[Event]:
        """Add a prompt and run the loop, yielding events; the last is an AnswerEvent."""
        self.append(user_message(prompt))
        yield from self._turn()

    def _turn(self) -> Iterator[Event]:
        self.tree.repair_interrupted()  # a call whose cell failed or was cut off: servers want its result
        while self.notices:
            yield NoticeEvent(text=self.notices.pop(0))
        # However a turn ends, the tree says so (the strategies mark answers, max_steps and stops;
        # a caller that lets go after the answer has not interrupted anything).
        self.turn_ended = False
        try:
            yield from self.strategy.run_turn(self)
        except BudgetExceeded as e:
            self.end_turn("budget", f"budget exceeded: {e}")
            raise
        except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C, or the caller stopped reading the events
            if not self.turn_ended:
                self.end_turn("interrupted", "interrupted before the turn ended")
            raise
        except Exception as e:
            if not self.turn_ended:
                self.end_turn("failed", f"failed: {type(e).__name__}: {e}"[:500])
            raise

    def end_turn(self, status: OutcomeStatus, note: str = "") -> TurnOutcome:
        """Store how the turn ended on the message it ended at (a tool call left without its result
        is answered first, so the outcome sits on the branch's real end) and save."""
        self.tree.repair_interrupted()
        outcome = TurnOutcome(status=status, note=note)
        self.tree.nodes[self.tree.leaf].outcome = outcome
        self.turn_ended = True
        self._save()
        return outcome

    @property
    def last_outcome(self) -> TurnOutcome | None:
        """How the active branch's last turn ended (None: no turn yet, or one still running)."""
        return self.tree.turn_outcome() if self.tree.leaf is not None else None

    def __call__(self, prompt: str, on_event: Callable[[Event], None] | None = None) -> str:
        """Run the loop; return the final answer."""
        return self._consume(self.run(prompt), on_event)

    async def acall(self, prompt: str, on_event: Callable[[Event], None] | None = None) -> str:
        """The async form, for batch use (`asyncio.gather` over several chats)."""
        # run_in_executor, not to_thread: to_thread copies context variables, and jupyter_client
        # would then find this (running) event loop in the worker thread and refuse to block on it.
        return await asyncio.get_running_loop().run_in_executor(None, self.__call__, prompt, on_event)

    @staticmethod
    def _consume(events: Iterator[Event], on_event: Callable[[Event], None] | None) -> str:
        answer = ""
        for ev in events:
            if on_event:
                on_event(ev)
            if isinstance(ev, AnswerEvent):
                answer = ev.text
        return answer

    # -- edit instead of continuing ----------------------------------------------------------

    def edit(self, i: int, text: str, on_event: Callable[[Event], None] | None = None) -> str:
        """Replace prompt `i` (0 = the first on this branch) on a new branch, and regenerate."""
        return self._consume(self.edit_events(i, text), on_event)

    def edit_events(self, i: int, text: str) -> Iterator[Event]:
        node = self.tree.user_node(i)
        msg = user_message(text)
        self._move_to(node.parent)
        self.append(msg)
        yield from self._turn()

    def retry(self, on_event: Callable[[Event], None] | None = None) -> str:
        """Regenerate the last answer as a sibling of the old one."""
        return self._consume(self.retry_events(), on_event)

    def retry_events(self) -> Iterator[Event]:
        node = self.tree.user_node(-1)
        self._move_to(node.id)
        yield from self._turn()

    def undo(self) -> None:
        """Drop the last exchange (it stays in the tree as a branch)."""
        node = self.tree.user_node(-1)
        self._move_to(node.parent)

    def switch(self, branch: str) -> None:
        """Make another branch (an id from `branches()`, or a unique prefix) the active one."""
        self.tree.switch(branch)
        self._follow()

    def branches(self, all: bool = False) -> list[Branch]:  # noqa: A002 - /branches --all
        """The user's branches, oldest first; replies set aside (tried, not taken) are folded under
        their turn (`all=True` lists them too)."""
        return self.tree.branches(all=all)

    def _move_to(self, node_id: str | None) -> None:
        self.history.move_to(node_id)
        self._follow()

    def _follow(self) -> None:
        try:
            self.branch_kernel.follow(self.tree)
        finally:  # a replay stopped with Ctrl-C: the branch is still the active one
            self._save()

    # -- the kernel follows the branch -------------------------------------------------------

    def kernel(self, follow_branch: bool = True) -> Kernel:
        """The sandbox kernel, started on first use with the active branch's cells replayed
        (`follow_branch=False`: as it is, whatever branch its state came from)."""
        return self.branch_kernel.kernel(self.tree, follow_branch)

    def record_cell(self, node_id: str) -> None:
        """The live kernel has run the cell of this node (the loop says so after each cell)."""
        self.branch_kernel.cells.append(node_id)

    def forget_kernel_cells(self) -> None:
        """The kernel restarted by itself: none of the cells it ran is in its state any more."""
        self.branch_kernel.cells = []

    @property
    def started_kernel(self) -> Kernel | None:
        """The kernel if it has been started, else None (looking must not start one)."""
        return self.branch_kernel.started

    @property
    def workspace(self) -> Path | None:
        """The kernel's workspace: the started kernel's, else the one it will get (None: a temporary one)."""
        return self.branch_kernel.workspace

    def restart_kernel(self, mode: Literal["replay", "reset"] = "replay") -> None:
        """Restart the kernel; `replay` re-runs the branch's cells, `reset` starts clean."""
        self.branch_kernel.restart(self.tree, mode)

    def close(self) -> None:
        self.branch_kernel.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- tools, messages, usage --------------------------------------------------------------

    def all_tools(self) -> dict[str, Runnable]:
        """The tools offered to the model by name: python (unless `use_python` is off) and yours."""
        builtin: dict[str, Runnable] = {PYTHON.name: PYTHON} if self.use_python else {}
        return builtin | {name: t for name, t in self.tools.items() if name not in builtin}

    def tool_schemas(self) -> list[dict]:
        return [t.schema for t in self.all_tools().values()]

    def messages(self) -> list[Message]:
        return self.tree.messages()

    @property
    def price(self) -> Price | None:
        """The model's price per 1M tokens (zero for local models); None when unknown."""
        return self.tracker.price

    @property
    def usage(self) -> Usage:
        return self.tracker.spent

    @property
    def answer(self) -> str | None:
        leaf = self.tree.nodes[self.tree.leaf]
        return leaf.message.content if leaf.message.role == "assistant" else None

    def append(self, message: Message, **meta: Any) -> Node:
        """Add a message after the active leaf (meta: the Node's usage, cell) and save."""
        node = self.history.add(message, **meta)
        self._save()
        return node

    # -- persistence -------------------------------------------------------------------------

    def conversation(self) -> store.ConversationFile:
        """The whole conversation as saved: tree, usage, settings."""
        settings = {"max_steps": self.max_steps, "sync": self.sync,
                    "usages": [u.model_dump() for u in self.tracker.usages]}
        return store.ConversationFile(id=self.id, model=self.model, system=self.system, tree=self.tree,
                                      usage=self.usage, settings=settings)

    def _save(self) -> None:
        self.history.write(self.conversation())

    def save(self, path: str | Path | None = None) -> Path:
        """Save now (and after every message from now on) to `path` (None: a readable name in the
        conversations folder, decided once)."""
        if path is not None:
            self.path = path
        path = self.history.name_file()
        self._save()
        return path

    @classmethod
    def load(cls, path: str | Path, *, trust_cells: bool = False, **options: Any) -> "Session":
        """Resume a saved conversation; its active branch is replayed into a fresh kernel on first use.
        The file's cells are someone's code: a replay runs them only once `approve` allows them (it is
        called once with a FileCells), or with `trust_cells=True`; without either they are left out.
        A file that is not a sound conversation raises store.ConversationError (a ValueError).
        `options` are the constructor's; `saved_options` are the defaults."""
        conv = store.load(Path(path))
        session = cls(**{**cls.saved_options(conv), **options})
        session.history = Conversation.from_file(conv, Path(path))
        if not trust_cells:
            session.branch_kernel.distrust(conv.tree, Path(path))
        session.tracker.usages = list(conv.settings.usages)
        return session

    @classmethod
    def saved_options(cls, conv: store.ConversationFile) -> dict[str, Any]:
        """What `load` takes from the file unless given: the system prompt, max_steps and sync."""
        return {"system": conv.system, "max_steps": conv.settings.max_steps, "sync": conv.settings.sync}

    def export(self, fmt: ExportFormat, path: str | Path) -> Path:
        """Write the active branch as Markdown (its images in `<stem>_files/` beside it), one HTML
        page or a Jupyter notebook (nbformat 4)."""
        return export(self.conversation(), fmt, path)


__all__ = ["Session", "Sync", "Approve"]
