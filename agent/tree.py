"""A conversation as a tree of messages. Editing a prompt opens a sibling branch instead of
piling on turns; every branch stays reachable."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from pydantic import BaseModel, Field

from .messages import Message, Usage


class CellRecord(BaseModel):
    """A python tool call as it ran: enough to replay it and to show it."""

    code: str
    status: str
    output: str  # the rendering the model saw
    images: list[str] = Field(default_factory=list)
    duration: float = 0.0
    executed: bool = True  # False when rejected by the approval hook


class Node(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:10])
    parent: str | None = None
    message: Message
    usage: Usage | None = None  # for assistant messages: the request that produced it
    cell: CellRecord | None = None  # for tool messages of the python tool
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


class Branch(BaseModel):
    """A leaf and how to recognise it."""

    id: str
    active: bool
    depth: int
    prompts: list[str]  # the user prompts on its path
    last: str  # a preview of its last message


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

    def path(self, leaf: str | None = None) -> list[Node]:
        """Root to `leaf` (default: the active leaf)."""
        out, cur = [], self.leaf if leaf is None else leaf
        while cur is not None:
            node = self.nodes[cur]
            out.append(node)
            cur = node.parent
        return out[::-1]

    def messages(self, leaf: str | None = None) -> list[Message]:
        return [n.message for n in self.path(leaf)]

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

    def branches(self) -> list[Branch]:
        """Every leaf, oldest first; after an undo the active point is listed too."""
        ends = sorted(self.leaves(), key=lambda n: n.created)
        if self.leaf is not None and all(n.id != self.leaf for n in ends):
            ends.append(self.nodes[self.leaf])
        out = []
        for end in ends:
            path = self.path(end.id)
            last = end.message.content or (f"[{len(end.message.tool_calls)} tool call(s)]"
                                           if end.message.tool_calls else "")
            out.append(Branch(id=end.id, active=end.id == self.leaf, depth=len(path),
                              prompts=[n.message.content or "" for n in path if n.message.role == "user"],
                              last=last[:80]))
        return out

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
