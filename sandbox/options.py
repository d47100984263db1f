"""`KernelOptions`: every option a kernel takes, each default written once, and their strict checks.

A truthy string such as `network="false"` must not silently turn a feature on, so every
option is checked by type, and the error names the option, the value and what is accepted:
one sentence, a plain ValueError (a keyword that is no option: TypeError, as Python's own).
"""

from __future__ import annotations

import difflib
import glob
import numbers
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .limits import MAX_LIMITS, Limits

# -1 means "the default" for these; None means "unlimited" (or the default, see limits_from).
LIMIT_OPTIONS = ("memory_mb", "max_procs", "max_file_mb", "cpu_seconds", "tmp_mb", "output_chars")
_NO_UNLIMITED = ("tmp_mb", "output_chars")  # None means the default for these


def has_gpu() -> bool:
    """An NVIDIA GPU is visible on this machine (device nodes, or the driver's tool)."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


def _shown(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {_shown(value)}")
    return value


def check_gpu_choice(value: object) -> bool | Literal["auto"]:
    """True, False, or "auto", kept as it is (`check_gpu` resolves "auto")."""
    if value == "auto" and isinstance(value, str):
        return "auto"
    if not isinstance(value, bool):
        raise ValueError(f"gpu must be True, False or 'auto', got {_shown(value)}")
    return value


def check_gpu(value: object) -> bool:
    """True, False, or "auto" (True when a GPU is found here)."""
    choice = check_gpu_choice(value)
    return has_gpu() if choice == "auto" else choice


def check_timeout(timeout: object, name: str = "timeout") -> float:
    """A positive, finite number of seconds."""
    ok = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    if not (ok and 0 < timeout < float("inf")):
        raise ValueError(f"{name} must be a positive number of seconds, got {_shown(timeout)}")
    return float(timeout)


def check_fraction(name: str, value: object) -> float | None:
    """None, or a positive share of one CPU core (0.5 = half a core)."""
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and 0 < value < float("inf")):
        raise ValueError(f"{name} must be a positive number (a share of one CPU core) or None, got {_shown(value)}")
    return float(value)


def check_limit(name: str, value: object) -> int | None:
    """-1 (the default), None (unlimited, or the default for tmp_mb/output_chars) or a whole number
    within MAX_LIMITS (a larger one would overflow the rlimit or cgroup it becomes)."""
    if value is None or (value == -1 and type(value) is int):
        return value
    floor, most = 200 if name == "output_chars" else 0, MAX_LIMITS.get(name)
    if (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= floor
            or (most is not None and value > most)):
        what = "None (unlimited)" if name not in _NO_UNLIMITED else "None (the default)"
        span = f"from {floor + 1:,} to {most:,}" if most is not None else f"greater than {floor}"
        raise ValueError(f"{name} must be a whole number {span} or {what}, got {_shown(value)}")
    return int(value)


def limits_from(**given: object) -> Limits:
    """Limits from Kernel's keyword arguments: -1 means 'the default', None 'unlimited'."""
    checked = {k: check_limit(k, v) for k, v in given.items()}
    return Limits(**{k: v for k, v in checked.items()
                     if v != -1 and not (v is None and k in _NO_UNLIMITED)})


def check_env(env: object) -> dict[str, str]:
    """Extra environment variables: names and values are str; a name is not empty and holds
    no '=' or NUL; a value holds no NUL (the OS cannot pass either)."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise ValueError(f"env must be a dict of str to str, got {_shown(env)}")
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"env must map str to str; got {key!r}: {value!r}")
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"env: {key!r} is not a valid variable name (it must be non-empty, "
                             "without '=' or NUL characters)")
        if "\0" in value:
            raise ValueError(f"env: the value of {key} holds a NUL character, which cannot be passed on")
        out[key] = value
    return out


def check_isolation(value: object) -> IsolationChoice | None:
    """None (bwrap where it runs, else none, with a warning), "bwrap", "none" or "gateway"."""
    if value is not None and value not in ISOLATIONS:
        raise ValueError(f"isolation must be 'bwrap', 'none' or 'gateway', got {value!r}")
    return value  # type: ignore[return-value]


def check_workspace(value: object) -> Path | None:
    """None (a temporary folder) or a folder's path; whether it exists is checked when a kernel is made."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"workspace must be a folder's path (a str or os.PathLike) or None, got {_shown(value)}")
    return Path(value)


