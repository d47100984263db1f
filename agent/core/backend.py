"""The one interface every model backend implements, and what a backend declares it can do.

A backend has one abstract method, `stream`; `complete` is a convenience built on it. What the loop
may ask of a backend beyond plain chat is declared in `capabilities`, never probed; what the session
asks of it (its price, a note on how it takes tools) are attributes every backend has.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, runtime_checkable

from agent.core.budget import Price
from agent.core.messages import Done, Message, Reply, StreamEvent, TextDelta


class BackendError(RuntimeError):
    """A request failed for a reason the user can act on; the message is one clear sentence."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared by the backend. The defaults: a tool-calling chat model that
    streams and takes no decoding guides."""

    # Takes tool schemas and answers with structured tool calls. False: a model without tool
    # training, which writes ```python blocks (the loop's small-model mode is on by default for it).
    tools: bool = True
    # Text arrives as it is generated. False: a whole reply, cut into pieces (scripted, replayed).
    streaming: bool = True
    # `stream(numbers=set_of_number_strings)`: numbers written in code are held to these.
    grounds_numbers: bool = False
    # `stream(favour=text, bonus=float)`: a logit bonus for the tokens of a text, in code.
    favours_tokens: bool = False
    # `stream(max_calls=N)`: generation stops where an (N+1)-th tool call begins (a small model's
    # degenerate reply of dozens of identical calls otherwise runs to max_tokens).
    stops_after_calls: bool = False
    # `stream(constrain_calls=bool)`: a call, once opened, is written under a grammar of the offered
    # tools' schemas (valid JSON naming one of them); None there: the backend's own default.
    constrains_calls: bool = False
    # Takes images in its input: a tool result's figures are sent to it (Message.images).
    images: bool = False
    # The model's size in parameters, where the backend knows it (local models); None: unknown.
    # Small tool-trained models get a small-model strategy of their own (agent/smallmodel/toolmodel.py).
    parameters: int | None = None


@runtime_checkable
class Backend(Protocol):
    """A model. Implementations subclass this (so they inherit `complete`) or just match it."""

    model: str                  # the model name as the user gave it (e.g. "gpt-4o-mini", "hf:smollm2")
    context_window: int         # tokens
    capabilities: Capabilities
    # Per 1M tokens: zero for a model on this machine; None where unknown (a money budget is then
    # refused, saying what `price_help` says: where a price can be given).
    price: Price | None = None
    price_help: str | None = None
    # Said once to the user when tools are offered: how this model takes them where it is not the
    # usual way (tools described in its prompt, for a template without a tool section); None: usual.
    tools_note: str | None = None

    @abstractmethod
    def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
               max_tokens: int | None = None, temperature: float | None = None,
               **guides: Any) -> Iterator[StreamEvent]:
        """Yield TextDelta as the text arrives, then one Done with the whole Reply. `guides` are the
        decoding guides the capabilities declare (numbers=, favour=, bonus=, max_calls=, constrain_calls=); a backend ignores
        the ones it does not declare. Tool calls the model wrote as text (```python blocks, a server
        without tool support) arrive as the Reply's tool calls: the backend parses them."""

    @abstractmethod
    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        """Pre-flight prompt-token count of this request."""

    def complete(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
                 max_tokens: int | None = None, temperature: float | None = None, **guides: Any) -> Reply:
        """The whole reply at once (for benchmarks and scripts; the loop streams)."""
        for event in self.stream(messages, tools, max_tokens=max_tokens, temperature=temperature, **guides):
            if isinstance(event, Done):
                return event.reply
        raise BackendError(f"the stream from {self.model} ended without a reply")


def stream_reply(reply: Reply, chunk: int = 8) -> Iterator[StreamEvent]:
    """A reply that is already whole, as the events a stream of it would yield."""
    text = reply.message.content or ""
    for i in range(0, len(text), chunk):
        yield TextDelta(text=text[i:i + chunk])
    yield Done(reply=reply)


__all__ = ["Backend", "BackendError", "Capabilities", "stream_reply"]
