"""OpenAI and OpenAI-compatible servers through the `openai` SDK (chat completions).

Retries are tenacity's alone (the SDK's own are switched off with max_retries=0): 429, 5xx, 408,
timeouts and dropped connections are retried with exponential backoff and jitter, honouring the
server's Retry-After / retry-after-ms; auth and validation errors fail at once. Every failure reaches
the caller as a BackendError carrying one sentence the user can act on.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import os
import time
from typing import Any, Iterator
from urllib.parse import urlparse

import openai
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from agent.models import pricing, tokens
from agent.models.toolparse import with_text_calls
from agent.core.backend import Backend, BackendError, Capabilities
from agent.core.messages import Done, Message, Reply, StreamEvent, TextDelta, ToolCall, Usage

OPENAI_URL = "https://api.openai.com/v1"
NO_KEY_PLACEHOLDER = "not-needed"  # custom servers often take no key, but the SDK insists on one
RETRY_AFTER_CAP = 60.0  # seconds: never sleep longer than this on a server's say-so
DEFAULT_CONTEXT = 128_000
# OpenAI's models that take images (the chat-completions `image_url` part); a server's model is not
# assumed to (`OpenAIBackend(images=True)` says it does).
VISION_MODELS = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
SENT_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
MAX_IMAGES_SENT = 4  # the latest tool results' images, each at "low" detail: 85 tokens apiece
IMAGE_TOKENS = 85
MAX_REPORTED_TOKENS = 10**12  # a token count above this is a broken server, not a bill
log = logging.getLogger("kernelchat.backend")


def _is_openai(url: str) -> bool:
    return (urlparse(url).hostname or "").endswith("api.openai.com")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.RateLimitError):
        return _code(exc) != "insufficient_quota"  # an empty account does not refill by waiting
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 408 or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)  # includes APITimeoutError


def _code(exc: openai.APIError) -> str | None:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
    return getattr(exc, "code", None) or err.get("code")


def _seconds(text: str, scale: float = 1.0) -> float | None:
    """A finite, non-negative number of seconds, or None (`-5`, `nan`, `inf`, `soon`)."""
    try:
        value = float(text) * scale
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def retry_after_seconds(headers: Any) -> float | None:
    """The server's requested delay: retry-after-ms, or Retry-After in seconds or as an HTTP date.
    None when it gave none that makes sense (negative, not a number, a date in the past): the
    caller's own backoff applies then."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms and (delay := _seconds(ms, 1 / 1000)) is not None:
        return delay
    value = headers.get("retry-after")
    if not value:
        return None
    if (delay := _seconds(value)) is not None:
        return delay
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # not a date either: "soon"
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses naive
        when = when.replace(tzinfo=datetime.timezone.utc)
    delay = when.timestamp() - time.time()
    return delay if delay > 0 else None


class _WaitRetryAfter:
    """tenacity wait: the server's Retry-After when it gave one, else exponential backoff with jitter."""

    def __init__(self, initial: float, maximum: float):
        self.fallback = wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial)  # jitter

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        response = getattr(exc, "response", None)
        delay = retry_after_seconds(getattr(response, "headers", None))
        return min(delay, RETRY_AFTER_CAP) if delay is not None else self.fallback(state)


