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
    [mcp_servers.files]       # an MCP server whose tools the chat offers (tools/mcp_specs.py)
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/home/me/notes"]

Precedence: a command-line flag, then an environment variable (KERNELCHAT_MODEL, OPENAI_BASE_URL,
KERNELCHAT_GATEWAY_URL, KERNELCHAT_KEEP_ALIVE), then this file, then the built-in default. The file
is checked strictly: an unknown key or a value of the wrong type is one sentence naming the file and
the key (ValueError). It sets the flags' defaults, so the one shot, the terminal chat and `exec` see
it; `kernelchat run` takes its keep_alive, its model (with base_url) for tasks that name none, and
its [sandbox] as the run's sandbox (which a task file may only tighten).
The Python API does not read it (`Chat()` without a model does follow KERNELCHAT_MODEL).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.core.dirs import config_dir
from sandbox import MAX_LIMITS
from tools.mcp_specs import MCPServerSpec, check_specs

MAX_CONFIG_BYTES = 1 << 20  # a configuration file larger than this is refused before it is read

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
    """KernelOptions fields (`gateway` is gateway_url, as the --gateway flag); None: not set, so the
    KernelOptions default (sandbox/options.py, where each is written once) holds."""

    isolation: Literal["bwrap", "none", "gateway"] | None = None
    gateway: str | None = None
    network: bool | None = None
    gpu: bool | None = None
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    memory_mb: int | None = Field(default=None, gt=0, le=MAX_LIMITS["memory_mb"])
    disk_mb: int | None = Field(default=None, gt=0, le=MAX_LIMITS["disk_mb"])


class ConfigFile(Strict):
    model: str | None = None
    base_url: str | None = None
    keep_alive: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # seconds; 0: no resident model
    images: bool | None = None  # the server's model takes images (--images)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    mcp_servers: dict[str, MCPServerSpec] = Field(default_factory=dict)  # offered in the chat and `run`

    @field_validator("mcp_servers")
    @classmethod
    def _server_names(cls, v: dict[str, MCPServerSpec]) -> dict[str, MCPServerSpec]:
        return check_specs(v, "[mcp_servers]")


def config_path() -> Path:
    return config_dir() / "config.toml"


def load_config(path: Path | None = None) -> ConfigFile:
    """The configuration file, checked; an absent file is an empty configuration. A bad one raises
    ValueError with one sentence: the file, the key, and what to do."""
    path = path or config_path()
    if not path.is_file():
        return ConfigFile()
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # never more: a huge file is refused, not loaded
    except OSError as e:
        raise ValueError(f"{path}: cannot read the configuration file ({e}); fix or remove it") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: the configuration file is over {MAX_CONFIG_BYTES:,} bytes, more than "
                         "settings take; fix or remove it")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: cannot read the configuration file ({e}); fix or remove it") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e}); fix or remove the configuration file") from None
    except ValueError:  # an integer of more digits than Python converts
        raise ValueError(f"{path}: a number in it has too many digits to read; fix or remove the "
                         "configuration file") from None
    except RecursionError:
        raise ValueError(f"{path}: its TOML is nested too deeply to read; fix or remove the "
                         "configuration file") from None
    except MemoryError:
        raise ValueError(f"{path}: not enough memory to read the configuration file; fix or remove it") from None
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(map(str, err["loc"])) or "the file"
        if err["type"] == "extra_forbidden":
            raise ValueError(f"{path}: unknown key {_short(key)}; remove it or fix its spelling "
                             "(docs/configuration.md lists the keys)") from None
        msg = err["msg"][0].lower() + err["msg"][1:]
        raise ValueError(f"{path}: {_cut(key)}: {msg}, got {_short(err['input'])}; fix it in the configuration file") from None


def _short(value: Any, width: int = 80) -> str:
    """`value` as it is shown in an error: its repr, cut (a 1 MB string, or a value nested so deep
    that repr itself fails, is no sentence)."""
    try:
        return _cut(repr(value), width)
    except (RecursionError, ValueError):  # ValueError: an int of more digits than Python prints
        return f"a {type(value).__name__} too large to show"


def _cut(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def defaults(config: ConfigFile) -> dict[str, Any]:
    """The file's values as argparse destinations, less those an environment variable overrides
    (a `gateway` so overridden still asks for a gateway: the variable's)."""
    values = {"model": config.model, "base_url": config.base_url, "keep_alive": config.keep_alive,
              "images": config.images,
              **config.budget.model_dump(), **config.sandbox.model_dump(), "mcp_servers": config.mcp_servers or None}
    out = {k: v for k, v in values.items() if v is not None and not (k in ENV_OVER and os.environ.get(ENV_OVER[k]))}
    if config.sandbox.gateway and "gateway" not in out and config.sandbox.isolation is None:
        out["isolation"] = "gateway"
    return out


def apply(parser: argparse.ArgumentParser, config: ConfigFile, keys: set[str] | None = None) -> None:
    """Make the file's values `parser`'s defaults (flags still win); `keys`: only these destinations."""
    values = {k: v for k, v in defaults(config).items() if keys is None or k in keys}
    # config_model: so that --resume can tell the file's default from a --model given on the line
    parser.set_defaults(**values, **({"config_model": values["model"]} if "model" in values else {}))


SANDBOX_KEYS = set(SandboxConfig.model_fields)
