"""Model backends: one interface for OpenAI-compatible servers and local Hugging Face models.

Model strings: `gpt-4o-mini` or `openai:NAME` (OpenAI, or any compatible server with
`base_url`); `hf:smollm2` (the embedded default), `hf:ORG/NAME` (a Hub id in the local cache),
a local folder, or a `.gguf` file. With no model: `KERNELCHAT_MODEL`, else `gpt-4o-mini` when
OPENAI_API_KEY is set, else the embedded `hf:smollm2` (offline, no key).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from agent.core.backend import Backend, BackendError, Capabilities

EMBEDDED = "hf:smollm2"
_local_cache: dict[str, Any] = {}
_local_lock = threading.Lock()


def default_model() -> str:
    if os.environ.get("KERNELCHAT_MODEL"):
        return os.environ["KERNELCHAT_MODEL"]
    return "gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else EMBEDDED


def is_local_model(model: str) -> bool:
    return model.startswith("hf:") or model.endswith(".gguf") or os.path.isdir(os.path.expanduser(model))


def get_backend(model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                progress: bool = True) -> Backend:
    """The backend for a model string (see the module docstring)."""
    model = model or default_model()
    if is_local_model(model) and not base_url:
        # Loading weights takes seconds: one instance per model in this process.
        with _local_lock:
            if model not in _local_cache:
                from agent.models.local import LocalBackend

                _local_cache[model] = LocalBackend(model, progress=progress)
            return _local_cache[model]
    from agent.models.openai_backend import OpenAIBackend

    return OpenAIBackend(model, base_url=base_url, api_key=api_key)


__all__ = ["Backend", "BackendError", "Capabilities", "get_backend", "default_model", "is_local_model", "EMBEDDED"]
