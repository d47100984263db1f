"""Task files (TOML): what to ask, with which model, budget and sandbox, and how to check the outcome.

    model = "hf:smollm2"
    prompts = ["What is 2**100? Use Python."]
    [[checks]]
    answer_contains = "1267650600228229401496703205376"

`load_task(path)` parses and validates one file; any problem is a `TaskError` naming the file, the
line and the field.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.core.budget import Budget
from sandbox import MAX_LIMITS

MAX_TASK_BYTES = 1 << 22  # a task file past 4 MiB is refused before it is parsed
MAX_PROBLEMS = 20  # validation problems reported per task file


class TaskError(ValueError):
    """An invalid task file: the message reads `PATH:LINE: FIELD: what is wrong`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetSpec(Budget):
    """The task file's [budget]: Budget's fields (max_steps counts the whole task), unknown keys refused."""

    model_config = ConfigDict(extra="forbid")

    def budget(self) -> Budget:
        return Budget(**self.model_dump())


class SandboxSpec(_Strict):
    """The task file's [sandbox]: KernelOptions fields; None: as the run gives it (the command line,
    config.toml, else the KernelOptions default). A value looser than the run's stops the run unless
    the command line grants it (frontends/task_sandbox.py)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # `network = "yes"` or `memory_mb = true`: refused

    network: bool | None = None
    gpu: bool | Literal["auto"] | None = None  # auto: the GPU when this machine has one
    memory_mb: int | None = Field(default=None, gt=0, le=MAX_LIMITS["memory_mb"])
    disk_mb: int | None = Field(default=None, gt=0, le=MAX_LIMITS["disk_mb"],
                                description="workspace disk quota (default: a share of the free space)")
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="seconds per cell")
    isolation: Literal["bwrap", "none", "gateway"] | None = None  # gateway: see docs/sandbox.md


NAME_MAX = 100  # characters of a task name: it names a folder, with room for a "-2" suffix
RESERVED_NAMES = {"summary.json", "summary.md"}  # files beside the task folders in the report folder
_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a task's report folder (None: it can). A plain name: no path."""
    if not name.strip():
        return "must not be empty"
    if len(name) > NAME_MAX or len(name.encode("utf-8", "surrogatepass")) > 2 * NAME_MAX:
        return f"is too long ({len(name)} characters); at most {NAME_MAX}"
    if _UNSAFE_NAME.search(name):
        return "must be a plain name: no '/', '\\' or control characters (it names the task's report folder)"
    if name.startswith(".") or name != name.strip():
        return "must not start with '.' or begin or end with a space (it names the task's report folder)"
    if name.lower() in RESERVED_NAMES:
        return f"{name!r} is the name of a file of the report folder; choose another"
    return None


def workspace_path_problem(value: str) -> str | None:
    """Why `value` is not a path inside the workspace (None: it is)."""
    parts = value.replace("\\", "/").split("/")
    if not value or "\x00" in value or value.startswith("/") or ".." in parts:
        return "must be a path relative to the workspace, without '..' (e.g. \"outputs/model.pt\")"
    return None


CHECK_KINDS = ("answer_contains", "answer_matches", "answer_number", "file_exists", "kernel", "max_cost_usd")


