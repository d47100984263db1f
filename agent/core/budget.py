"""Budgets (tokens, money, steps, time) enforced before each request, and context-window fitting.

The check runs BEFORE a request: if even the estimated prompt plus a minimal completion could cross a
limit, BudgetExceeded is raised and nothing is sent; otherwise the completion's max_tokens is clipped to
what remains. So the only overshoot possible is the drift between our pre-flight estimate and the
server's count, within one clipped completion (a server that bills more than it was asked for is
counted as it reports, and the next check stops). A cell gets at most the time the time budget leaves;
the time budget counts time in model requests and cells (and replays) only, not idle time.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

from pydantic import BaseModel, Field

from agent.core.messages import Message, Usage


class Price(Protocol):
    """What a money budget needs of a model's price (agent.models.pricing gives them)."""

    output: float  # USD per 1M completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for a request of this size."""


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


class BudgetTracker:
    """Records the Usage of every request and checks the next one against the Budget.

    `price` is the model's (None: unknown). A money budget needs a price: setting one for a model
    without a price, or switching to such a model under one, raises ValueError at once (saying what
    `price_help` says) rather than letting the budget go unenforced. Local models have a price of zero,
    so any max_usd holds for them.
    """

    def __init__(self, budget: Budget | None = None, price: Price | None = None, model: str = "?",
                 price_help: str | None = None):
        self.usages: list[Usage] = []
        # Time counts only while busy (a model request, a cell, a replay), never idle at the prompt.
        self._busy_seconds = 0.0
        self._busy_since: float | None = None
        self._busy_depth = 0
        self._price, self._model = price, model
        self.price_help = price_help
        self.budget = budget or Budget()

    @property
    def budget(self) -> Budget:
        return self._budget

    @budget.setter
    def budget(self, budget: Budget) -> None:
        require_price(budget, self._price, self._model, self.price_help)
        self._budget = budget

    @property
    def price(self) -> Price | None:
        return self._price

    def set_model(self, model: str, price: Price | None, price_help: str | None = None) -> None:
        """The model requests go to from now on; refused (nothing changes) if the budget needs its price
        (`price_help`: where one can be given)."""
        require_price(self.budget, price, model, price_help)
        self._model, self._price, self.price_help = model, price, price_help

    @property
    def spent(self) -> Usage:
        return sum(self.usages, Usage())

    @property
    def steps(self) -> int:
        return len(self.usages)

    @property
    def elapsed(self) -> float:
        """Seconds spent in model requests and cells (replays included), what max_seconds limits:
        time waiting at the prompt or reading an answer does not count."""
        running = time.monotonic() - self._busy_since if self._busy_since is not None else 0.0
        return self._busy_seconds + running

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count the time inside as spent; nested spans (a replay within a cell) count once."""
        if self._busy_depth == 0:
            self._busy_since = time.monotonic()
        self._busy_depth += 1
        try:
            yield
        finally:
            self._busy_depth -= 1
            if self._busy_depth == 0 and self._busy_since is not None:
                self._busy_seconds += time.monotonic() - self._busy_since
                self._busy_since = None

    def seconds_left(self) -> float | None:
        """What the time budget leaves (never negative); None without one."""
        b = self.budget
        return None if b.max_seconds is None else max(b.max_seconds - self.elapsed, 0.0)

    def record(self, usage: Usage) -> None:
        self.usages.append(usage)

    def check(self, estimated_prompt_tokens: int, completion_allowance: int, *, min_completion: int = 16) -> int:
        """Raise BudgetExceeded if the request could cross a limit; else return the completion's
        max_tokens, clipped so that prompt + completion stays within every limit."""
        b, spent, price = self.budget, self.spent, self._price
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
        if b.max_usd is not None and price is None:  # set_model refuses this; a backstop all the same
            raise BudgetExceeded(f"money budget: no price is known for {self._model!r}, so max_usd "
                                 f"cannot be enforced; nothing was sent")
        if b.max_usd is not None and price is not None:
            remaining_usd = b.max_usd - spent.cost_usd
            prompt_usd = price.cost(estimated_prompt_tokens, 0)  # pessimistic: no cache discount
            per_output = price.output / 1_000_000
            # the epsilon keeps float error ($0.005 / $0.00001 = 499.999...) from costing a token
            if per_output:
                affordable = math.floor((remaining_usd - prompt_usd) / per_output + 1e-9)
            else:  # free output (a local model): only the prompt's price can cross the limit
                affordable = allowed if prompt_usd <= remaining_usd else -1
            if affordable < floor:
                raise BudgetExceeded(
                    f"money budget: this request costs about ${prompt_usd + floor * per_output:.4f} at least, but "
                    f"only ${max(remaining_usd, 0):.4f} of ${b.max_usd:g} remain (${spent.cost_usd:.4f} spent)")
            allowed = min(allowed, affordable)
        return allowed


def require_price(budget: Budget, price: Price | None, model: str, help: str | None = None) -> None:
    """ValueError if `budget` has a money limit and `model` has no price to enforce it with
    (`help`: where a price can be given)."""
    if budget.max_usd is None or price is not None:
        return
    raise ValueError(f"max_usd needs the price of {model!r}, and kernelchat does not know it: "
                     f"{help or 'give its price'}, or drop max_usd")


def elision_marker(chars: int, newest: bool = False) -> str:
    if newest:
        return (f"[elided: {chars:,} characters of tool output, too long for the context window; "
                f"print less (a summary, a head, a count) to see it]")
    return f"[elided: {chars:,} characters of old tool output to fit the context window]"


def fit_context(messages: list[Message], count: Callable[[list[Message]], int], context_window: int,
                reserve: int = 0, keep_last: int = 1) -> list[Message]:
    """Return the conversation fitted into `context_window - reserve` tokens.

    Old tool outputs are elided first, oldest first (their content replaced by a marker, the message
    kept so the call/result pairing stays valid); the newest `keep_last` tool outputs go last, only
    when nothing else makes it fit (one huge output must not fail every later turn). Nothing is ever
    dropped silently: if it still does not fit, ContextOverflow says by how much.
    """
    limit = context_window - reserve
    total = count(messages)
    if total <= limit:
        return messages
    out = list(messages)
    tool_idx = [i for i, m in enumerate(out) if m.role == "tool"]
    newest = set(tool_idx[len(tool_idx) - keep_last:] if keep_last > 0 else [])
    for i in [i for i in tool_idx if i not in newest] + [i for i in tool_idx if i in newest]:
        old = out[i]
        text = old.content or ""
        new = old.model_copy(update={"content": elision_marker(len(text), newest=i in newest)})
        if len(text) <= len(new.content or ""):
            continue  # already short: eliding would not help
        # Per-message counts are additive, so the change of one message is its own difference.
        total += count([new]) - count([old])
        out[i] = new
        if total <= limit:
            return out
    raise ContextOverflow(
        f"the conversation needs about {total:,} tokens even with every tool output elided, but the context "
        f"window leaves {limit:,} ({context_window:,} minus {reserve:,} reserved for the answer); "
        f"shorten the conversation or use a model with a larger context window")