class OpenAIBackend(Backend):
    """A Backend for api.openai.com or any server that speaks its chat-completions API."""

    capabilities = Capabilities()  # tool calls, streamed; no decoding guides through this API

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 120.0, max_retries: int = 4, context_window: int | None = None,
                 backoff_initial: float = 1.0, backoff_max: float = 30.0, images: bool | None = None):
        """`images`: whether the model takes images (default: OpenAI's vision models by name)."""
        self.model = model
        self.api_model = pricing.bare_model(model)
        self.price, self.price_help = pricing.lookup(model), pricing.price_help(model)
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if _is_openai(self.base_url):
                raise BackendError("no API key: set OPENAI_API_KEY or pass --api-key-file FILE (or run offline with "
                                   "--model hf:smollm2)")
            key = NO_KEY_PLACEHOLDER
        self.timeout, self.max_retries = timeout, max_retries
        self.context_window = context_window or pricing.context_window(model) or DEFAULT_CONTEXT
        self._stream_usage = True  # cleared if a server refuses stream_options
        self._wait = _WaitRetryAfter(backoff_initial, backoff_max)
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=0)
        if images is None:
            images = (_is_openai(self.base_url) and self.api_model.startswith(VISION_MODELS)
                      and not self.api_model.startswith(("o1-mini", "o1-preview", "o3-mini")))
        self.capabilities = Capabilities(images=images)

    # -- the Backend protocol -------------------------------------------------------------------------

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        sent = len(images_sent(messages)) if self.capabilities.images else 0
        return tokens.count_request(messages, tools, self.api_model) + IMAGE_TOKENS * sent

    def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
               max_tokens: int | None = None, temperature: float | None = None,
               **guides: Any) -> Iterator[StreamEvent]:
        estimate = self.count_prompt_tokens(messages, tools)
        start = time.perf_counter()
        request = {**self._request(messages, tools, max_tokens, temperature), "stream": True}
        chunks = self._open_stream(request)
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish, raw_usage, model, n = None, None, None, 0
        try:
            for chunk in chunks:
                n += 1
                model = chunk.model or model
                if chunk.usage:  # its own final chunk at OpenAI; the finishing chunk elsewhere
                    raw_usage = chunk.usage
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta and delta.content:
                        text.append(delta.content)
                        yield TextDelta(text=delta.content)
                    for tc in (delta.tool_calls or []) if delta else []:
                        acc = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                        name = tc.function.name if tc.function else None
                        args = (tc.function.arguments if tc.function else None) or ""
                        acc["id"] = tc.id or acc["id"]
                        acc["name"] += name or ""
                        acc["arguments"] += args
                    finish = choice.finish_reason or finish
        except openai.APIConnectionError as e:  # the SDK wraps a connection dropped mid-read
            cause = e.__cause__ or e.__context__ or e
            raise BackendError(f"the stream from {self.base_url} was cut off mid-way after {n} chunks "
                               f"({type(cause).__name__}: {cause})") from None
        except openai.APIError as e:  # an error event inside the stream
            raise self._error(e, attempts=1) from None
        except Exception as e:  # the connection broke while reading (transport errors the SDK let through)
            raise BackendError(f"the stream from {self.base_url} was cut off mid-way after {n} chunks "
                               f"({type(e).__name__}: {e})") from None
        if finish is None:  # the server closed the stream without finishing the message
            raise BackendError(f"the stream from {self.base_url} was cut off mid-way after {n} chunks "
                               f"(no finish_reason): the reply is incomplete, try again")
        tool_calls = [ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"])
                      for i, c in sorted(calls.items())]
        message = Message(role="assistant", content="".join(text) or None, tool_calls=tool_calls)
        usage = self._usage(raw_usage, estimate, message, time.perf_counter() - start)
        # A server without tool support (or its model) may answer with ```python blocks: calls too.
        yield Done(reply=with_text_calls(Reply(message=message, usage=usage, finish_reason=finish, model=model), tools))

    # -- requests, retries, errors --------------------------------------------------------------------

    def _request(self, messages: list[Message], tools: list[dict[str, Any]] | None,
                 max_tokens: int | None, temperature: float | None) -> dict[str, Any]:
        wire = with_images(messages) if self.capabilities.images else [m.to_openai() for m in messages]
        req: dict[str, Any] = {"model": self.api_model, "messages": wire}
        if tools:
            req["tools"] = tools
        if max_tokens is not None:
            # OpenAI's reasoning models refuse max_tokens; other servers often know only max_tokens.
            req["max_completion_tokens" if _is_openai(self.base_url) else "max_tokens"] = max_tokens
        if temperature is not None:
            req["temperature"] = temperature
        return req

    def _create(self, request: dict[str, Any]) -> Any:
        """One SDK call under tenacity's retry policy; SDK errors propagate (with the attempt count)."""
        retrying = Retrying(retry=retry_if_exception(_retryable), stop=stop_after_attempt(self.max_retries + 1),
                            wait=self._wait, reraise=True)
        try:
            return retrying(self.client.chat.completions.create, **request)
        except openai.APIError as e:
            e.kernelchat_attempts = retrying.statistics.get("attempt_number", 1)  # type: ignore[attr-defined]
            raise

    def _call(self, request: dict[str, Any]) -> Any:
        try:
            return self._create(request)
        except openai.APIError as e:
            raise self._error(e) from None

    def _open_stream(self, request: dict[str, Any]) -> Any:
        if self._stream_usage:
            try:
                return self._create({**request, "stream_options": {"include_usage": True}})
            except openai.BadRequestError:
                # A server that refuses stream_options: stream without usage (we fall back to estimates).
                self._stream_usage = False
            except openai.APIError as e:
                raise self._error(e) from None
        return self._call(request)

    def _usage(self, raw: Any, estimate: int, message: Message, seconds: float) -> Usage:
        """The server's usage, sanitised; our own counts where it reported none (so budgets still see
        the request) or nonsense."""
        own = tokens.count_text((message.content or "") + "".join(c.name + c.arguments for c in message.tool_calls),
                                self.api_model)
        prompt = _reported(getattr(raw, "prompt_tokens", None), "prompt_tokens", estimate)
        completion = _reported(getattr(raw, "completion_tokens", None), "completion_tokens", own)
        cached = _reported(getattr(getattr(raw, "prompt_tokens_details", None), "cached_tokens", None),
                           "cached_tokens", 0)
        reasoning = _reported(getattr(getattr(raw, "completion_tokens_details", None), "reasoning_tokens", None),
                              "reasoning_tokens", 0)
        cost = pricing.cost_usd(self.model, prompt, completion, cached)  # 0 for unknown / local models
        return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
                     reasoning_tokens=reasoning, cost_usd=cost, seconds=seconds, estimated_prompt_tokens=estimate)

    def _error(self, e: openai.APIError, attempts: int | None = None) -> BackendError:
        url, detail = self.base_url, _detail(e)
        attempts = attempts or getattr(e, "kernelchat_attempts", 1)
        tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}"
        if isinstance(e, openai.APITimeoutError):
            return BackendError(f"no answer from {url} within {self.timeout:g} s{tries}")
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e.__context__
            why = f" ({type(cause).__name__}: {cause})" if cause else ""
            return BackendError(f"cannot reach the server at {url}{tries}{why}")
        if isinstance(e, openai.AuthenticationError):
            return BackendError(f"the API key was rejected by {url} (401): check OPENAI_API_KEY or --api-key-file")
        if isinstance(e, openai.PermissionDeniedError):
            return BackendError(f"access denied by {url} (403): {detail}")
        if isinstance(e, openai.NotFoundError):
            return BackendError(f"unknown model {self.api_model!r} at {url} (404: {detail}); "
                                f"`kernelchat models` lists the ones available")
        if isinstance(e, openai.RateLimitError):
            if _code(e) == "insufficient_quota":
                return BackendError(f"the account's quota at {url} is exhausted (429): {detail}")
            return BackendError(f"rate limited by {url} (429){tries}: {detail}")
        if isinstance(e, openai.APIStatusError):
            if _code(e) == "context_length_exceeded":
                return BackendError(f"the conversation is longer than {self.api_model}'s context window: {detail}")
            if e.status_code >= 500:
                return BackendError(f"the server at {url} failed with HTTP {e.status_code}{tries}: {detail}")
            return BackendError(f"the server at {url} rejected the request (HTTP {e.status_code}): {detail}")
        return BackendError(f"the request to {url} failed: {detail}")


