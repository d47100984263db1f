"""The configuration file: defaults for the command line, in `config_dir()/config.toml`
(by default ~/.config/kernelchat/config.toml).

    model = "gpt-4o-mini"
    base_url = "http://localhost:8000/v1"
    keep_alive = 300          # seconds a local model stays loaded after a command (0: not at all)
    [budget]
    max_usd = 0.50
    max_steps = 10
    [sandbox]
    network = false
    memory_mb = 4096

Precedence: a command-line flag, then an environment variable (KERNELCHAT_MODEL, OPENAI_BASE_URL,
KERNELCHAT_GATEWAY_URL, KERNELCHAT_KEEP_ALIVE), then this file, then the built-in default. The file
is checked strictly: an unknown key or a value of the wrong type is one sentence naming the file and
the key (ValueError). It sets the flags' defaults, so the one shot, the terminal chat and `exec` see
it; `kernelchat run` takes its keep_alive, and its model (with base_url) for tasks that name none.
The Python API does not read it (`Chat()` without a model does follow KERNELCHAT_MODEL).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core.dirs import config_dir

# A key whose environment variable is set is left to it: the variable wins over the file.
ENV_OVER = {"model": "KERNELCHAT_MODEL", "base_url": "OPENAI_BASE_URL", "gateway": "KERNELCHAT_GATEWAY_URL",
            "keep_alive": "KERNELCHAT_KEEP_ALIVE"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BudgetConfig(Strict):
    max_steps: int | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    max_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class SandboxConfig(Strict):
    isolation: Literal["bwrap", "none", "gateway"] | None = None
    gateway: str | None = None
    network: bool | None = None
    gpu: bool | None = None
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    memory_mb: int | None = Field(default=None, gt=0)
    disk_mb: int | None = Field(default=None, gt=0)


class ConfigFile(Strict):
    model: str | None = None
    base_url: str | None = None
    keep_alive: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # seconds; 0: no resident model
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)


def config_path() -> Path:
    return config_dir() / "config.toml"


def load_config(path: Path | None = None) -> ConfigFile:
    """The configuration file, checked; an absent file is an empty configuration. A bad one raises
    ValueError with one sentence: the file, the key, and what to do."""
    path = path or config_path()
    if not path.is_file():
        return ConfigFile()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the configuration file ({e}); fix or remove it") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e}); fix or remove the configuration file") from None
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(map(str, err["loc"])) or "the file"
        if err["type"] == "extra_forbidden":
            raise ValueError(f"{path}: unknown key {key!r}; remove it or fix its spelling (the README's "
                             "Configuration section lists the keys)") from None
        msg = err["msg"][0].lower() + err["msg"][1:]
        raise ValueError(f"{path}: {key}: {msg}, got {err['input']!r}; fix it in the configuration file") from None


def defaults(config: ConfigFile) -> dict[str, Any]:
    """The file's values as argparse destinations, less those an environment variable overrides."""
    values = {"model": config.model, "base_url": config.base_url, "keep_alive": config.keep_alive,
              **config.budget.model_dump(), **config.sandbox.model_dump()}
    return {k: v for k, v in values.items()
            if v is not None and not (k in ENV_OVER and os.environ.get(ENV_OVER[k]))}


def apply(parser: argparse.ArgumentParser, config: ConfigFile, keys: set[str] | None = None) -> None:
    """Make the file's values `parser`'s defaults (flags still win); `keys`: only these destinations."""
    values = {k: v for k, v in defaults(config).items() if keys is None or k in keys}
    # config_model: so that --resume can tell the file's default from a --model given on the line
    parser.set_defaults(**values, **({"config_model": values["model"]} if "model" in values else {}))


SANDBOX_KEYS = set(SandboxConfig.model_fields)
