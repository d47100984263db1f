"""`Conversation`: the tree of messages with its system prompt, its id and its file.

It moves along the tree (the active branch is what the model sees), names its file once (from the
time and the first prompt), writes it whole after every change (atomically: a file on disk is never
half-written) and exports the active branch. It knows no backend and no kernel: what else goes into
the file (the model, usage, settings) the session hands over when it saves.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

from agent.core import export as exports
from agent.core import store
from agent.core.messages import Message
from agent.core.notebook_export import notebook_json
from agent.core.prompts import DEFAULT_SYSTEM
from agent.core.tree import Node, Tree

ExportFormat = Literal["md", "html", "ipynb"]


class Conversation:
    """A conversation tree that starts with its system prompt. `path`: the file it is saved to
    after every change (None: not saved until `name_file` or a path is set)."""

    def __init__(self, system: str | None = None, path: str | Path | None = None):
        self.system = system if system is not None else DEFAULT_SYSTEM
        self.id = uuid.uuid4().hex[:12]
        self.tree = Tree()
        self.tree.add(Message(role="system", content=self.system))
        self.path = Path(path) if path else None

    @classmethod
    def from_file(cls, conv: store.ConversationFile, path: Path) -> "Conversation":
        """The conversation a file holds, saved back to that file."""
        out = cls(conv.system, path)
        out.id, out.tree = conv.id, conv.tree
        return out

    def set_system(self, text: str) -> None:
        """Replace the system prompt. It is the root of the tree, so every branch uses the new one
        from its next request on; answers already given stay as they were."""
        self.system = text
        self.tree.nodes[self.tree.root].message = Message(role="system", content=text)

    def add(self, message: Message, **meta) -> Node:
        """Add a message after the active leaf (meta: the Node's usage, cell)."""
        return self.tree.add(message, **meta)

    def move_to(self, node_id: str | None) -> None:
        """Make the branch ending at `node_id` the active one (edits and retries grow from there)."""
        if node_id is None:
            raise ValueError("cannot move above the system prompt")
        self.tree.switch(node_id)

    def name_file(self, first_prompt: str | None = None) -> Path:
        """The file, named once if it has no name yet: a readable name in the conversations folder,
        from the time and the first prompt (`first_prompt` until there is one; never renamed after).
        Nothing is written."""
        if self.path is None:
            prompts = self.tree.user_nodes()
            created = self.tree.nodes[self.tree.root].created if self.tree.root else None
            self.path = store.conversations_dir() / store.file_name(
                self.id, created, prompts[0].message.content if prompts else first_prompt)
        return self.path

    def write(self, conv: store.ConversationFile) -> None:
        """Write the file (whole, atomically), where there is one."""
        if self.path is not None:
            store.save(self.path, conv)


def export(conv: store.ConversationFile, fmt: ExportFormat, path: str | Path) -> Path:
    """Write a conversation's active branch as Markdown (its images in `<stem>_files/` beside it),
    one HTML page or a Jupyter notebook (nbformat 4)."""
    if fmt not in ("md", "html", "ipynb"):
        raise ValueError(f"export format must be 'md', 'html' or 'ipynb', got {fmt!r}")
    if fmt == "md":
        return exports.write_markdown(path, conv)
    store.atomic_write(Path(path), notebook_json(conv) if fmt == "ipynb" else exports.to_html(conv))
    return Path(path)


__all__ = ["Conversation", "ExportFormat", "export"]