def images_sent(messages: list[Message]) -> list[tuple[int, Any]]:
    """(message index, figure) of the images sent with a request: the latest MAX_IMAGES_SENT of the
    tool results' images of a type the API takes."""
    found = [(i, f) for i, m in enumerate(messages) if m.role == "tool" for f in m.images if f.mime in SENT_IMAGE_TYPES]
    return found[-MAX_IMAGES_SENT:]


def with_images(messages: list[Message]) -> list[dict[str, Any]]:
    """The messages for the API, each run of tool results followed by a user message holding their
    images (a tool message takes only text, and the results must follow their calls at once)."""
    sent = images_sent(messages)
    out: list[dict[str, Any]] = []
    pending: list[Any] = []
    for i, m in enumerate(messages):
        if pending and m.role != "tool":
            out.append(image_message(pending))
            pending = []
        out.append(m.to_openai())
        pending += [f for j, f in sent if j == i]
    if pending:
        out.append(image_message(pending))
    return out


def image_message(figures: list[Any]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "The images the tool results above returned:"}]
    parts += [{"type": "image_url", "image_url": {"url": f"data:{f.mime};base64,{f.data}", "detail": "low"}}
              for f in figures]
    return {"role": "user", "content": parts}


def _reported(value: Any, field: str, fallback: int) -> int:
    """A token count from the server's usage, made safe to add up: a whole number is taken as billed
    (even above the max_tokens asked for: the budget's next check stops the run); a negative one is
    0; anything else (a string, NaN, a fraction, an absurd size) gives way to `fallback`, our count."""
    if value is None:
        return fallback
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value > MAX_REPORTED_TOKENS:
        log.warning("the server reported usage %s=%.40r, which is not a token count: using %d", field, value,
                    fallback)
        return fallback
    if value < 0:
        log.warning("the server reported usage %s=%d, a negative count: using 0", field, value)
        return 0
    return value


def _detail(e: openai.APIError) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body)
    msg = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
    return str(msg or getattr(e, "message", "") or type(e).__name__).strip().rstrip(".")

