"""Which MCP servers a chat uses: `[mcp_servers.NAME]` in config.toml or a task file, the common
`mcpServers` JSON file (Claude Desktop, Cursor; VS Code's `servers`), or `Chat(mcp_servers=...)`.

    [mcp_servers.files]
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/home/me/notes"]
    env = { API_TOKEN = "${NOTES_TOKEN}" }   # ${VAR}: from your environment when the server starts

    [mcp_servers.search]
    url = "https://mcp.example.com/mcp"
    headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }

A secret reaches a server by its environment (or an HTTP header) only, never its command line: a
stdio server gets the SDK's short list of safe variables (HOME, PATH, ...) plus its `env`, not your
whole environment, and `${VAR}` is expanded in `env` and `headers` values only."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # a server's name starts its tools' names: server__tool
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_FILE_BYTES = 1 << 20
# Keys other clients write in their mcpServers entries that mean nothing here.
FOREIGN_KEYS = {"disabled", "autoApprove", "alwaysAllow", "description", "timeout_ms", "transportType"}


class MCPServerSpec(BaseModel):
    """One MCP server: a command run over stdio, or a streamable-HTTP `url`."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)  # ${VAR} expanded from your environment
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)  # ${VAR} expanded from your environment
    type: Literal["stdio", "http", "streamable-http", "streamableHttp"] | None = None  # as VS Code writes it
    timeout: float = Field(default=120.0, gt=0, le=86_400, allow_inf_nan=False)  # seconds a call may take
    startup_timeout: float = Field(default=30.0, gt=0, le=3_600, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_transport(self) -> "MCPServerSpec":
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (a server run over stdio) or `url` (streamable HTTP), not "
                             + ("both" if self.command else "neither"))
        if self.command is not None and not self.command.strip():
            raise ValueError("`command` is empty")
        if self.url is not None and not re.match(r"^https?://[^\s/]+", self.url):
            raise ValueError(f"`url` must be an http:// or https:// address, got {self.url[:100]!r}")
        if self.type == "stdio" and self.url or self.type not in (None, "stdio") and self.command:
            raise ValueError(f"type {self.type!r} does not match the {'url' if self.url else 'command'} given")
        if any("\x00" in s for s in [self.command or "", *self.args, *self.env, *self.env.values()]):
            raise ValueError("a NUL character in the command, its arguments or its environment")
        return self

    def resolved_env(self, name: str) -> dict[str, str]:
        return {k: expand(name, f"env {k}", v) for k, v in self.env.items()}

    def resolved_headers(self, name: str) -> dict[str, str]:
        return {k: expand(name, f"header {k}", v) for k, v in self.headers.items()}

    def shown(self) -> str:
        """What it runs or where it connects, for /tools and errors (no env, no header values)."""
        if self.url:
            return self.url.split("?")[0]
        return " ".join([self.command or "", *self.args])[:200]


def expand(server: str, where: str, value: str) -> str:
    """`${VAR}` from the environment; a variable that is not set is one sentence naming it."""
    def var(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise ValueError(f"MCP server {server!r}: {where} uses ${{{m.group(1)}}}, which is not set in your "
                             "environment; set it, or write the value in the server's settings")
        return os.environ[m.group(1)]
    return VARIABLE.sub(var, value)


def check_specs(raw: Any, source: str) -> dict[str, MCPServerSpec]:
    """Server settings by name, checked; ValueError: one sentence naming `source`, the server, the key."""
    if isinstance(raw, dict) and all(isinstance(v, MCPServerSpec) for v in raw.values()):
        specs = dict(raw)
    else:
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: the MCP servers must be a table of NAME = settings, got {type(raw).__name__}")
        specs = {}
        for name, value in raw.items():
            try:
                specs[name] = value if isinstance(value, MCPServerSpec) else MCPServerSpec.model_validate(value)
            except ValidationError as e:
                err = e.errors()[0]
                key = ".".join(map(str, err["loc"]))
                what = f"unknown key {key!r}" if err["type"] == "extra_forbidden" else (
                    f"{key}: {err['msg']}" if key else err["msg"].removeprefix("Value error, "))
                raise ValueError(f"{source}: MCP server {str(name)[:40]!r}: {what}") from None
    for name in specs:
        if not NAME.match(str(name)):
            raise ValueError(f"{source}: MCP server name {str(name)[:40]!r} must be 1-32 letters, digits, '_' or '-' "
                             "(it starts the names of its tools, NAME__tool)")
    return specs


def load_mcp_file(path: str | Path) -> dict[str, MCPServerSpec]:
    """The `mcpServers` (or VS Code's `servers`) object of a JSON file, checked."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the MCP servers file ({e.strerror or e})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"{path}: the MCP servers file is over {MAX_FILE_BYTES:,} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); an MCP servers file is "
                         '{"mcpServers": {"NAME": {"command": ..., "args": [...]}}}') from None
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers", data.get("servers")), dict):
        raise ValueError(f'{path}: no "mcpServers" object; an MCP servers file is '
                         '{"mcpServers": {"NAME": {"command": ..., "args": [...]}}}')
    servers = data.get("mcpServers", data.get("servers"))
    entries = {name: ({k: v for k, v in entry.items() if k not in FOREIGN_KEYS} if isinstance(entry, dict) else entry)
               for name, entry in servers.items()
               if not (isinstance(entry, dict) and entry.get("disabled") is True)}
    return check_specs(entries, str(path))


def merge_specs(*sources: dict[str, MCPServerSpec]) -> dict[str, MCPServerSpec]:
    """Later sources win, server by server (a --mcp file over config.toml)."""
    out: dict[str, MCPServerSpec] = {}
    for specs in sources:
        out.update(specs)
    return out


__all__ = ["MCPServerSpec", "check_specs", "load_mcp_file", "merge_specs", "expand"]
