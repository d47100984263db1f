"""Prices (USD per 1M tokens) and context windows per model, with a user override file on top.

The built-in table is agent/data/prices.json. A user file (KERNELCHAT_PRICES=path, else prices.json in
$XDG_CONFIG_HOME/kernelchat, by default ~/.config/kernelchat) is merged over it field by field, so a user
can fix one price or add a model without copying the table. Dated names match their family by longest prefix. A money budget
(max_usd) needs a price: for a model without one it is refused, with these instructions.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.core.dirs import config_dir



class Price(BaseModel):
    """USD per 1M tokens; cached_input None means no cache discount."""

    input: float = 0.0
    cached_input: float | None = None
    output: float = 0.0
    context_window: int | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached = min(cached_tokens, prompt_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt_tokens - cached) * self.input + cached * cached_rate
                + completion_tokens * self.output) / 1_000_000


def user_prices_path() -> Path:
    env = os.environ.get("KERNELCHAT_PRICES")
    return Path(env).expanduser() if env else config_dir() / "prices.json"


def _models_of(data: Any, source: str) -> dict[str, dict[str, Any]]:
    models = data.get("models", data) if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"{source}: expected {{\"models\": {{name: {{input, cached_input, output, context_window}}}}}}")
    return {k: v for k, v in models.items() if not k.startswith("_")}


@lru_cache(maxsize=8)
def _load(user_path: str, user_mtime: float | None) -> dict[str, Price]:
    builtin = json.loads(resources.files("agent").joinpath("data/prices.json").read_text())
    merged = _models_of(builtin, "agent/data/prices.json")
    if user_mtime is not None:
        try:
            user = _models_of(json.loads(Path(user_path).read_text()), user_path)
        except json.JSONDecodeError as e:
            raise ValueError(f"the price file {user_path} is not valid JSON ({e.msg}, line {e.lineno})") from None
        for name, fields in user.items():
            merged[name] = {**merged.get(name, {}), **fields}  # field by field over the built-in entry
    try:
        return {name: Price.model_validate(fields) for name, fields in merged.items()}
    except ValidationError as e:
        raise ValueError(f"bad price entry in {user_path}: {e.errors()[0]['loc']} {e.errors()[0]['msg']}") from None


def prices() -> dict[str, Price]:
    """The merged table (re-read when the user file changes)."""
    p = user_prices_path()
    mtime = p.stat().st_mtime if p.is_file() else None
    return _load(str(p), mtime)


def bare_model(model: str) -> str:
    """Drop an "openai:" provider prefix; keep "hf:" (it names a local model)."""
    return model.split(":", 1)[1] if model.startswith(("openai:", "oai:")) else model


def price_help(model: str) -> str:
    """Where the price of `model` can be given (for the refusal of a money budget without one)."""
    return (f"add it to {user_prices_path()} (or the file KERNELCHAT_PRICES names) as "
            f'{{"models": {{"{bare_model(model)}": {{"input": USD, "output": USD}}}}}} per 1M tokens')


def is_local_model(model: str) -> bool:
    """A model that runs on this machine (in process or in a resident server), and so costs nothing:
    hf:, ollama:, a .gguf file, a model folder. The one place that decides it."""
    return (model.startswith(("hf:", "ollama:")) or model.endswith(".gguf")
            or os.path.isdir(os.path.expanduser(model)))


def lookup(model: str) -> Price | None:
    """The entry with the longest name that prefixes `model`; unknown: None. Models on this machine
    (hf:, local:, a .gguf file, a model folder) cost 0, so any money budget holds for them."""
    table, name = prices(), bare_model(model)
    best = max((k for k in table if name.startswith(k)), key=len, default=None)
    if best is not None:
        return table[best]
    return Price() if is_local_model(name) else None


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
    """Money for one request; 0 for models without a known price (local or custom servers)."""
    price = lookup(model)
    return price.cost(prompt_tokens, completion_tokens, cached_tokens) if price else 0.0


def context_window(model: str, default: int | None = None) -> int | None:
    price = lookup(model)
    return price.context_window if price and price.context_window else default