def check_optional_str(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a str or None, got {_shown(value)}")
    return value


def check_keep_workspace(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"keep_workspace must be None, True or False, got {value!r}")
    return value


def check_count(name: str, value: object) -> int:
    """A whole number greater than 0."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a whole number greater than 0, got {_shown(value)}")
    return int(value)


IsolationChoice = Literal["bwrap", "none", "gateway"]
ISOLATIONS = ("bwrap", "none", "gateway")
# The options only a gateway kernel takes (sandbox/gateway.py); the others every kind shares.
GATEWAY_OPTIONS = ("gateway_url", "gateway_token", "kernel_name", "remote_workspace", "remote_output_chars",
                   "request_timeout", "quickack")


def unknown_keyword(owner: str, given: Iterable[str], known: Iterable[str]) -> TypeError | None:
    """Python's TypeError for the first keyword of `given` that is none of `known` (with the
    nearest name, when one is close), else None."""
    known = list(known)
    for name in given:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            return TypeError(f"{owner}() got an unexpected keyword argument {name!r}{hint}")
    return None


class KernelOptions(BaseModel):
    """Every option of a kernel, checked; `Kernel(options)` starts one with them, and
    `Kernel(timeout=5, ...)` is the same as `Kernel(KernelOptions(timeout=5, ...))`.

    Limits: -1 is the sandbox's default, None unlimited (the default for cpu_seconds; for tmp_mb
    and output_chars None is the default too). The gateway's options (`gateway_url` and the
    ones after it) are a gateway kernel's only; `gateway_url`, `gateway_token` and `kernel_name`
    fall back to KERNELCHAT_GATEWAY_URL, _TOKEN and _KERNEL (sandbox/gateway_client.py).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    workspace: Path | None = None  # None: a temporary folder, removed on close unless it holds files
    isolation: IsolationChoice | None = None  # None: bwrap where it runs, else none (with a warning)
    network: bool = False
    gpu: bool | Literal["auto"] = False  # "auto": the NVIDIA devices when this machine has them
    env: dict[str, str] | None = None  # extra environment variables of the kernel
    timeout: float = 120.0  # seconds per cell
    memory_mb: int | None = -1
    max_procs: int | None = -1
    max_file_mb: int | None = -1
    cpu_seconds: int | None = None
    tmp_mb: int | None = None
    output_chars: int | None = None
    disk_mb: int | None = -1  # -1: what the workspace holds plus a share of the free space (quota.py)
    idle_cpu_limit: float | None = None  # a share of one core that leftovers of a cell may use while idle
    keep_workspace: bool | None = None  # a temporary workspace on close: None kept if it holds a file
    gateway_url: str | None = None
    gateway_token: str | None = Field(default=None, repr=False)  # a secret: not in the repr
    kernel_name: str | None = None  # the gateway's kernelspec
    remote_workspace: str | None = None  # None: a fresh temporary folder on the kernel's machine
    remote_output_chars: int = 2_000_000  # the kernel-side cap: what a cell may send over the network per stream
    request_timeout: float = 30.0  # seconds per REST request to the gateway
    quickack: bool = True  # TCP_QUICKACK on the websocket (fewer delayed ACKs)

    def __init__(self, **fields: Any) -> None:
        unknown = unknown_keyword(type(self).__name__, fields, type(self).model_fields)
        if unknown is not None:
            raise unknown
        try:
            super().__init__(**fields)
        except ValidationError as e:  # the check's own sentence, not pydantic's report
            raise ValueError(first_error(e)) from None

    def updated(self, **fields: Any) -> KernelOptions:
        """These options with `fields` changed (checked as any KernelOptions)."""
        return type(self)(**{**self.model_dump(exclude_unset=True), **fields}) if fields else self

    @field_validator("workspace", mode="plain")
    @classmethod
    def _workspace(cls, value: object) -> Path | None:
        return check_workspace(value)

    @field_validator("isolation", mode="plain")
    @classmethod
    def _isolation(cls, value: object) -> str | None:
        return check_isolation(value)

    @field_validator("network", "quickack", mode="plain")
    @classmethod
    def _bool(cls, value: object, info: ValidationInfo) -> bool:
        return check_bool(info.field_name, value)

    @field_validator("gpu", mode="plain")
    @classmethod
    def _gpu(cls, value: object) -> bool | str:
        return check_gpu_choice(value)

    @field_validator("env", mode="plain")
    @classmethod
    def _env(cls, value: object) -> dict[str, str] | None:
        return None if value is None else check_env(value)

    @field_validator("timeout", "request_timeout", mode="plain")
    @classmethod
    def _seconds(cls, value: object, info: ValidationInfo) -> float:
        return check_timeout(value, info.field_name)

    @field_validator(*LIMIT_OPTIONS, "disk_mb", mode="plain")
    @classmethod
    def _limit(cls, value: object, info: ValidationInfo) -> int | None:
        return check_limit(info.field_name, value)

    @field_validator("idle_cpu_limit", mode="plain")
    @classmethod
    def _fraction(cls, value: object) -> float | None:
        return check_fraction("idle_cpu_limit", value)

    @field_validator("keep_workspace", mode="plain")
    @classmethod
    def _keep(cls, value: object) -> bool | None:
        return check_keep_workspace(value)

    @field_validator("gateway_url", "gateway_token", "kernel_name", "remote_workspace", mode="plain")
    @classmethod
    def _str(cls, value: object, info: ValidationInfo) -> str | None:
        return check_optional_str(info.field_name, value)

    @field_validator("remote_output_chars", mode="plain")
    @classmethod
    def _count(cls, value: object) -> int:
        return check_count("remote_output_chars", value)


def first_error(e: ValidationError) -> str:
    """The first problem pydantic found, as one sentence: a check's own ValueError as it was raised."""
    err = e.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        return str(cause)
    where = ".".join(map(str, err["loc"]))
    return f"{where}: {err['msg']}" if where else err["msg"]


def options_from(options: object = None, owner: str = "Kernel", **fields: Any) -> KernelOptions:
    """`options` (a KernelOptions, or None: the defaults) with `fields` changed: what `Kernel(...)`
    and other takers of kernel options build once. A keyword that is no option: TypeError naming it."""
    if options is not None and not isinstance(options, KernelOptions):
        raise TypeError(f"{owner}() takes one KernelOptions or keyword arguments, got {_shown(options)}; "
                        f"write {owner}(workspace=...) for a workspace")
    unknown = unknown_keyword(owner, fields, KernelOptions.model_fields)
    if unknown is not None:
        raise unknown
    if options is None:
        return KernelOptions(**fields)
    return options.updated(**fields)


DEFAULTS = KernelOptions()  # the defaults, for those that compare with them
