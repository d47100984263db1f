"""A conversation as a tree of messages. Editing a prompt opens a sibling branch instead of
piling on turns; every branch stays reachable."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field, model_validator

from sandbox import ExecResult
from tools.python_tool import notes_of
from tools.text import MAX_MESSAGE_CHARS, clip

from agent.core.messages import Figure, Message, Usage, tool_result

INTERRUPTED = ("[interrupted: this call did not finish (kernelchat stopped or failed while it ran), so its "
               "result is lost; anything it changed in the kernel may be missing]")


def figures_of(res: ExecResult) -> list[Figure]:
    """The images of an execution, with their bytes."""
    return [Figure(mime=o.mime, data=o.data, name=PurePath(o.path).name if o.path else "")
            for o in res.outputs if o.data is not None and o.mime.startswith("image/")]


class CellError(BaseModel):
    """The error a cell raised, as the kernel reported it."""

    name: str
    value: str = ""
    traceback: list[str] = Field(default_factory=list)  # the kernel's lines, colours stripped


def returned(res: ExecResult, limit: int = MAX_MESSAGE_CHARS) -> dict:
    """What the kernel returned, as CellRecord's fields, each cut to `limit` characters (the sandbox
    bounds each stream; this bounds what a conversation file keeps of them)."""
    error = None
    if res.error_name:
        tb = clip(res.traceback, limit).split("\n") if res.traceback else []
        error = CellError(name=res.error_name, value=clip(res.error_value or "", limit), traceback=tb)
    return dict(stdout=clip(res.stdout, limit), stderr=clip(res.stderr, limit), error=error,
                result=clip(res.result, limit) if res.result is not None else None,
                markdown=[clip(o.text, limit) for o in res.outputs if o.mime == "text/markdown" and o.text],
                notes=[clip(n, limit) for n in notes_of(res)])


class CellRecord(BaseModel):
    """A python tool call as it ran: enough to replay it and to show it. Exports are made from the
    kernel's fields (stdout ... notes); files written before them have only `output`."""

    code: str
    # ok | error | interrupted (stopped by Ctrl-C / Kernel.interrupt) | timeout | died | rejected | invalid
    status: str
    output: str  # the rendering the model saw
    images: list[str] = Field(default_factory=list)  # where they were saved: shown, never read back
    figures: list[Figure] = Field(default_factory=list)  # the images themselves (older files: none)
    duration: float = 0.0
    executed: bool = True  # False when rejected by the approval hook
    execution_count: int | None = None  # the kernel's count for it (In [n]); None: not known
    # What the kernel returned (see `returned`); None (stdout): a file written before these were kept
    stdout: str | None = None
    stderr: str | None = None
    result: str | None = None  # text/plain of the last expression
    error: CellError | None = None
    markdown: list[str] = Field(default_factory=list)  # text/markdown displays
    notes: list[str] = Field(default_factory=list)  # what the model was told besides: "[stdout was long ...]"

    @property
    def has_fields(self) -> bool:
        """The kernel's fields were kept (not a record of an older file, or of a cell that did not run)."""
        return self.stdout is not None

    @property
    def completed(self) -> bool:
        """The cell ran to its end: ok, or an ordinary error (whose earlier lines may have defined
        names the later cells use). Interrupted, timed-out and killed cells did not."""
        if self.error is not None and self.error.name == "KeyboardInterrupt":
            return False
        if (not self.has_fields and self.status == "error"  # older files: the traceback tells
                and any(line.startswith("KeyboardInterrupt") for line in self.output.splitlines())):
            return False
        return self.executed and self.status in ("ok", "error")


OutcomeStatus = Literal["answered", "stopped", "max_steps", "budget", "interrupted", "failed", "set_aside"]
# Statuses of files written before a rename: "attempt" (an attempt not taken) is a reply set aside.
OLD_STATUSES = {"attempt": "set_aside"}


