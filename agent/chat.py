"""`Chat`: the Python API, and the composition root. A `Session` (the conversation tree, the loop,
the kernel that follows the branch) with a model named by a string, its price, and the small-model
strategy for models without tool training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, Union

from pathlib import Path

from tools.mcp_specs import MCPServerSpec, check_specs, load_mcp_file

from agent.core.backend import Backend
from agent.core.loop import PLAIN
from agent.core.notebook_import import run_notebook
from agent.core.prompts import DEFAULT_SYSTEM
from agent.core.session import Session
from agent.core.store import ConversationFile
from agent.models import get_backend
from agent.smallmodel import (MAX_TOKENS_PER_STEP, SMALL_MODEL_SYSTEM, Examples, SmallModelStrategy,
                              SmallToolModelStrategy)

if TYPE_CHECKING:
    from tools.mcp_client import MCPServers

# Tool-trained models below this size get the small-model mode's variant for them: measured on
# Qwen2.5-Coder 0.5B and 1.5B (docs/models.md, "Small models"); larger ones were not measured here.
SMALL_TOOL_MODEL_PARAMETERS = 4_000_000_000

T = TypeVar("T")
MCPServersOption = Union[dict[str, Any], str, Path, None]


def mcp_specs(servers: MCPServersOption) -> dict[str, MCPServerSpec]:
    """`mcp_servers=` as checked settings: a {name: settings} dict, or an `mcpServers` JSON file."""
    if servers is None:
        return {}
    if isinstance(servers, (str, Path)):
        servers = load_mcp_file(servers)
    specs = check_specs(servers, "mcp_servers")
    for name, spec in specs.items():  # a ${VAR} that is not set: said before anything starts
        spec.resolved_env(name), spec.resolved_headers(name)
    return specs


def is_small(backend: Backend) -> bool:
    """Whether the small-model mode is on by default for a model: one without tool training, or a
    tool-trained one whose declared size is under SMALL_TOOL_MODEL_PARAMETERS."""
    caps = backend.capabilities
    return not caps.tools or (caps.parameters is not None and caps.parameters < SMALL_TOOL_MODEL_PARAMETERS)


def default_system(backend: Backend) -> str:
    """The system prompt a model gets unless one is given: the short one of the small-model mode for
    models without tool training, else the default (agent/core/prompts.py)."""
    return SMALL_MODEL_SYSTEM if not backend.capabilities.tools else DEFAULT_SYSTEM


# The prompts `default_system` gives: a conversation on one of them follows the model (/model).
DEFAULT_SYSTEMS = (DEFAULT_SYSTEM, SMALL_MODEL_SYSTEM)


class SmallModelKnob(Generic[T]):
    """A knob of the small-model strategy, read and set on the Chat (`chat.attempts = 1`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, chat: "Chat | None", owner: type | None = None) -> T:
        return self if chat is None else getattr(chat.small_model, self.name)  # type: ignore[return-value]

    def __set__(self, chat: "Chat", value: T) -> None:
        setattr(chat.small_model, self.name, value)


