"""Record model requests and replies to a cassette, and serve them back: a run repeated exactly,
offline and free.

    backend = RecordingBackend(get_backend("hf:smollm2"), cassette, task="quickstart")
    backend = ReplayBackend("run.cassette.json", task="quickstart")   # no model is loaded

Both implement the Backend protocol and declare the capabilities of the backend that was recorded.
Requests are keyed by a hash of the messages and tools, after two normalisations that make a replayed
run produce the same keys: tool-call ids (random for models that answer with fenced code) are
renumbered in order of appearance, and the task's workspace path becomes `<workspace>`. The cassette
is one human-readable JSON file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, Field

from agent.core.backend import Backend, Capabilities, stream_reply
from agent.core.messages import Done, Message, Reply, StreamEvent
from agent.core.store import atomic_write, read_document
from agent.models import pricing
from agent.models.toolparse import with_text_calls

FORMAT = "kernelchat.cassette/1"


class CassetteError(RuntimeError):
    """A replayed run asked for something the cassette does not hold."""


class Interaction(BaseModel):
    task: str
    n: int  # request number within the task, from 1
    key: str
    messages: list[dict[str, Any]]  # normalised, as hashed
    tools: list[dict[str, Any]] | None = None
    reply: Reply


class TaskInfo(BaseModel):
    model: str
    context_window: int
    supports_tools: bool = True  # cassettes from before `capabilities` hold only this
    capabilities: Capabilities | None = None
    token_counts: dict[str, int] = Field(default_factory=dict)  # request hash -> prompt tokens


class CassetteFile(BaseModel):
    format: str = FORMAT
    tasks: dict[str, TaskInfo] = Field(default_factory=dict)
    interactions: list[Interaction] = Field(default_factory=list)


def _normalise(messages: list[Message], tools: list[dict] | None, workspace: str | None) -> tuple[list[dict], Any]:
    ids: dict[str, str] = {}

    def renumber(i: str | None) -> str | None:
        if i is None:
            return None
        return ids.setdefault(i, f"call_{len(ids) + 1}")

    out = []
    for m in messages:
        d = m.to_openai()
        for c in d.get("tool_calls", []):
            c["id"] = renumber(c["id"])
        if d.get("tool_call_id"):
            d["tool_call_id"] = renumber(d["tool_call_id"])
        if workspace and isinstance(d.get("content"), str):
            d["content"] = d["content"].replace(workspace, "<workspace>")
        out.append(d)
    return out, tools


def request_key(messages: list[Message], tools: list[dict] | None, workspace: str | None = None) -> str:
    """sha256 of the normalised request (messages + tools)."""
    msgs, tools = _normalise(messages, tools, workspace)
    blob = json.dumps({"messages": msgs, "tools": tools}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class Cassette:
    """The file and a lock: several tasks (threads) may record into one cassette."""

    def __init__(self, path: str | Path, data: CassetteFile | None = None):
        self.path = Path(path)
        self.data = data or CassetteFile()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path) -> "Cassette":
        raw = read_document(path, FORMAT, "cassette", CassetteError)
        return cls(Path(path), CassetteFile.model_validate(raw))

    def save(self) -> None:
        with self._lock:
            atomic_write(self.path, self.data.model_dump_json(indent=1, exclude_none=True))

    def add(self, item: Interaction) -> None:
        with self._lock:
            self.data.interactions.append(item)
        self.save()

    def task(self, name: str) -> list[Interaction]:
        return [i for i in self.data.interactions if i.task == name]

    def start_task(self, name: str, info: TaskInfo) -> None:
        """Record task `name` afresh: what was recorded for it before is dropped."""
        with self._lock:
            self.data.tasks[name] = info
            self.data.interactions = [i for i in self.data.interactions if i.task != name]

    def note_prompt_tokens(self, task: str, key: str, n: int) -> None:
        """The pre-flight token count of request `key`, so that a replay counts as the recording did."""
        with self._lock:
            self.data.tasks[task].token_counts[key] = n


class RecordingBackend(Backend):
    """Passes every request to `inner` and writes request and reply to the cassette."""

    def __init__(self, inner: Backend, cassette: Cassette, task: str = "default",
                 workspace: str | Path | None = None):
        self.inner, self.cassette, self.task = inner, cassette, task
        self.workspace = str(workspace) if workspace else None
        self.model: str = inner.model
        self.context_window: int = inner.context_window
        # The inner backend's decoding guides run as usual: the replies are recorded as they shaped them.
        self.capabilities: Capabilities = inner.capabilities
        self.price, self.price_help, self.tools_note = inner.price, inner.price_help, inner.tools_note
        self.n = 0
        cassette.start_task(task, TaskInfo(model=self.model, context_window=self.context_window,
                                           supports_tools=self.capabilities.tools, capabilities=self.capabilities))

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        n = self.inner.count_prompt_tokens(messages, tools)
        self.cassette.note_prompt_tokens(self.task, request_key(messages, tools, self.workspace), n)
        return n

    def _record(self, messages: list[Message], tools: list[dict] | None, reply: Reply) -> None:
        self.n += 1
        msgs, tools_ = _normalise(messages, tools, self.workspace)
        self.cassette.add(Interaction(task=self.task, n=self.n, key=request_key(messages, tools, self.workspace),
                                      messages=msgs, tools=tools_, reply=reply))

    def stream(self, messages, tools=None, *, max_tokens=None, temperature=None,
               **guides) -> Iterator[StreamEvent]:
        for ev in self.inner.stream(messages, tools, max_tokens=max_tokens, temperature=temperature, **guides):
            if isinstance(ev, Done):
                self._record(messages, tools, ev.reply)
            yield ev


class ReplayBackend(Backend):
    """Serves the recorded replies of one task; never loads a model or opens a connection."""

    def __init__(self, path: str | Path | Cassette, task: str | None = None, workspace: str | Path | None = None):
        self.cassette = path if isinstance(path, Cassette) else Cassette.load(path)
        data = self.cassette.data
        if task is None:
            if len(data.tasks) != 1:
                raise CassetteError(f"{self.cassette.path}: holds tasks {sorted(data.tasks)}; name one")
            task = next(iter(data.tasks))
        if task not in data.tasks:
            raise CassetteError(f"{self.cassette.path}: no recording for task {task!r} "
                                f"(recorded: {', '.join(sorted(data.tasks)) or 'none'})")
        self.task, self.info = task, data.tasks[task]
        self.workspace = str(workspace) if workspace else None
        self.model, self.context_window = self.info.model, self.info.context_window
        self.price, self.price_help = pricing.lookup(self.model), pricing.price_help(self.model)
        # The recorded backend's, so that the loop asks as it did; the replies come whole.
        recorded = self.info.capabilities or Capabilities(tools=self.info.supports_tools)
        self.capabilities = dataclasses.replace(recorded, streaming=False)
        self.recorded = self.cassette.task(task)
        # The same request may recur (a small model's attempts start afresh from the same prompt):
        # its replies are served in the order they were recorded.
        self.by_key: dict[str, list[Interaction]] = {}
        for i in self.recorded:
            self.by_key.setdefault(i.key, []).append(i)
        self.served: dict[str, int] = {}
        self.n = 0

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        n = self.info.token_counts.get(request_key(messages, tools, self.workspace))
        if n is not None:
            return n
        text = "".join((m.content or "") + "".join(c.arguments for c in m.tool_calls) for m in messages)
        return len(text) // 4 + 4 * len(messages)  # not recorded: a rough count, for budgets only

    def _lookup(self, messages: list[Message], tools: list[dict] | None) -> Reply:
        self.n += 1
        key = request_key(messages, tools, self.workspace)
        hits = self.by_key.get(key)
        if hits:
            k = self.served.get(key, 0)
            self.served[key] = k + 1
            return hits[min(k, len(hits) - 1)].reply.model_copy(deep=True)
        raise CassetteError(f"replay: task {self.task!r}, request {self.n}: not in the cassette "
                            f"{self.cassette.path}; {self._difference(messages, tools)}")

    def _difference(self, messages: list[Message], tools: list[dict] | None) -> str:
        if self.n > len(self.recorded):
            return f"the recording has only {len(self.recorded)} request(s) for this task"
        rec = self.recorded[self.n - 1]
        msgs, tools_ = _normalise(messages, tools, self.workspace)
        if tools_ != rec.tools:
            return "the tools offered differ from the recording"
        for i, (a, b) in enumerate(zip(msgs, rec.messages)):
            if a != b:
                field = next((k for k in ("role", "content", "tool_calls", "tool_call_id", "name")
                              if a.get(k) != b.get(k)), "?")
                return (f"message {i} ({a.get('role')}) differs in {field}: now {_short(a.get(field))}, "
                        f"recorded {_short(b.get(field))}")
        return f"the request has {len(msgs)} messages, the recording {len(rec.messages)}"

    def stream(self, messages, tools=None, *, max_tokens=None, temperature=None,
               **guides) -> Iterator[StreamEvent]:
        """The recorded reply; the guides (numbers=, favour=) shaped it when it was recorded."""
        # Recorded before backends parsed text calls, a reply may hold ```python blocks: calls too.
        yield from stream_reply(with_text_calls(self._lookup(messages, tools), tools), chunk=16)


def _short(value: Any, n: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= n else text[:n] + "...")


__all__ = ["Cassette", "CassetteError", "RecordingBackend", "ReplayBackend", "request_key"]
