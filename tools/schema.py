"""Plain Python functions become tools: the schema from type hints and the docstring, the
arguments validated by pydantic, and mistakes returned as text the model can fix."""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from sandbox import KernelOptions

if TYPE_CHECKING:
    from sandbox import ExecResult, Kernel

# What a tool streams while it runs: (stream, text), e.g. ("stdout", "42\n") or ("notice", "...").
Output = tuple[str, str]


@dataclass
class Outcome:
    """What a tool run hands back: the text the model reads, and for a cell what the kernel did."""

    text: str
    status: str = "ok"  # ok | error | invalid | rejected | timeout | died ...
    code: str | None = None  # a cell's code as it ran (or was refused)
    cell: ExecResult | None = None  # the kernel's result, for a cell that ran


DEFAULT_TIMEOUT = KernelOptions.model_fields["timeout"].default  # a cell's, written once in sandbox/options.py


@dataclass
class ToolContext:
    """What the loop lends a tool run: the sandbox and the user's say (the python tool uses them)."""

    kernel: Callable[[], Kernel] | None = None  # the kernel to run in, started on first use
    # A cell's timeout in seconds, and why it is shorter than usual (the time budget's words) or None.
    timeout: Callable[[], tuple[float, str | None]] = lambda: (DEFAULT_TIMEOUT, None)
    approve: Callable[[str], bool | str | None] | None = None  # False/None: refuse; a string: run that
    # After a cell ran: the code to run instead and a notice saying so, or None (see TurnStrategy).
    revise: Callable[[str, ExecResult], tuple[str, str] | None] | None = None


@runtime_checkable
class Runnable(Protocol):
    """A tool as the loop sees it: every tool, the python one included, is run the same way."""

    name: str

    @property
    def schema(self) -> dict[str, Any]: ...

    def code(self, arguments: str) -> str | None:
        """The code a call would run, shown before it runs (None: not a code tool, or no valid code)."""

    def run(self, arguments: str, context: ToolContext) -> Generator[Output, None, Outcome]:
        """Run a call, yielding live output; return the outcome. Mistakes come back as text."""

_PARAM_LINE = re.compile(r"^\s*[:@]?(?:param\s+)?(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def parse_arguments(name: str, arguments: str) -> dict[str, Any]:
    """A tool call's arguments (JSON text as the model wrote it) as a dict: the one parser of them.
    ValueError worded for the model."""
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"the arguments of tool call {name!r} are not valid JSON ({e.msg} at "
                         f"position {e.pos}): {arguments[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the arguments of tool call {name!r} must be a JSON object, got {type(value).__name__}")
    return value


def _doc_parts(fn: Callable) -> tuple[str, dict[str, str]]:
    """The summary and per-parameter descriptions (Google `name: text` or reST `:param name: text`)."""
    doc = inspect.getdoc(fn) or ""
    summary, params, in_args = [], {}, False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:", "params:"):
            in_args = True
            continue
        if stripped.lower() in ("returns:", "raises:", "yields:", "examples:"):
            in_args = False
            continue
        m = _PARAM_LINE.match(line)
        if (in_args or stripped.startswith((":param", "@param"))) and m:
            params[m.group(1)] = m.group(2).strip()
        elif not in_args and not params:
            summary.append(stripped)
    return " ".join(s for s in summary if s).strip(), params


class Tool:
    """A callable the model may use, with its JSON schema and pydantic validation."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, description: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        summary, param_docs = _doc_parts(fn)
        self.description = description or summary or self.name
        fields: dict[str, Any] = {}
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.annotation is inspect.Parameter.empty:
                raise TypeError(f"tool {self.name!r}: parameter {p.name!r} needs a type hint")
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (p.annotation, Field(default, description=param_docs.get(p.name)))
        self.model: type[BaseModel] = create_model(f"{self.name}_args", __config__=ConfigDict(extra="forbid"),
                                                   **fields)

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling schema."""
        params = self.model.model_json_schema()
        params.pop("title", None)
        for prop in params.get("properties", {}).values():
            prop.pop("title", None)
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": params}}

    def validate(self, arguments: str | dict[str, Any]) -> BaseModel:
        """Parse and validate; raises ValueError worded for the model."""
        if isinstance(arguments, str):
            try:
                arguments = parse_arguments(self.name, arguments)
            except ValueError as e:
                raise ValueError(f"Error: {e}. Send a JSON object like {self.example()}.") from None
        if not isinstance(arguments, dict):
            raise ValueError(f"Error: the arguments for {self.name} must be a JSON object like {self.example()}.")
        try:
            return self.model.model_validate(arguments)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}"
                                 for err in e.errors())
            raise ValueError(f"Error: wrong arguments for {self.name}: {problems}. "
                             f"Expected {self.example()}.") from None

    def example(self) -> str:
        props = self.schema["function"]["parameters"].get("properties", {})
        return "{" + ", ".join(f'"{k}": <{v.get("type", "value")}>' for k, v in props.items()) + "}"

    def __call__(self, arguments: str | dict[str, Any]) -> Any:
        args = self.validate(arguments)
        return self.fn(**{k: getattr(args, k) for k in type(args).model_fields})

    def code(self, arguments: str) -> None:
        return None

    def run(self, arguments: str, context: ToolContext) -> Generator[Output, None, Outcome]:
        """Call the function; its value as text (JSON unless a string), or the mistake worded for the model."""
        try:
            value = self(arguments)
        except ValueError as e:  # validation: worded for the model
            return Outcome(str(e), "invalid")
        except Exception as e:  # noqa: BLE001 - the tool's failure goes back to the model
            return Outcome(f"Error: {self.name} raised {type(e).__name__}: {e}", "error")
        return Outcome(value if isinstance(value, str) else json.dumps(value, default=str))
        yield  # a generator, like every tool's run: a function's has no live output


def as_tool(fn: Callable[..., Any] | Runnable) -> Runnable:
    """A function as a Tool; a Tool, or any Runnable (an MCP server's tool), as it is."""
    return fn if isinstance(fn, (Tool, Runnable)) and hasattr(fn, "schema") else Tool(fn)
