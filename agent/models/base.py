"""The one interface every backend implements."""

from __future__ import annotations

from typing import Any, Iterator, Protocol, runtime_checkable

from agent.core.messages import Done, Message, Reply, StreamEvent, TextDelta, ToolCallDelta


class BackendError(RuntimeError):
    """A request failed for a reason the user can act on; the message is one clear sentence."""


@runtime_checkable
class Backend(Protocol):
    model: str            # the model name as the user gave it (e.g. "gpt-4o-mini", "hf:smollm2")
    context_window: int   # tokens

    def complete(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
                 max_tokens: int | None = None, temperature: float | None = None) -> Reply:
        """Send the conversation; return the assistant message with its usage."""

    def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
               max_tokens: int | None = None, temperature: float | None = None) -> Iterator[StreamEvent]:
        """Yield TextDelta and ToolCallDelta as they arrive, then one Done with the whole Reply."""

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        """Pre-flight prompt-token count of this request."""


def stream_reply(reply: Reply, chunk: int = 8) -> Iterator[StreamEvent]:
    """A reply that is already whole, as the events a stream of it would yield."""
    text = reply.message.content or ""
    for i in range(0, len(text), chunk):
        yield TextDelta(text=text[i:i + chunk])
    for i, c in enumerate(reply.message.tool_calls):
        yield ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments)
    yield Done(reply=reply)