class TurnOutcome(BaseModel):
    """How a turn ended, stored on the message it ended at, so that every view (terminal, exports,
    transcripts, task reports) tells the same story. No outcome on a turn's last message: an
    ordinary answer (and files written before outcomes were stored).

    answered: a final answer; stopped: the turn's strategy stopped it without an answer (the note
    says why); max_steps: the step limit; budget: a budget refused the next request; interrupted:
    Ctrl-C, or the caller let go of the events; failed: an error (the server, the kernel) ended it;
    set_aside: the end of a reply that was tried and not taken (a retry, a sampled alternative),
    folded under its turn in `Tree.branches()` (see `Tree.folds`)."""

    status: OutcomeStatus
    note: str = ""  # what the user was told, e.g. "stopped after 10 steps without a final answer"

    @model_validator(mode="before")
    @classmethod
    def _older_status(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("status") in OLD_STATUSES:
            data = {**data, "status": OLD_STATUSES[data["status"]]}
        return data


class Node(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:10])
    parent: str | None = None
    message: Message
    usage: Usage | None = None  # for assistant messages: the request that produced it
    cell: CellRecord | None = None  # for tool messages of the python tool
    outcome: TurnOutcome | None = None  # on the message a turn ended at (see TurnOutcome)
    # Set by a turn strategy, read by every view: a short tag shown with the message ("attempt 2"),
    # and whether it starts an alternative (one of several tries at its turn: a set-aside branch is
    # folded from such a reply down to its end, see Tree.folds).
    label: str | None = None
    alternative: bool = False
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @model_validator(mode="before")
    @classmethod
    def _older_fields(cls, data: Any) -> Any:
        """Files written before labels hold `"attempt": N` on the reply that starts the N-th try at
        its turn: the label "attempt N" on the start of an alternative."""
        if not isinstance(data, dict) or "attempt" not in data:
            return data
        data = dict(data)
        n = data.pop("attempt")
        if n is None:
            return data
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"attempt must be a whole number, got {_short(n)}")
        data.setdefault("label", f"attempt {n}")
        data.setdefault("alternative", True)
        return data


class Fold(NamedTuple):
    """The set-aside branches folded under one turn: their messages, and how many alternatives
    (replies marked `alternative`) start among them."""

    nodes: frozenset[str]
    count: int


class Branch(BaseModel):
    """A leaf and how to recognise it."""

    id: str
    active: bool
    depth: int
    prompts: list[str]  # the user prompts on its path
    last: str  # a preview of its last message
    outcome: str = "answered"  # how its last turn ended (TurnOutcome.status)
    set_aside: int = 0  # branches set aside (tried, not taken) folded under its turns; `branches(all=True)` lists them