class Check(_Strict):
    """One check of the outcome; exactly one kind per check."""

    answer_contains: str | None = None
    answer_matches: str | None = None  # a regular expression, searched in the final answer
    answer_number: float | None = None  # some number in the answer is within `tolerance` of this
    tolerance: float = Field(default=1e-6, ge=0)
    file_exists: str | None = None  # relative to the workspace
    kernel: str | None = None  # a Python expression evaluated in the kernel at the end; must be true
    max_cost_usd: float | None = Field(default=None, ge=0)
    ignore_case: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> "Check":
        kinds = [k for k in CHECK_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a check needs exactly one of {', '.join(CHECK_KINDS)} (got "
                             f"{', '.join(kinds) or 'none'})")
        return self

    @field_validator("answer_matches")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regular expression: {e}") from None
        return v

    @field_validator("file_exists")
    @classmethod
    def _inside(cls, v: str | None) -> str | None:
        if v is not None and (problem := workspace_path_problem(v)):
            raise ValueError(problem)
        return v

    @field_validator("kernel")
    @classmethod
    def _expression(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                compile(v, "<check>", "eval")
            except SyntaxError as e:
                raise ValueError(f"not a Python expression: {e.msg}") from None
        return v

    @property
    def kind(self) -> str:
        return next(k for k in CHECK_KINDS if getattr(self, k) is not None)

    def describe(self) -> str:
        value = getattr(self, self.kind)
        if self.kind == "answer_number":
            return f"answer_number: {value:g} ± {self.tolerance:g}"
        return f"{self.kind}: {value}" if isinstance(value, str) else f"{self.kind}: {value:g}"


class Task(_Strict):
    """One task file."""

    name: str | None = None  # default: the file name without .toml
    model: str | None = None  # default: as for `kernelchat` (KERNELCHAT_MODEL, OpenAI with a key, else hf:smollm2)
    base_url: str | None = None
    engine: Literal["auto", "llama.cpp", "transformers"] = "auto"  # what runs a local model (`--engine` wins)
    constrain_calls: bool | None = None  # tool calls under a grammar where the engine can (`--constrain-calls` wins)
    images: bool | None = None  # the server's model takes images (`--images` wins; default: OpenAI's vision models)
    # MCP servers whose tools the task's chat offers: names from your config.toml [mcp_servers] or
    # `--mcp FILE`. A task file names servers, never defines one: a server is a program on your machine.
    mcp_servers: list[str] = Field(default_factory=list)
    system: str | None = None
    temperature: float | None = Field(default=None, ge=0)
    max_steps: int = Field(default=10, gt=0, description="model requests per prompt")
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    sandbox: SandboxSpec = Field(default_factory=SandboxSpec)
    files: list[str] = Field(default_factory=list)  # copied into the workspace; relative to the task file
    prompts: list[str] = Field(min_length=1)
    checks: list[Check] = Field(default_factory=list)
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and (problem := name_problem(v)):
            raise ValueError(problem)
        return v

    @field_validator("files")
    @classmethod
    def _in_folder(cls, v: list[str]) -> list[str]:
        for f in v:  # a task file is often someone else's: it brings its own files, not the user's
            parts = f.replace("\\", "/").split("/")
            if not f or "\x00" in f or f.startswith(("/", "~")) or ".." in parts or Path(f).is_absolute():
                raise ValueError(f"{f!r} must be a path inside the task file's folder, relative to it and "
                                 f"without '..' (e.g. \"data/train.csv\")")
        return v

    @field_validator("prompts")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.strip():
                raise ValueError("a prompt must not be empty")
        return v

    def source_file(self, rel: str) -> Path:
        """A `files` entry, resolved. ValueError when it leads out of the task file's folder (a link
        there to a host file, which the task's code would then read)."""
        base = (self.path.parent if self.path else Path.cwd()).resolve()
        src = (base / rel).resolve()
        if not src.is_relative_to(base):
            raise ValueError(f"{rel!r} leads out of the task file's folder (to {src}); a task file brings "
                             "only files from its own folder")
        return src

    def source_files(self) -> list[Path]:
        return [self.source_file(f) for f in self.files]


def _key_line(text: str, loc: tuple) -> int | None:
    """The line of the key a pydantic error points at, found by walking the TOML text: tables
    (`[sandbox]`), arrays of tables (the n-th `[[checks]]`), then `key =` inside the block."""
    lines = text.splitlines()
    header = lambda i: re.match(r"\s*\[", lines[i]) is not None  # noqa: E731
    start, end, found, table = 0, len(lines), None, []
    for i in range(len(lines)):  # the root block ends at the first table header
        if header(i):
            end = i
            break
    for n, part in enumerate(loc):
        if isinstance(part, int):
            continue
        last = n == len(loc) - 1 or all(isinstance(x, int) for x in loc[n + 1:])
        key_line = next((i for i in range(start, end)
                         if re.match(rf"\s*[\"']?{re.escape(part)}[\"']?\s*=", lines[i])), None)
        if key_line is not None:
            return key_line + 1  # a plain key, or an inline table / array
        table.append(part)
        name = re.escape(".".join(table))
        heads = [i for i in range(len(lines)) if re.match(rf"\s*\[\[?\s*{name}\s*\]\]?\s*(#.*)?$", lines[i])]
        if not heads:
            return found
        idx = loc[n + 1] if n + 1 < len(loc) and isinstance(loc[n + 1], int) else 0
        h = heads[min(idx, len(heads) - 1)]
        found, start = h + 1, h + 1
        end = next((i for i in range(start, len(lines)) if header(i)), len(lines))
        if last:
            return found
    return found


def _field(loc: tuple) -> str:
    out = ""
    for k in loc:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "(file)"


def parse_task(text: str, path: Path | str = "<task>") -> Task:
    """Validate TOML text; raise TaskError with path, line and field."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"{path}:{m.group(1)}" if m else str(path)
        reason = re.sub(r" \(at line.*\)", "", str(e))
        raise TaskError(f"{where}: invalid TOML: {reason}") from None
    except RecursionError:
        raise TaskError(f"{path}: invalid TOML: nested too deeply to read") from None
    except MemoryError:
        raise TaskError(f"{path}: not enough memory to read the task file") from None
    except ValueError:  # an integer of more digits than Python converts
        raise TaskError(f"{path}: invalid TOML: a number has too many digits to read") from None
    try:
        task = Task.model_validate(data)
    except RecursionError:
        raise TaskError(f"{path}: a value is nested too deeply") from None
    except ValidationError as e:
        problems = []
        for err in e.errors()[:MAX_PROBLEMS]:  # the first few: a line per bad entry of 100,000 is no message
            loc = tuple(x for x in err["loc"] if x not in ("function-after",))
            line = _key_line(text, loc)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append((line or 1, f"{path}:{line or 1}: {_field(loc)}: {msg}"))
        lines = [p for _, p in sorted(problems, key=lambda p: p[0])]
        if (more := e.error_count() - len(problems)) > 0:
            lines.append(f"{path}: and {more:,} more problems")
        raise TaskError("\n".join(lines)) from None
    task.path = path.resolve() if path.exists() else path
    if task.name is None:
        if problem := name_problem(path.stem):
            raise TaskError(f"{path}:1: name: the task is named after its file, {path.stem!r}, which {problem}; "
                            f"set name = \"...\" in the file")
        task.name = path.stem
    return task


def load_task(path: str | Path) -> Task:
    """Read and validate a task file, and check that its files exist."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: " + ("a folder, not a task file" if path.is_dir() else "no such task file"))
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TASK_BYTES + 1)  # never more: a huge file is refused, not read whole
    except OSError as e:
        raise TaskError(f"{path}: cannot read the task file ({e.strerror or e})") from None
    if len(data) > MAX_TASK_BYTES:
        raise TaskError(f"{path}: the task file is over {MAX_TASK_BYTES:,} bytes; put large inputs in its files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # the line of the first bad byte, for the editor
        line = data.count(b"\n", 0, e.start) + 1
        raise TaskError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                        f"save the file as UTF-8") from None
    task = parse_task(text, path)
    lines = text.splitlines()
    for rel in task.files:
        line = next((i + 1 for i, ln in enumerate(lines) if rel in ln), 1)
        try:
            src = task.source_file(rel)
        except ValueError as e:
            raise TaskError(f"{path}:{line}: files: {e}") from None
        if not src.name:  # "." of a task file in "/": the whole file system, copied under no name
            raise TaskError(f"{path}:{line}: files: {rel!r} names no file or folder")
        if not src.exists():
            raise TaskError(f"{path}:{line}: files: {rel!r} not found (looked for {src})")
    return task


def load_tasks(paths: list[str | Path]) -> list[Task]:
    """Load every file; all problems are reported together, and nothing runs if any."""
    tasks, problems = [], []
    for p in paths:
        try:
            tasks.append(load_task(p))
        except TaskError as e:
            problems.append(str(e))
    if problems:
        raise TaskError("\n".join(problems))
    taken: set[str] = set()
    for t in tasks:  # unique names: they name the report folders (case-insensitive file systems too)
        name, n = t.name, 1
        while name.lower() in taken:
            n += 1
            name = f"{t.name}-{n}"
        t.name = name
        taken.add(name.lower())
    return tasks


__all__ = ["Task", "Check", "BudgetSpec", "SandboxSpec", "TaskError", "parse_task", "load_task", "load_tasks"]