class Chat(Session):
    """A conversation with a model that runs Python in a sandboxed kernel.

    >>> chat = Chat()                       # hf:smollm2 offline, or gpt-4o-mini with OPENAI_API_KEY
    >>> chat("What is 2**100? Use Python.")
    >>> chat.edit(0, "What is 2**64?")      # a new branch; the kernel follows it

    The small-model mode's knobs (see SmallModelStrategy): `examples`, `ground_numbers`,
    `example_bonus`, `attempts`, `agree`; for small tool-trained models (SmallToolModelStrategy)
    `max_calls`, `max_repeats`, `resamples` and `fix_requests`.
    """

    examples: SmallModelKnob[Examples] = SmallModelKnob()
    ground_numbers: SmallModelKnob[bool] = SmallModelKnob()
    example_bonus: SmallModelKnob[float] = SmallModelKnob()
    attempts: SmallModelKnob[int] = SmallModelKnob()
    agree: SmallModelKnob[int] = SmallModelKnob()
    max_calls: SmallModelKnob[int] = SmallModelKnob()
    max_repeats: SmallModelKnob[int] = SmallModelKnob()
    resamples: SmallModelKnob[int] = SmallModelKnob()
    fix_requests: SmallModelKnob[int] = SmallModelKnob()

    def __init__(self, model: str | None = None, *, system: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, backend: Backend | None = None, progress: bool = True,
                 answer_from_output: bool | None = None, keep_alive: float = 0.0,
                 notebook: str | Path | None = None, engine: str = "auto", constrain_calls: bool | None = None,
                 mcp_servers: MCPServersOption = None, **options: Any):
        """`model`, or `base_url`/`api_key` for an OpenAI-compatible server, name the backend (or pass
        one); the other options are Session's (tools, budget, max_steps, use_python, kernel options...).
        `answer_from_output`: the small-model mode, on by default for models without tool support
        and for small tool-trained ones (see `is_small`).
        `keep_alive`: seconds a local model stays loaded in a background process after use, for the
        next Chat or command to connect to (0: loaded in this process; the command line uses 300).
        `engine`: what runs a local model: "llama.cpp" (GGUF files, ollama: models), "transformers",
        or "auto" (agent.models.choose_engine). `constrain_calls`: a model's tool calls are written
        under a grammar of the tools' schemas where the engine can (llama.cpp): always valid JSON
        naming an offered tool (None: the engine's default). `notebook`: an .ipynb whose code cells run
        first, as the conversation's first exchange (see agent.core.notebook_import). `mcp_servers`:
        MCP servers whose tools are offered beside python (`server__tool`), started now and stopped
        with the chat: {name: settings} (tools.mcp_specs) or an `mcpServers` JSON file."""
        specs = mcp_specs(mcp_servers)  # checked before a model loads
        if backend is None:
            kernel = options.get("kernel")  # its workspace: a local model's cache and server stay out of it
            backend = get_backend(model, base_url=base_url, api_key=api_key, progress=progress, keep_alive=keep_alive,
                                  engine=engine,
                                  workspace=kernel.workspace if kernel is not None else options.get("workspace"))
        super().__init__(backend, system=system, progress=progress, **options)  # None: the model's default
        self.constrain_calls = constrain_calls
        self.mcp: MCPServers | None = None
        if specs:
            self.start_mcp(specs)
        if answer_from_output is not None:
            self.small_model_mode(answer_from_output)
        if notebook is not None:
            try:
                run_notebook(self, notebook)
            except BaseException:  # no Chat to close for the caller: its kernel is closed here
                self.close()
                raise

    def start_mcp(self, specs: dict[str, MCPServerSpec]) -> None:
        """Start the MCP servers and offer their tools; one that did not start is a notice."""
        from tools.mcp_client import connect

        try:
            self.mcp, notices = connect(specs)
        except BaseException:
            self.close()
            raise
        self.notices.extend(notices)
        for tool in self.mcp.tools():
            if tool.name in self.tools or tool.name == "python":
                self.notices.append(f"MCP tool {tool.name!r} is not offered: a tool of that name is already")
            else:
                self.tools[tool.name] = tool

    def close(self) -> None:
        """The kernel, then the MCP servers."""
        try:
            super().close()
        finally:
            if getattr(self, "mcp", None) is not None:
                self.mcp.close()
                self.mcp = None

    def use_backend(self, backend: Backend) -> None:
        """Talk to another model from the next request on. What follows the kind of model follows it
        (the small-model mode, tokens per step, a default system prompt; one you gave stays). A
        money budget needs the model's price: a model without one is refused (ValueError) and
        nothing changes."""
        super().use_backend(backend)
        if self.system in DEFAULT_SYSTEMS and self.system != default_system(backend):
            self.system = default_system(backend)
        if not backend.capabilities.tools:
            self.max_tokens_per_step = MAX_TOKENS_PER_STEP
        self.small_model_mode(is_small(backend))
        self._note_tools(backend)

    def _note_tools(self, backend: Backend) -> None:
        """Tools described in the model's prompt (no tool section in its template): say so once."""
        note = backend.tools_note
        if note and self.tools and note not in self.notices:
            self.notices.append(note)

    def small_model_mode(self, on: bool) -> None:
        """Models without tool training (on by default for them) write ```python blocks and garble
        what they copy: the answer is the short value their code printed, and the loop helps them.
        Small tool-trained models get the variant for them (agent/smallmodel/toolmodel.py).
        Turning it on or off sets its knobs to their defaults for that."""
        # The tool variant for models known to be local and tool-trained (their size is declared); a
        # server's model of unknown kind asked for the mode gets the template-less one, as before
        # (an OpenAI-compatible server may hide that its model has no tool training).
        caps = self.backend.capabilities
        tool_trained = caps.tools and caps.parameters is not None
        self.small_model = SmallToolModelStrategy() if tool_trained and on else SmallModelStrategy(on)
        self.strategy = self.small_model if on else PLAIN

    @property
    def answer_from_output(self) -> bool:
        """Whether the small-model mode is on."""
        return self.strategy is self.small_model

    @answer_from_output.setter
    def answer_from_output(self, on: bool) -> None:
        self.strategy = self.small_model if on else PLAIN

    @classmethod
    def saved_options(cls, conv: ConversationFile) -> dict[str, Any]:
        """What `load` takes from the file unless given: the model too."""
        return {**super().saved_options(conv), "model": conv.model}


__all__ = ["Chat", "DEFAULT_SYSTEMS", "default_system", "is_small"]