class Tree(BaseModel):
    nodes: dict[str, Node] = Field(default_factory=dict)
    root: str | None = None
    leaf: str | None = None  # the active branch ends here

    def add(self, message: Message, parent: str | None = "leaf", **meta) -> Node:
        """Append under `parent` (default: the active leaf) and make it the active leaf."""
        parent_id = self.leaf if parent == "leaf" else parent
        node = Node(parent=parent_id, message=message, **meta)
        if parent_id is None:
            if self.root is not None:
                raise ValueError("the tree already has a root")
            self.root = node.id
        elif parent_id not in self.nodes:
            raise ValueError(f"no message with id {parent_id!r}")
        self.nodes[node.id] = node
        self.leaf = node.id
        return node

    @model_validator(mode="after")
    def _sound(self) -> "Tree":
        """One root, every parent present, no cycle, an existing leaf: else ValueError saying where."""
        for key, node in self.nodes.items():
            if node.id != key:
                raise ValueError(f"message {_short(node.id)} is stored under the id {_short(key)}")
            if node.parent is not None and node.parent not in self.nodes:
                raise ValueError(f"message {_short(key)} has the parent {_short(node.parent)}, which is not there")
        roots = [k for k, n in self.nodes.items() if n.parent is None]
        if self.nodes and roots != [self.root]:
            raise ValueError(f"the root is {_short(self.root)} but the messages without a parent are "
                             f"{', '.join(map(_short, roots[:3])) or 'none'}")
        if not self.nodes and (self.root or self.leaf):
            raise ValueError("root or leaf set on a tree without messages")
        if self.nodes and self.leaf not in self.nodes:
            raise ValueError(f"the active message {_short(self.leaf)} is not there")
        reaches_root: set[str] = set()
        for key in self.nodes:  # each walk stops at a node already known to reach the root: O(n) in all
            seen: list[str] = []
            cur: str | None = key
            while cur is not None and cur not in reaches_root:
                if len(seen) > len(self.nodes):
                    raise ValueError(f"the parents of message {_short(key)} form a cycle")
                seen.append(cur)
                cur = self.nodes[cur].parent
            reaches_root.update(seen)
        return self

    def path(self, leaf: str | None = None) -> list[Node]:
        """Root to `leaf` (default: the active leaf)."""
        out, cur = [], self.leaf if leaf is None else leaf
        while cur is not None:
            node = self.nodes[cur]
            out.append(node)
            if len(out) > len(self.nodes):
                raise ValueError(f"the parents of message {_short(node.id)} form a cycle")
            cur = node.parent
        return out[::-1]

    def repair_interrupted(self) -> int:
        """Answer every tool call that has no result (kernelchat was killed, or failed, while it ran)
        with one that says so, so that a server accepts the conversation; return how many were added.

        The results go right after the call (or after the results it did get), before whatever
        followed it, so every branch through the call is mended."""
        kids: dict[str | None, list[Node]] = {}
        for n in self.nodes.values():
            kids.setdefault(n.parent, []).append(n)
        added = 0
        for node in list(self.nodes.values()):
            pending = list(node.message.tool_calls) if node.message.role == "assistant" else []
            cur = node
            while pending:
                ids = {p.id for p in pending}
                answer = next((c for c in kids.get(cur.id, []) if c.message.role == "tool"
                               and c.message.tool_call_id in ids), None)
                if answer is None:
                    break
                pending = [p for p in pending if p.id != answer.message.tool_call_id]
                cur = answer
            if not pending:
                continue
            after = kids.pop(cur.id, [])
            for call in pending:
                new = Node(parent=cur.id, message=tool_result(call.id, INTERRUPTED, name=call.name))
                self.nodes[new.id], kids[cur.id] = new, [new]
                if self.leaf == cur.id:
                    self.leaf = new.id
                cur, added = new, added + 1
            for child in after:
                child.parent = cur.id
            kids[cur.id] = after
        return added

    def messages(self, leaf: str | None = None) -> list[Message]:
        """The branch's messages; a cell's result carries the cell's figures (for models that see images)."""
        return [n.message.model_copy(update={"images": n.cell.figures}) if n.cell is not None and n.cell.figures
                and not n.message.images else n.message for n in self.path(leaf)]

    def children(self, node_id: str | None) -> list[Node]:
        return [n for n in self.nodes.values() if n.parent == node_id]

    def user_nodes(self, leaf: str | None = None) -> list[Node]:
        return [n for n in self.path(leaf) if n.message.role == "user"]

    def user_node(self, i: int) -> Node:
        users = self.user_nodes()
        if not users:
            raise ValueError("there is no prompt to edit yet")
        if not -len(users) <= i < len(users):
            raise ValueError(f"prompt {i} does not exist: this branch has prompts 0 to {len(users) - 1}")
        return users[i]

    def leaves(self) -> list[Node]:
        parents = {n.parent for n in self.nodes.values()}
        return [n for n in self.nodes.values() if n.id not in parents]

    def turn_outcome(self, leaf: str | None = None) -> TurnOutcome | None:
        """How the last turn on the path to `leaf` (default: the active leaf) ended: the outcome stored
        on its last message; an assistant answer without one is "answered" (older files); None when
        there is no turn yet or it has not ended (a message without an outcome that is no answer)."""
        end = self.nodes[self.leaf if leaf is None else leaf]
        if end.outcome is not None:
            return end.outcome
        m = end.message
        if m.role == "assistant" and not m.tool_calls:
            return TurnOutcome(status="answered")
        return None

    def branches(self, all: bool = False) -> list[Branch]:  # noqa: A002 - /branches --all
        """Every leaf, oldest first; after an undo the active point is listed too. Branches set aside
        (tried, not taken) are folded under their turn (counted in `set_aside`) unless `all`."""
        ends = sorted(self.leaves(), key=lambda n: n.created)
        if self.leaf is not None and self.leaf not in {n.id for n in ends}:
            ends.append(self.nodes[self.leaf])
        folds = {} if all else self.folds()
        hidden = hidden_by(folds)
        ends = [end for end in ends if end.id not in hidden]
        out = []
        for end in ends:
            path = self.path(end.id)
            last = end.message.content or (f"[{len(end.message.tool_calls)} tool call(s)]"
                                           if end.message.tool_calls else "")
            outcome = self.turn_outcome(end.id)
            out.append(Branch(id=end.id, active=end.id == self.leaf, depth=len(path),
                              prompts=[n.message.content or "" for n in path if n.message.role == "user"],
                              last=last[:80], outcome=outcome.status if outcome else "unfinished",
                              set_aside=sum(folds[n.id].count for n in path if n.id in folds)))
        return out

    def folds(self) -> dict[str, Fold]:
        """The branches set aside, folded under the turn they belong to (by its user message, else
        by the message the alternative answered). Each runs from a reply marked `alternative` down
        to a leaf whose outcome is "set_aside"; one without such a start, or that would fold part of
        the active branch, is not folded (it is listed like any branch)."""
        active = {n.id for n in self.path()} if self.leaf is not None else set()
        nodes: dict[str, set[str]] = {}
        starts: dict[str, set[str]] = {}
        for leaf in self.leaves():
            if leaf.outcome is None or leaf.outcome.status != "set_aside":
                continue
            branch, cur = set(), leaf
            while cur.id not in active and not cur.alternative and cur.parent is not None:
                branch.add(cur.id)
                cur = self.nodes[cur.parent]
            if cur.id in active or not cur.alternative or cur.parent is None:
                continue
            turn = self.nodes[cur.parent]
            while turn.message.role != "user" and turn.parent is not None:
                turn = self.nodes[turn.parent]
            key = turn.id if turn.message.role == "user" else cur.parent
            nodes.setdefault(key, set()).update(branch | {cur.id})
            starts.setdefault(key, set()).add(cur.id)
        return {key: Fold(frozenset(ids), len(starts[key])) for key, ids in nodes.items()}

    def switch(self, node_id: str) -> None:
        """Make `node_id` (a leaf or any message) the end of the active branch."""
        if node_id not in self.nodes:
            matches = [i for i in self.nodes if i.startswith(node_id)]
            if len(matches) != 1:
                raise ValueError(f"no single branch matches {node_id!r}; see branches()")
            node_id = matches[0]
        self.leaf = node_id

    def cells(self, leaf: str | None = None) -> list[Node]:
        """The executed python cells on a path, in order: what the kernel's state is made of."""
        return [n for n in self.path(leaf) if n.cell is not None and n.cell.executed]


def hidden_by(folds: dict[str, Fold]) -> set[str]:
    """Every message the folds hold."""
    return set().union(*(f.nodes for f in folds.values()))


def _short(node_id: object) -> str:
    """An id as an error message shows it: quoted, and cut if a hostile file made it long."""
    text = repr(node_id)
    return text if len(text) <= 40 else text[:37] + "..."
