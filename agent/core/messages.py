"""Messages at the boundary between the loop and every backend (OpenAI chat-completions shape)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.schema import parse_arguments

Role = Literal["system", "user", "assistant", "tool"]


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: str = Field(description="JSON text exactly as the model produced it (may be malformed)")

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; raises ValueError with a message the model can act on."""
        return parse_arguments(self.name, self.arguments)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class Figure(BaseModel):
    """An image a cell displayed or a tool returned, kept in the conversation itself: exports inline
    these bytes and never read a workspace path back (the sandboxed code could have swapped the file
    for a link)."""

    mime: str = Field(pattern=r"^image/[a-z0-9.+-]+$")
    data: str = Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$", description="base64 of the image (SVG: of its UTF-8)")
    name: str = ""  # the file it was saved under (the workspace's outputs folder), for display


class Message(BaseModel):
    role: Role
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None  # for role == "tool"
    # A tool result's images (an MCP server's; a cell's come from its record): sent to a backend
    # whose capabilities say it takes images, as the backend's API wants them; not part of to_openai.
    images: list[Figure] = Field(default_factory=list)

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out

    @classmethod
    def from_openai(cls, d: dict[str, Any]) -> "Message":
        calls = [ToolCall(id=c.get("id", ""), name=c["function"]["name"], arguments=c["function"].get("arguments", ""))
                 for c in d.get("tool_calls") or []]
        content = d.get("content")
        if isinstance(content, list):  # content parts: keep the text
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return cls(role=d["role"], content=content, name=d.get("name"), tool_calls=calls,
                   tool_call_id=d.get("tool_call_id"))


def tool_result(call_id: str, text: str, name: str | None = None, images: list[Figure] = ()) -> Message:
    return Message(role="tool", content=text, tool_call_id=call_id, name=name, images=list(images))


class Usage(BaseModel):
    """Tokens and money for one request (or summed over many)."""

    # Never negative, never NaN: sums of these decide budgets (backends sanitise what servers report).
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    estimated_prompt_tokens: int | None = Field(default=None, ge=0)  # our pre-flight count, to record drift

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        est = None
        if self.estimated_prompt_tokens is not None or other.estimated_prompt_tokens is not None:
            est = (self.estimated_prompt_tokens or 0) + (other.estimated_prompt_tokens or 0)
        return Usage(prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                     completion_tokens=self.completion_tokens + other.completion_tokens,
                     cached_tokens=self.cached_tokens + other.cached_tokens,
                     reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
                     cost_usd=self.cost_usd + other.cost_usd, seconds=self.seconds + other.seconds,
                     estimated_prompt_tokens=est)


class Reply(BaseModel):
    """What a backend returns for one request: the assistant message and its usage."""

    message: Message
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    model: str | None = None


class TextDelta(BaseModel):
    kind: Literal["text"] = "text"
    text: str


class Done(BaseModel):
    """The last stream event: the whole reply."""

    kind: Literal["done"] = "done"
    reply: Reply


StreamEvent = TextDelta | Done
