"""A scripted backend: replies given in advance. For deterministic loop tests and demos, beside
(never instead of) the real backends."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

from agent.core.backend import Backend, Capabilities, stream_reply
from agent.core.messages import Message, Reply, StreamEvent, ToolCall, Usage
from agent.models import pricing
from agent.models.toolparse import with_text_calls

Script = str | Message | Callable[[list[Message]], "str | Message"]


def python_call(code: str, call_id: str | None = None) -> Message:
    """An assistant message that calls the python tool."""
    return Message(role="assistant", tool_calls=[ToolCall(id=call_id or f"call_{abs(hash(code)) % 10**8}",
                                                          name="python", arguments=json.dumps({"code": code}))])


class ScriptedBackend(Backend):
    """Returns the scripted replies in order; a callable sees the conversation so far. Pass
    `capabilities=Capabilities(tools=False)` to script a model without tool training."""

    context_window = 128_000

    def __init__(self, replies: list[Script], model: str = "local:scripted",
                 capabilities: Capabilities = Capabilities(streaming=False)):
        self.model, self.capabilities = model, capabilities
        # A script costs nothing, unless it stands in for a priced model (`model="gpt-4o-mini"`).
        self.price = pricing.lookup(model) or pricing.Price()
        self.replies = list(replies)
        self.requests: list[list[Message]] = []  # what the loop sent, for assertions

    def _next(self, messages: list[Message]) -> Message:
        self.requests.append(list(messages))
        if not self.replies:
            raise RuntimeError("the scripted backend has no reply left for this request")
        r = self.replies.pop(0)
        if callable(r):
            r = r(messages)
        return Message(role="assistant", content=r) if isinstance(r, str) else r

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        text = "".join((m.content or "") + "".join(c.arguments for c in m.tool_calls) for m in messages)
        return len(text) // 4 + 4 * len(messages) + (len(json.dumps(tools)) // 4 if tools else 0)

    def stream(self, messages, tools=None, *, max_tokens=None, temperature=None,
               **guides) -> Iterator[StreamEvent]:
        msg = self._next(messages)
        completion = len((msg.content or "") + "".join(c.arguments for c in msg.tool_calls)) // 4 + 1
        usage = Usage(prompt_tokens=self.count_prompt_tokens(messages, tools), completion_tokens=completion)
        usage.estimated_prompt_tokens = usage.prompt_tokens
        reply = Reply(message=msg, usage=usage, finish_reason="tool_calls" if msg.tool_calls else "stop",
                      model=self.model)
        yield from stream_reply(with_text_calls(reply, tools))  # ```python blocks are calls, as a model's
