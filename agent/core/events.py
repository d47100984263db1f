"""One event stream for every front end (CLI, terminal chat, task runner, Python API)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agent.core.messages import Usage


class TextEvent(BaseModel):
    kind: Literal["text"] = "text"
    text: str  # a delta of the assistant's text as it streams


class ToolCallEvent(BaseModel):
    kind: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    code: str | None = None  # the python tool's cell, before it runs
    arguments: str = ""


class ToolOutputEvent(BaseModel):
    kind: Literal["tool_output"] = "tool_output"
    id: str
    stream: str  # stdout | stderr | result | display | error
    text: str


class ToolResultEvent(BaseModel):
    """A tool's result. A turn strategy may report it as a subclass of its own, with what it read
    from the cell (see TurnStrategy.result_event); front ends show the fields here."""

    kind: Literal["tool_result"] = "tool_result"
    id: str
    name: str
    status: str  # ok | error | timeout | died | rejected | invalid
    output: str  # what the model is shown
    code: str | None = None
    images: list[str] = Field(default_factory=list)
    duration: float = 0.0
    execution_count: int | None = None  # the kernel's count for the cell (Out [k]); None: no cell ran


class UsageEvent(BaseModel):
    kind: Literal["usage"] = "usage"
    usage: Usage  # this request
    total: Usage  # the conversation so far


class NoticeEvent(BaseModel):
    kind: Literal["notice"] = "notice"
    text: str  # budget stops, kernel replays, state kept or reset


class AnswerEvent(BaseModel):
    kind: Literal["answer"] = "answer"
    text: str
    steps: int
    # How the turn ended (the statuses of agent.core.tree.TurnOutcome); `text` is then what to show
    outcome: str = "answered"


Event = TextEvent | ToolCallEvent | ToolOutputEvent | ToolResultEvent | UsageEvent | NoticeEvent | AnswerEvent
