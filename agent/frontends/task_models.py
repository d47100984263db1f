"""What a task file's `base_url` and `model` may choose: where the run's requests (and the user's key)
go, and what loads on this machine. At most what the user named.

A task file is often someone else's. Its `base_url` would get every model request of the run, and the
openai SDK sends the environment's OPENAI_API_KEY (OPENAI_ORG_ID, OPENAI_PROJECT_ID) with each: so it
is obeyed only for a server the user named too (`--base-url` with that URL, the configuration file's
base_url, OPENAI_BASE_URL) or with `--trust-task-files`; else the run stops before any model loads
(exit 2, one sentence naming the file, the setting and the flag). `--base-url` replaces it anyway.

Its `model` may name the embedded model, a Hub model (`hf:ORG/NAME`: only its weights, configuration
and tokenizer files are fetched, from the Hub the user's environment names), an Ollama model the user
pulled, or a model folder or .gguf file in the task file's own folder (relative to it, as its
`files`). None of them runs code when it loads (agent/models/transformers_backend.py: trust_remote_code=False,
pickled weights only as tensors). A path that leads out of that folder (absolute, `~`, `..`, a link,
a folder of that name in the current folder) is the user's machine, not the file's: refused likewise,
unless `--model` (which replaces it) or `--trust-task-files`.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from agent.frontends.task_sandbox import TRUST_FLAG, sandbox_refusal
from agent.frontends.tasks import Task, TaskError
from agent.models import EMBEDDED_ALIASES, OLLAMA_PREFIX

# What the openai SDK sends from the environment with every request, to whichever server it is given.
SECRETS = ("OPENAI_API_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")
GRANT = f"or {TRUST_FLAG} to accept the task files' settings"


def task_folder(task: Task) -> Path:
    """The folder a task file's relative paths are relative to (its own), resolved."""
    return (task.path.parent if task.path else Path.cwd()).resolve()


def model_path(task: Task) -> Path | None:
    """The file or folder on this machine that the task's `model` names, resolved (links followed);
    None for a model by name (the embedded one, a Hub id, an Ollama model, a server's). A relative
    path is relative to the task file's folder; a folder of that name in the current folder counts
    too (get_backend would load it)."""
    m = task.model
    if not m or "\x00" in m or m.lower() in EMBEDDED_ALIASES or m.startswith(OLLAMA_PREFIX):
        return None
    name = Path(m.removeprefix("hf:")).expanduser()
    here = (task_folder(task) / name).resolve()
    if here.is_dir() or m.endswith(".gguf"):
        return here
    return name.resolve() if name.is_dir() else None


def local_model(task: Task) -> str | None:
    """The model string get_backend gets for the task's own model: a path it names made absolute
    (relative to the task file, not to the current folder), else the string as written."""
    path = model_path(task)
    return str(path) if path else task.model


def same_server(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def where(task: Task) -> str:
    return str(task.path or task.name)


def server_refusal(task: Task, servers: set[str]) -> str | None:
    """One sentence when the task's base_url is none of `servers` (those the user named)."""
    url = task.base_url
    if url is None or any(same_server(url, s) for s in servers):
        return None
    keys = [k for k in SECRETS if os.environ.get(k)]
    sent = f", with your {' and '.join(keys)}," if keys else ""
    return (f"{where(task)}: its base_url = {json.dumps(url)} would get this run's model requests{sent} and "
            f"is not a server you named; nothing ran: pass --base-url {shlex.quote(url)} to allow that, {GRANT}")


def model_refusal(task: Task) -> str | None:
    """One sentence when the task's model is a file or folder outside the task file's folder."""
    path = model_path(task)
    if path is None or path.is_relative_to(task_folder(task)):
        return None
    return (f"{where(task)}: its model = {json.dumps(task.model)} is {path}, outside the task file's folder; "
            f"nothing ran: pass --model {shlex.quote(str(path))} to allow that, {GRANT}")


def model_refusals(task: Task, *, model: str | None = None, base_url: str | None = None,
                   config_base_url: str | None = None, replay: bool = False) -> list[str]:
    """The sentences for what `task` chooses beyond what the command line (`model`, `base_url`), the
    configuration file's base_url and OPENAI_BASE_URL give; none under `replay` (no model is asked)."""
    if base_url or replay:  # the user's server replaces the file's, and the model is that server's
        return []
    servers = {s for s in (config_base_url, os.environ.get("OPENAI_BASE_URL")) if s}
    if task.base_url:
        return [p] if (p := server_refusal(task, servers)) else []
    return [p] if model is None and (p := model_refusal(task)) else []


def check_task_models(tasks: list[Task], *, trust: bool = False, **given: Any) -> None:
    """Raise TaskError (a sentence per task) when a task's base_url or model goes beyond what is
    given (model_refusals' keywords), unless `trust`."""
    problems = [] if trust else [p for t in tasks for p in model_refusals(t, **given)]
    if problems:
        raise TaskError("\n".join(problems))


def check_task_files(tasks: list[Task], user: dict[str, Any], out: Path, *, trust: bool = False,
                     **given: Any) -> None:
    """Both checks of what task files may ask for, every sentence at once: the sandbox (`user`,
    task_sandbox.py) and the server and model (`given`: model_refusals' keywords)."""
    problems = [] if trust else [p for t in tasks
                                 for p in [sandbox_refusal(t, user, out), *model_refusals(t, **given)] if p]
    if problems:
        raise TaskError("\n".join(problems))


__all__ = ["check_task_files", "check_task_models", "local_model", "model_path", "model_refusal",
           "model_refusals", "server_refusal"]


def task_mcp_servers(task: Task, servers: dict[str, Any]) -> dict[str, Any]:
    """The MCP servers a task names, from the run's; TaskError naming one that is not configured."""
    missing = [n for n in task.mcp_servers if n not in servers]
    if missing:
        raise TaskError(f"{task.path or task.name}: mcp_servers names {', '.join(map(repr, missing))}, not "
                        "configured: define it in config.toml [mcp_servers.NAME] or pass --mcp FILE (a task file "
                        "names servers, it cannot define one)")
    return {n: servers[n] for n in task.mcp_servers}
