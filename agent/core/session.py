"""`Session`: a conversation tree, a backend, tools and a sandboxed kernel that follows the active
branch. It knows no model by name: `agent.chat.Chat` resolves model strings and prices and picks
the turn strategy."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from sandbox import Kernel
from tools.python_tool import PythonTool
from tools.schema import Runnable, Tool, as_tool

from agent.core import store
from agent.core.backend import Backend
from agent.core.budget import Budget, BudgetExceeded, BudgetTracker, Price, PriceHelp
from agent.core.consent import FileCells, allowed, refusal_notice
from agent.core.events import AnswerEvent, Event, NoticeEvent
from agent.core.loop import COMPLETION_ALLOWANCE, PLAIN, TurnStrategy, user_message
from agent.core.messages import Message, ToolCall, Usage
from agent.core.notebook_import import run_notebook
from agent.core.prompts import DEFAULT_SYSTEM
from agent.core.tree import Branch, Node, OutcomeStatus, Tree, TurnOutcome

Sync = Literal["replay", "keep", "reset"]
Replay = Literal["completed", "all"]
Approve = Callable[[str], "bool | str | None"]
# Text to (text without the calls, calls), for replies written as text (a server without tool support).
ParseCalls = Callable[[str, list[str]], tuple[str, list[ToolCall]]]
PriceOf = Callable[[str], "Price | None"]
PYTHON = PythonTool()


class Session:
    """A conversation with a backend that runs Python in a sandboxed kernel (see `agent.Chat`)."""

    def __init__(self, backend: Backend, *, system: str | None = None, tools: list[Callable | Tool] = (),
                 budget: Budget | None = None, max_steps: int = 10, use_python: bool = True,
                 kernel: Kernel | None = None, workspace: str | Path | None = None, isolation: str | None = None,
                 network: bool = False, gpu: bool = False, timeout: float = 120.0, memory_mb: int | None = -1,
                 sync: Sync = "replay", replay: Replay = "completed", approve: Approve | None = None, temperature: float | None = None,
                 path: str | Path | None = None, progress: bool = True, strategy: TurnStrategy = PLAIN,
                 price_of: PriceOf | None = None, price_help: PriceHelp | None = None,
                 parse_calls: ParseCalls | None = None, notebook: str | Path | None = None, **kernel_options: Any):
        """`strategy`: how a turn runs (the plain tool loop by default). `price_of`: a model's price
        (None: unknown), for money budgets and `price`; `price_help`: where to give a missing one.
        `parse_calls`: makes a reply's python blocks calls, for models that write no tool calls.
        `replay`: which of the branch's cells a replay re-runs: "completed" (ok or an ordinary error;
        not interrupted, timed out or killed ones) or "all". `notebook`: an .ipynb whose code cells
        run first, as the conversation's first exchange (see agent.core.notebook_import)."""
        if sync not in ("replay", "keep", "reset"):
            raise ValueError(f"sync must be 'replay', 'keep' or 'reset', got {sync!r}")
        if replay not in ("completed", "all"):
            raise ValueError(f"replay must be 'completed' or 'all', got {replay!r}")
        self.replay = replay
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.tracker = BudgetTracker(price_help=price_help)
        self.price_of, self.parse_calls, self.strategy = price_of, parse_calls, strategy
        self.use_backend(backend)
        self.tracker.budget = budget or Budget()  # max_usd for a model without a price: ValueError
        self.system = system if system is not None else DEFAULT_SYSTEM
        self.tools: dict[str, Tool] = {t.name: t for t in map(as_tool, tools)}
        self.use_python = use_python
        self.max_steps, self.timeout, self.sync, self.approve = max_steps, timeout, sync, approve
        self.temperature, self.progress = temperature, progress
        # Anything else goes to the Kernel: limits, env, gateway_url/gateway_token for remote kernels.
        self._kernel_options = dict(workspace=workspace, isolation=isolation, network=network, gpu=gpu,
                                    timeout=timeout, memory_mb=memory_mb, **kernel_options)
        self._kernel: Kernel | None = kernel
        self._kernel_cells: list[str] = []  # the cell nodes the live kernel has executed, in order
        # Cells from a loaded file run only with consent (agent.core.consent): those not yet allowed,
        # and those refused (not asked about again until an explicit restart_kernel).
        self.unconsented: set[str] = set()
        self.refused: set[str] = set()
        self.loaded_from: Path | None = None
        self.id = uuid.uuid4().hex[:12]
        self.tree = Tree()
        self.tree.add(Message(role="system", content=self.system))
        self.path = Path(path) if path else None
        self.notices: list[str] = []  # written from the first message on: no file for a run without a prompt
        self.turn_ended = False  # the running turn's outcome is stored
        if notebook is not None:
            try:
                run_notebook(self, notebook)
            except BaseException:  # no Session to close for the caller: its kernel is closed here
                self.close()
                raise

    def use_backend(self, backend: Backend) -> None:
        """Talk to another model from the next request on; the system prompt stays. A money budget
        needs the model's price: a model without one is refused (ValueError) and nothing changes."""
        self.tracker.set_model(backend.model, self.price_of(backend.model) if self.price_of else None)
        self.backend, self.model = backend, backend.model
        self.max_tokens_per_step = COMPLETION_ALLOWANCE

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
        try:
            self._sync_kernel()
        finally:  # a replay stopped with Ctrl-C: the branch is still the active one
            self._save()

    def branches(self, all: bool = False) -> list[Branch]:  # noqa: A002 - /branches --all
        """The user's branches, oldest first; a small model's attempts that were not taken are
        folded under their turn (`all=True` lists them too)."""
        return self.tree.branches(all=all)

    def _move_to(self, node_id: str | None) -> None:
        if node_id is None:
            raise ValueError("cannot move above the system prompt")
        self.tree.switch(node_id)
        try:
            self._sync_kernel()
        finally:
            self._save()

    # -- the kernel follows the branch -------------------------------------------------------

    def kernel(self, follow_branch: bool = True) -> Kernel:
        """The sandbox kernel, started on first use with the active branch's cells replayed
        (`follow_branch=False`: as it is, whatever branch its state came from)."""
        if self._kernel is None:
            self._kernel = Kernel(**self._kernel_options)
            self._kernel_cells = []
        if not self._kernel.alive:
            self._kernel.start()
        if follow_branch:
            self._sync_kernel()
        return self._kernel

    def record_cell(self, node_id: str) -> None:
        """The live kernel has run the cell of this node (the loop says so after each cell)."""
        self._kernel_cells.append(node_id)

    def forget_kernel_cells(self) -> None:
        """The kernel restarted by itself: none of the cells it ran is in its state any more."""
        self._kernel_cells = []

    @property
    def started_kernel(self) -> Kernel | None:
        """The kernel if it has been started, else None (looking must not start one)."""
        return self._kernel

    @property
    def workspace(self) -> Path | None:
        """The kernel's workspace: the started kernel's, else the one it will get (None: a temporary one)."""
        if self._kernel is not None:
            return self._kernel.workspace
        ws = self._kernel_options.get("workspace")
        return Path(ws) if ws else None

    def _sync_kernel(self) -> None:
        if self._kernel is None:
            return  # started lazily, replaying then
        wanted = [n.id for n in self.tree.cells()]
        have = self._kernel_cells
        if have == wanted[:len(have)] and self.sync != "reset":
            todo = wanted[len(have):]  # a pure continuation: nothing to undo
            if todo and self.sync == "replay":
                self._replay(todo)
            return
        if self.sync == "keep":
            self.notices.append("kernel state kept (sync='keep'): variables from the other branch may still be defined")
            self._kernel_cells = wanted
            return
        self._restart_kernel(len(wanted))
        if self.sync == "reset":
            self.notices.append("kernel reset: it starts clean, without this branch's earlier state")
            self._kernel_cells = wanted
            return
        self._replay(wanted)

    def _restart_kernel(self, behind: int) -> None:
        """Restart, forgetting the cells first: a restart cut short by Ctrl-C leaves a kernel that
        holds none of them, and the next cell that follows the branch replays them all."""
        self._kernel_cells = []
        try:
            self._kernel.restart()
        except KeyboardInterrupt:
            self.notices.append(f"replay stopped: the kernel is behind this branch (0 of {behind} cell(s) replayed); "
                                "the rest is replayed before the next cell")
            raise

    def _replay(self, node_ids: list[str]) -> None:
        from rich.progress import Progress

        cells = [self.tree.nodes[i] for i in node_ids]
        # A cell that did not finish (interrupted, timed out) is skipped: its state is at best partial,
        # and a `time.sleep(60)` stopped by Ctrl-C must not cost 60 s on every switch. It still counts
        # as accounted for, so the kernel is taken to be at the branch.
        run = [n for n in cells if self.replay == "all" or n.cell.completed]
        self._ask_consent([n for n in run if n.id in self.unconsented and n.id not in self.refused])
        refused = [n for n in run if n.id in self.unconsented]
        run = [n for n in run if n.id not in self.unconsented]
        skipped = {n.id for n in cells} - {n.id for n in run}
        failed = done = 0
        with self.tracker.busy(), Progress(transient=True, disable=not self.progress or len(run) < 3) as bar:
            task = bar.add_task("replaying the branch's cells", total=len(run))
            try:
                for node in cells:
                    if node.id not in skipped:
                        res = self._kernel.execute(node.cell.code, timeout=self.timeout)
                        failed += res.status not in ("ok", "error")
                        done += 1
                        bar.advance(task)
                    self._kernel_cells.append(node.id)
            except KeyboardInterrupt:
                # The kernel holds a prefix of the branch's cells (the cell cut short is not counted),
                # so the next cell that follows the branch replays the rest, from that cell, first.
                self._kernel.interrupt()
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
        """Ask once, through `approve`, whether these cells from the loaded file may run; an answer
        holds for the rest of the session (a refusal until an explicit restart_kernel)."""
        if not nodes:
            return
        ids = {n.id for n in nodes}
        cells = FileCells([n.cell.code for n in nodes], self.loaded_from or "the conversation file", self.workspace)
        if allowed(self.approve, cells):
            self.unconsented -= ids
        else:
            self.refused |= ids

    def restart_kernel(self, mode: Literal["replay", "reset"] = "replay") -> None:
        """Restart the kernel; `replay` re-runs the branch's cells, `reset` starts clean."""
        if self._kernel is None:
            return
        self._restart_kernel(len(self.tree.cells()))
        if mode == "replay":
            self.refused.clear()  # asked for: the file's cells not allowed so far are asked about again
            self._replay([n.id for n in self.tree.cells()])
        else:
            self._kernel_cells = [n.id for n in self.tree.cells()]

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.close()

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
        node = self.tree.add(message, **meta)
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
        if self.path is not None:
            store.save(self.path, self.conversation())

    def save(self, path: str | Path | None = None) -> Path:
        """Save now (and after every message from now on) to `path`."""
        if path is not None:
            self.path = Path(path)
        if self.path is None:  # a readable name, decided once: the file is never renamed after
            prompts = self.tree.user_nodes()
            created = self.tree.nodes[self.tree.root].created if self.tree.root else None
            self.path = store.conversations_dir() / store.file_name(
                self.id, created, prompts[0].message.content if prompts else None)
        self._save()
        return self.path

    @classmethod
    def load(cls, path: str | Path, *, trust_cells: bool = False, **options: Any) -> "Session":
        """Resume a saved conversation; its active branch is replayed into a fresh kernel on first use.
        The file's cells are someone's code: a replay runs them only once `approve` allows them (it is
        called once with a FileCells), or with `trust_cells=True`; without either they are left out.
        A file that is not a sound conversation raises store.ConversationError (a ValueError).
        `options` are the constructor's; `saved_options` are the defaults."""
        conv = store.load(Path(path))
        session = cls(**{**cls.saved_options(conv), **options})
        session.id, session.tree, session.path = conv.id, conv.tree, Path(path)
        session.loaded_from = Path(path)
        if not trust_cells:
            session.unconsented = {i for i, n in conv.tree.nodes.items() if n.cell is not None}
        session.tracker.usages = list(conv.settings.usages)
        return session

    @classmethod
    def saved_options(cls, conv: store.ConversationFile) -> dict[str, Any]:
        """What `load` takes from the file unless given: the system prompt, max_steps and sync."""
        return {"system": conv.system, "max_steps": conv.settings.max_steps, "sync": conv.settings.sync}

    def export(self, fmt: Literal["md", "html", "ipynb"], path: str | Path) -> Path:
        """Write the active branch as Markdown (its images in `<stem>_files/` beside it), one HTML
        page or a Jupyter notebook (nbformat 4)."""
        if fmt not in ("md", "html", "ipynb"):
            raise ValueError(f"export format must be 'md', 'html' or 'ipynb', got {fmt!r}")
        from agent.core import export  # here: session.py's imports are another helper's
        from agent.core.notebook_export import notebook_json

        conv = self.conversation()
        if fmt == "md":  # its images go into the folder `<stem>_files` beside it
            return export.write_markdown(path, conv)
        store.atomic_write(Path(path), notebook_json(conv) if fmt == "ipynb" else export.to_html(conv))
        return Path(path)


__all__ = ["Session", "Sync", "Approve", "ParseCalls"]
