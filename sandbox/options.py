"""Strict checks of the public options of a kernel: a bool is a bool, a number a number.

A truthy string such as `network="false"` must not silently turn a feature on, so every
option is checked by type, and the error names the option, the value and what is accepted.
"""

from __future__ import annotations

import glob
import numbers
import shutil
from collections.abc import Mapping

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


def check_gpu(value: object) -> bool:
    """True, False, or "auto" (True when a GPU is found here)."""
    if value == "auto" and isinstance(value, str):
        return has_gpu()
    if not isinstance(value, bool):
        raise ValueError(f"gpu must be True, False or 'auto', got {_shown(value)}")
    return value


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
