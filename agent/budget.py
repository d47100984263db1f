"""Budgets (tokens, money, steps, time) enforced before each request, and context-window fitting.

The check runs BEFORE a request: if even the estimated prompt plus a minimal completion could cross a
limit, BudgetExceeded is raised and nothing is sent; otherwise the completion's max_tokens is clipped to
what remains. So the only overshoot possible is the drift between our pre-flight estimate and the
server's count, within one clipped completion.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from pydantic import BaseModel, Field, PrivateAttr

from .messages import Message, Usage
from .pricing import Price


class BudgetExceeded(RuntimeError):
    """A request would cross a budget limit; it was not sent."""


class ContextOverflow(RuntimeError):
    """The conversation does not fit the model's context window even with old tool outputs elided."""


class Budget(BaseModel):
    """Limits for one run; None means unlimited."""

    max_tokens: int | None = Field(default=None, gt=0, description="prompt + completion tokens, all requests")
    max_usd: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="model requests")
    max_seconds: float | None = Field(default=None, gt=0)


class BudgetTracker(BaseModel):
    """Records the Usage of every request and checks the next one against the Budget."""

    budget: Budget = Field(default_factory=Budget)
    usages: list[Usage] = Field(default_factory=list)
    _started: float = PrivateAttr(default_factory=time.monotonic)

    @property
    def spent(self) -> Usage:
        return sum(self.usages, Usage())

    @property
    def steps(self) -> int:
        return len(self.usages)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def record(self, usage: Usage) -> None:
        self.usages.append(usage)

    def check(self, estimated_prompt_tokens: int, completion_allowance: int,
              price: Price | None = None, *, min_completion: int = 16) -> int:
        """Raise BudgetExceeded if the request could cross a limit; else return the completion's
        max_tokens, clipped so that prompt + completion stays within every limit."""
        b, spent = self.budget, self.spent
        allowed = completion_allowance
        floor = min(min_completion, completion_allowance)  # a shorter completion is not worth sending
        if b.max_steps is not None and self.steps >= b.max_steps:
            raise BudgetExceeded(f"step budget reached: {self.steps} of {b.max_steps} model requests used")
        if b.max_seconds is not None and self.elapsed >= b.max_seconds:
            raise BudgetExceeded(f"time budget reached: {self.elapsed:.1f} s of {b.max_seconds:g} s used")
        if b.max_tokens is not None:
            remaining = b.max_tokens - spent.total_tokens
            if estimated_prompt_tokens + floor > remaining:
                raise BudgetExceeded(
                    f"token budget: this request needs about {estimated_prompt_tokens:,} prompt tokens + at least "
                    f"{floor} for the answer, but only {max(remaining, 0):,} of {b.max_tokens:,} remain "
                    f"({spent.total_tokens:,} spent)")
            allowed = min(allowed, remaining - estimated_prompt_tokens)
        if b.max_usd is not None and price is not None:
            remaining_usd = b.max_usd - spent.cost_usd
            prompt_usd = price.cost(estimated_prompt_tokens, 0)  # pessimistic: no cache discount
            per_output = price.output / 1_000_000
            # the epsilon keeps float error ($0.005 / $0.00001 = 499.999...) from costing a token
            affordable = math.floor((remaining_usd - prompt_usd) / per_output + 1e-9) if per_output else allowed
            if affordable < floor:
                raise BudgetExceeded(
                    f"money budget: this request costs about ${prompt_usd + floor * per_output:.4f} at least, but "
                    f"only ${max(remaining_usd, 0):.4f} of ${b.max_usd:g} remain (${spent.cost_usd:.4f} spent)")
            allowed = min(allowed, affordable)
        return allowed


def elision_marker(chars: int) -> str:
    return f"[elided: {chars:,} characters of old tool output to fit the context window]"


def fit_context(messages: list[Message], count: Callable[[list[Message]], int], context_window: int,
                reserve: int = 0, keep_last: int = 1) -> list[Message]:
    """Return the conversation fitted into `context_window - reserve` tokens.

    Old tool outputs are elided first, oldest first (their content replaced by a marker, the message
    kept so the call/result pairing stays valid); the newest `keep_last` tool outputs are kept. Nothing is
    ever dropped silently: if it still does not fit, ContextOverflow says by how much.
    """
    limit = context_window - reserve
    total = count(messages)
    if total <= limit:
        return messages
    out = list(messages)
    tool_idx = [i for i, m in enumerate(out) if m.role == "tool"]
    candidates = tool_idx[:-keep_last] if keep_last > 0 else tool_idx
    for i in candidates:
        old = out[i]
        text = old.content or ""
        new = old.model_copy(update={"content": elision_marker(len(text))})
        if len(text) <= len(new.content or ""):
            continue  # already short: eliding would not help
        # Per-message counts are additive, so the change of one message is its own difference.
        total += count([new]) - count([old])
        out[i] = new
        if total <= limit:
            return out
    raise ContextOverflow(
        f"the conversation needs about {total:,} tokens even with old tool outputs elided, but the context "
        f"window leaves {limit:,} ({context_window:,} minus {reserve:,} reserved for the answer); "
        f"shorten the conversation or use a model with a larger context window")
