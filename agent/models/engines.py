"""Which engine runs a local model (llama.cpp or transformers), why, and loading it there."""

from __future__ import annotations

import importlib.util

from agent.core.backend import Backend, BackendError
from agent.models.embedded import EMBEDDED_ALIASES
from agent.models.sources import OLLAMA_PREFIX

ENGINES = ("auto", "llama.cpp", "transformers")


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def choose_engine(model: str, engine: str = "auto") -> tuple[str, str]:
    """The engine a local model runs on, and why: llama.cpp for GGUF files, ollama: models and the
    embedded model (its own GGUF) where it is installed (`kernelchat[gguf]`), transformers for Hub
    models and folders, and for GGUF files where llama.cpp is missing (converted once). `engine`
    asks for one; a request that cannot be met is a BackendError saying what to do."""
    if engine not in ENGINES:
        raise BackendError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    embedded = model.lower() in EMBEDDED_ALIASES
    gguf = embedded or model.startswith(OLLAMA_PREFIX) or model.lower().endswith(".gguf")
    if engine == "transformers":
        return "transformers", "asked for (engine='transformers')"
    if engine == "llama.cpp":
        if not llama_cpp_installed():
            raise BackendError("engine 'llama.cpp' needs llama-cpp-python: pip install 'kernelchat[gguf]' "
                               "(it compiles llama.cpp once, about 7 minutes on 2 cores)")
        if not gguf:
            raise BackendError(f"engine 'llama.cpp' runs GGUF files and ollama: models, and {model!r} is neither; "
                               f"use engine='transformers' (or 'auto')")
        return "llama.cpp", "asked for (engine='llama.cpp')"
    if not gguf:
        return "transformers", "a Hub model or a folder: transformers runs those"
    if not llama_cpp_installed():
        return "transformers", "a GGUF file, but llama-cpp-python is not installed: converted once for transformers"
    if embedded:  # measured: docs/performance.md, "The embedded model's engine"
        return "llama.cpp", "the embedded model's own GGUF, and llama.cpp is installed"
    return "llama.cpp", "a GGUF file, and llama.cpp is installed"


def load_in_process(model: str, engine: str, path: str | None = None, progress: bool = True) -> Backend:
    """The model loaded in this process on `engine` ("llama.cpp" or "transformers"), from `path`
    (what it resolved to) if given."""
    if engine == "llama.cpp":
        from agent.models.llamacpp_backend import LlamaCppBackend  # llama.cpp: a fraction of a second

        return LlamaCppBackend(model, path=path)
    from agent.models.transformers_backend import TransformersBackend  # torch and transformers: seconds

    backend = TransformersBackend(path or model, progress=progress)
    backend.model = model  # replies and notes name the model as the user did
    return backend


__all__ = ["ENGINES", "choose_engine", "llama_cpp_installed", "load_in_process"]
