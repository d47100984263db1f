"""What a task file's [sandbox] may ask for: at most what the command line gives.

A task file is often someone else's (a shared benchmark, a cloned repository), and its prompts and
`kernel` checks run code in the kernel: `isolation = "none"` there would run that code on the host.
So the run's sandbox is the user's (the command line, then config.toml, then the built-in defaults)
and a task file may only tighten it (a shorter timeout, less memory, no GPU). A setting that loosens
it (another isolation, the network, the GPU, a longer timeout, more memory or disk) stops the run
before any model loads or kernel starts, unless the command line grants it: the matching flag with
that value or more (`--isolation none`, `--network`, `--gpu`, `--timeout 300`, `--memory-mb 8192`,
`--disk-mb 20000`), or `--trust-task-files`, which accepts the task files' settings as written (their
[sandbox], and their model and base_url: frontends/task_models.py).

`user` below is the run's sandbox: a KernelOptions, or a mapping of its fields (isolation, network,
gpu, timeout, memory_mb, disk_mb, the gateway's, ...); a field left out has the KernelOptions default.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.frontends.options import check_sandbox_options, kernel_options
from agent.frontends.tasks import SandboxSpec, Task, TaskError
from sandbox import KernelOptions, Limits, default_growth_mb

TRUST_FLAG = "--trust-task-files"
TRUST_ALIAS = "--trust-task-sandbox"  # its first name, from when it covered the [sandbox] alone
# What a task file can set: KernelOptions fields (whose defaults, -1 the sandbox's own limit, hold
# where neither the run nor the file sets them).
SETTINGS = tuple(SandboxSpec.model_fields)
UserSandbox = KernelOptions | Mapping[str, Any]


def user_options(user: UserSandbox) -> KernelOptions:
    """The run's sandbox as KernelOptions (from a mapping of its fields: checked as any)."""
    return user if isinstance(user, KernelOptions) else KernelOptions(**user)


def run_sandbox(args: argparse.Namespace) -> dict[str, Any]:
    """The run's sandbox from the sandbox flags (config.toml's values are their defaults), checked:
    the KernelOptions fields they set, less the workspace (each task has its own)."""
    check_sandbox_options(args)
    return kernel_options(args).model_dump(exclude_unset=True, exclude={"workspace"})


def _limit(value: int | float | None, default: Any) -> float:
    """A user limit as a number to compare with: -1 is the sandbox's default, None unlimited."""
    if value is None:
        return float("inf")
    return default() if value == -1 else value


def looser_settings(spec: SandboxSpec, user: UserSandbox, out: Path) -> list[tuple[str, str]]:
    """(the setting as the file writes it, the flag that grants it) for each [sandbox] setting of
    `spec` that loosens the sandbox `user` gives."""
    u = user_options(user)
    found: list[tuple[str, str]] = []
    # bwrap is the strongest isolation (where it cannot run, the kernel refuses to start: never a
    # silent fallback); under the user's gateway every kernel runs there, whatever the file says.
    if u.isolation != "gateway" and spec.isolation not in (None, "bwrap", u.isolation):
        found.append((f"isolation = {json.dumps(spec.isolation)}",
                      "--gateway URL" if spec.isolation == "gateway" else f"--isolation {spec.isolation}"))
    if spec.network and not u.network:
        found.append(("network = true", "--network"))
    if spec.gpu and not u.gpu:  # True, or "auto": the GPU whenever this machine has one
        found.append((f"gpu = {json.dumps(spec.gpu)}", "--gpu"))
    if spec.timeout is not None and spec.timeout > u.timeout:
        found.append((f"timeout = {spec.timeout:g}", f"--timeout {spec.timeout:g}"))
    if spec.memory_mb is not None and spec.memory_mb > _limit(u.memory_mb, lambda: Limits().memory_mb):
        found.append((f"memory_mb = {spec.memory_mb}", f"--memory-mb {spec.memory_mb}"))
    if spec.disk_mb is not None and spec.disk_mb > _limit(u.disk_mb, lambda: default_growth_mb(out)):
        found.append((f"disk_mb = {spec.disk_mb}", f"--disk-mb {spec.disk_mb}"))
    return found


def sandbox_refusal(task: Task, user: UserSandbox, out: Path) -> str | None:
    """One sentence when `task` asks for a looser sandbox than `user` (None: it does not)."""
    found = looser_settings(task.sandbox, user, out)
    if not found:
        return None
    settings = ", ".join(s for s, _ in found)
    flags = " ".join(f for _, f in found)
    return (f"{task.path or task.name}: its [sandbox] asks for {settings}, looser than this run's sandbox "
            f"(the command line and config.toml); nothing ran: pass {flags} to allow that, or {TRUST_FLAG} "
            f"to accept the task files' settings")


def check_task_sandboxes(tasks: list[Task], user: UserSandbox, out: Path, trust: bool = False) -> None:
    """Raise TaskError (a sentence per task) when a task asks for more than `user` gives, unless `trust`."""
    if trust:
        return
    problems = [p for t in tasks if (p := sandbox_refusal(t, user, out))]
    if problems:
        raise TaskError("\n".join(problems))


def task_kernel_options(task: Task, user: UserSandbox, out: Path, trust: bool = False) -> dict[str, Any]:
    """The KernelOptions fields for `task`: those the user's sandbox sets, with the file's settings
    where it sets them (checked first unless `trust`: TaskError), less the workspace (each task has
    its own). Under the user's gateway every kernel runs there."""
    check_task_sandboxes([task], user, out, trust)
    u = user_options(user)
    options = u.model_dump(exclude_unset=True, exclude={"workspace"})
    for key in SETTINGS:
        value = getattr(task.sandbox, key)
        if value is not None and not (key == "isolation" and u.isolation == "gateway"):
            options[key] = value
    return options


def task_options(task: Task, user: UserSandbox, out: Path, workspace: Path, trust: bool = False) -> KernelOptions:
    """`task`'s kernel options, whole: `task_kernel_options` in `workspace`."""
    return KernelOptions(**task_kernel_options(task, user, out, trust), workspace=workspace)


def fresh_workspace(workspace: Path) -> None:
    """An empty workspace for this run. A rerun with the same --out finds the last run's files there,
    written by sandboxed code (links, FIFOs, folders thousands deep or locked): they would make
    `file_exists` checks pass, so they go (sandbox.saferm: no link followed, any depth)."""
    from sandbox import remove_tree

    removal = remove_tree(workspace)
    if not removal.complete:
        raise ValueError(f"the last run's workspace: {removal.sentence()}")
    workspace.mkdir(parents=True)


def copy_task_files(task: Task, workspace: Path) -> None:
    """The task's files into the workspace, each under its own name, through safefs: nothing on the
    workspace side is followed."""
    from sandbox import copy_in

    for src in task.source_files():
        if workspace.resolve().is_relative_to(src):  # files = ["."] with --out inside that folder
            raise ValueError(f"the task's files entry {str(src)!r} holds the report folder; copy a narrower folder")
        copy_in(src, workspace, src.name)


__all__ = ["TRUST_ALIAS", "TRUST_FLAG", "check_task_sandboxes", "copy_task_files", "fresh_workspace", "looser_settings",
           "run_sandbox", "sandbox_refusal", "task_kernel_options", "task_options", "user_options"]
