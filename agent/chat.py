"""`Chat`: the Python API. A conversation tree, a model, tools and a sandboxed kernel that
follows the active branch."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from sandbox import Kernel
from tools.python_tool import SCHEMA as PYTHON_SCHEMA
from tools.schema import Tool, as_tool

from agent.models import pricing

from agent.smallmodel import shots

from agent.core import store
from agent.models import get_backend
from agent.core.budget import Budget, BudgetTracker
from agent.core.events import AnswerEvent, Event, NoticeEvent
from agent.core.loop import COMPLETION_ALLOWANCE, run_turn, user_message
from agent.core.messages import Message, Usage
from agent.core.prompts import DEFAULT_SYSTEM, SMALL_MODEL_SYSTEM
from agent.core.tree import Branch, Node, Tree

Sync = Literal["replay", "keep", "reset"]
EXAMPLE_BONUS = 2.0  # best of 0 to 5 on bench/small_model_accuracy.py: see the README's performance section
Approve = Callable[[str], "bool | str | None"]


class Chat:
    """A conversation with a model that runs Python in a sandboxed kernel.

    >>> chat = Chat()                       # hf:smollm2 offline, or gpt-4o-mini with OPENAI_API_KEY
    >>> chat("What is 2**100? Use Python.")
    >>> chat.edit(0, "What is 2**64?")      # a new branch; the kernel follows it
    """

    def __init__(self, model: str | None = None, *, system: str | None = None, tools: list[Callable | Tool] = (),
                 budget: Budget | None = None, max_steps: int = 10, base_url: str | None = None,
                 api_key: str | None = None, backend: Any = None, use_python: bool = True,
                 kernel: Kernel | None = None, workspace: str | Path | None = None, isolation: str | None = None,
                 network: bool = False, gpu: bool = False, timeout: float = 120.0, memory_mb: int | None = -1,
                 sync: Sync = "replay", approve: Approve | None = None, temperature: float | None = None,
                 path: str | Path | None = None, progress: bool = True, answer_from_output: bool | None = None,
                 **kernel_options: Any):
        if sync not in ("replay", "keep", "reset"):
            raise ValueError(f"sync must be 'replay', 'keep' or 'reset', got {sync!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.tracker = BudgetTracker()
        self.use_backend(backend if backend is not None else get_backend(model, base_url=base_url, api_key=api_key,
                                                                         progress=progress))
        self.tracker.budget = budget or Budget()  # max_usd for a model without a price: ValueError
        if answer_from_output is not None:
            self.small_model_mode(answer_from_output)
        small = getattr(self.backend, "supports_tools", True) is False
        self.system = system if system is not None else (SMALL_MODEL_SYSTEM if small else DEFAULT_SYSTEM)
        self.tools: dict[str, Tool] = {t.name: t for t in map(as_tool, tools)}
        self.use_python = use_python
        self.max_steps, self.timeout, self.sync, self.approve = max_steps, timeout, sync, approve
        self.temperature, self.progress = temperature, progress
        # Anything else goes to the Kernel: limits, env, gateway_url/gateway_token for remote kernels.
        self._kernel_options = dict(workspace=workspace, isolation=isolation, network=network, gpu=gpu,
                                    timeout=timeout, memory_mb=memory_mb, **kernel_options)
        self._kernel: Kernel | None = kernel
        self._kernel_cells: list[str] = []  # the cell nodes the live kernel has executed, in order
        self.id = uuid.uuid4().hex[:12]
        self.tree = Tree()
        self.tree.add(Message(role="system", content=self.system))
        self.path = Path(path) if path else None
        self.notices: list[str] = []  # written from the first message on: no file for a run without a prompt

    # -- the model ------------------------------------------------------------------------------

    def use_backend(self, backend: Any) -> None:
        """Talk to another model from the next request on. What follows the kind of model follows it
        (the small-model mode, tokens per step); the system prompt stays. A money budget needs the
        model's price: a model without one is refused (ValueError) and nothing changes."""
        model = getattr(backend, "model", "?")
        self.tracker.set_model(model, pricing.lookup(model))
        self.backend, self.model = backend, model
        small = getattr(backend, "supports_tools", True) is False
        # A code block is short; a small model that runs on is rambling, and each token costs time.
        self.max_tokens_per_step = 384 if small else COMPLETION_ALLOWANCE
        self.small_model_mode(small)

    def small_model_mode(self, on: bool) -> None:
        """Models without tool training (on by default for them) write ```python blocks and garble
        what they copy: the answer is the short value their code printed, and the loop helps them."""
        self.answer_from_output = on
        # Worked examples sent before the question: a list of (question, answer) turns, or a
        # function of the question that picks them (the default: the closest from a bank).
        self.examples: Callable[[str], list[tuple[str, str]]] | list[tuple[str, str]] = shots.pick if on else []
        # Number literals in the code limited to the conversation's numbers and common constants,
        # where the backend can do it (local models whose digits are single tokens).
        self.ground_numbers = on
        # A logit bonus in the code for the tokens of the examples and the question (0: none).
        self.example_bonus = EXAMPLE_BONUS if on else 0.0
        # A failed attempt is regenerated, not repaired: up to `attempts` per prompt, until `agree`
        # of them print the same value (see loop._attempts; a vote measured no better than 1).
        self.attempts, self.agree = 5, 1

    # -- the turn ------------------------------------------------------------------------------

    def run(self, prompt: str) -> Iterator[Event]:
        """Add a prompt and run the loop, yielding events; the last is an AnswerEvent."""
        self._append(user_message(prompt))
        yield from self._turn()

    def _turn(self) -> Iterator[Event]:
        self.tree.repair_interrupted()  # a call whose cell failed or was cut off: servers want its result
        yield from self._drain_notices()
        yield from run_turn(self)

    def _drain_notices(self) -> Iterator[Event]:
        while self.notices:
            yield NoticeEvent(text=self.notices.pop(0))

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
        self._append(msg)
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
        self._sync_kernel()
        self._save()

    def branches(self) -> list[Branch]:
        return self.tree.branches()

    def _move_to(self, node_id: str | None) -> None:
        if node_id is None:
            raise ValueError("cannot move above the system prompt")
        self.tree.leaf = node_id
        self._sync_kernel()
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

    def conversation(self) -> store.ConversationFile:
        """The whole conversation as saved: tree, usage, settings."""
        return self._conversation()

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
        self._kernel.restart()
        self._kernel_cells = []
        if self.sync == "reset":
            self.notices.append("kernel reset: it starts clean, without this branch's earlier state")
            self._kernel_cells = wanted
            return
        self._replay(wanted)

    def _replay(self, node_ids: list[str]) -> None:
        from rich.progress import Progress

        cells = [self.tree.nodes[i] for i in node_ids]
        failed = 0
        with Progress(transient=True, disable=not self.progress or len(cells) < 3) as bar:
            task = bar.add_task("replaying the branch's cells", total=len(cells))
            for node in cells:
                res = self._kernel.execute(node.cell.code, timeout=self.timeout)
                failed += res.status not in ("ok", "error")
                self._kernel_cells.append(node.id)
                bar.advance(task)
        if not cells:
            self.notices.append("kernel restarted: this branch has run no code yet")
            return
        self.notices.append(f"kernel brought to this branch: {len(cells)} cell(s) replayed"
                            + (f", {failed} did not finish" if failed else ""))

    def restart_kernel(self, mode: Literal["replay", "reset"] = "replay") -> None:
        """Restart the kernel; `replay` re-runs the branch's cells, `reset` starts clean."""
        if self._kernel is None:
            return
        self._kernel.restart()
        self._kernel_cells = []
        if mode == "replay":
            self._replay([n.id for n in self.tree.cells()])
        else:
            self._kernel_cells = [n.id for n in self.tree.cells()]

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.close()

    def __enter__(self) -> "Chat":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- tools, messages, usage --------------------------------------------------------------

    def tool_schemas(self) -> list[dict]:
        return ([PYTHON_SCHEMA] if self.use_python else []) + [t.schema for t in self.tools.values()]

    def messages(self) -> list[Message]:
        return self.tree.messages()

    @property
    def price(self) -> pricing.Price | None:
        """The model's price per 1M tokens (zero for local models); None when unknown."""
        return self.tracker.price

    @property
    def usage(self) -> Usage:
        return self.tracker.spent

    @property
    def answer(self) -> str | None:
        leaf = self.tree.nodes[self.tree.leaf]
        return leaf.message.content if leaf.message.role == "assistant" else None

    def _append(self, message: Message, **meta) -> Node:
        node = self.tree.add(message, **meta)
        self._save()
        return node

    # -- persistence -------------------------------------------------------------------------

    def _conversation(self) -> store.ConversationFile:
        return store.ConversationFile(id=self.id, model=self.model, system=self.system, tree=self.tree,
                                      usage=self.usage, settings={"max_steps": self.max_steps, "sync": self.sync,
                                                                  "usages": [u.model_dump() for u in self.tracker.usages]})

    def _save(self) -> None:
        if self.path is not None:
            store.save(self.path, self._conversation())

    def save(self, path: str | Path | None = None) -> Path:
        """Save now (and after every message from now on) to `path`."""
        if path is not None:
            self.path = Path(path)
        if self.path is None:
            self.path = store.conversations_dir() / f"{self.id}.json"
        self._save()
        return self.path

    @classmethod
    def load(cls, path: str | Path, **options: Any) -> "Chat":
        """Resume a saved conversation; its active branch is replayed into a fresh kernel on first use.
        A file that is not a sound conversation raises store.ConversationError (a ValueError)."""
        conv = store.load(Path(path))
        options.setdefault("model", conv.model)
        options.setdefault("system", conv.system)
        options.setdefault("max_steps", conv.settings.max_steps)
        options.setdefault("sync", conv.settings.sync)
        chat = cls(**options)
        chat.id, chat.tree, chat.path = conv.id, conv.tree, Path(path)
        chat.tracker.usages = list(conv.settings.usages)
        return chat

    def export(self, fmt: Literal["md", "html"], path: str | Path) -> Path:
        if fmt not in ("md", "html"):
            raise ValueError(f"export format must be 'md' or 'html', got {fmt!r}")
        text = store.to_markdown(self._conversation()) if fmt == "md" else store.to_html(self._conversation())
        store.atomic_write(Path(path), text)
        return Path(path)


__all__ = ["Chat"]
