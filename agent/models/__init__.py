"""Model backends: one interface for OpenAI-compatible servers and local Hugging Face models.

Model strings: `gpt-4o-mini` or `openai:NAME` (OpenAI, or any compatible server with
`base_url`); and models run here: `hf:smollm2` (the embedded default), `hf:ORG/NAME[@REVISION]`
(a Hugging Face Hub model: from the local cache, else downloaded into it; HF_HUB_OFFLINE=1: the cache
only), `ollama:NAME[:TAG]` (a model pulled with Ollama, from $OLLAMA_MODELS), a local folder, or a
`.gguf` file (GGUF files and Ollama's run on llama.cpp where llama-cpp-python is installed, else
they are converted once to a 16-bit safetensors cache for transformers: see choose_engine). With no
model: `KERNELCHAT_MODEL`, else `gpt-4o-mini` when OPENAI_API_KEY is set, else the embedded
`hf:smollm2` (offline, no key). agent/models/sources.py finds Hub and Ollama models.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from agent.core.backend import Backend, BackendError, Capabilities
from agent.core.dirs import cache_dir, overlaps
from agent.models.cassette import Cassette, CassetteError, RecordingBackend, ReplayBackend
from agent.models.embedded import EMBEDDED_ALIASES
from agent.models.pricing import context_window, is_local_model, prices
from agent.models.resident import KEEP_ALIVE_DEFAULT, stop_servers
from agent.models.resident import servers as resident_servers
from agent.models.sources import OLLAMA_PREFIX
from agent.models.tokens import count_request

EMBEDDED = "hf:smollm2"
_local_cache: dict[str, Any] = {}
_local_lock = threading.Lock()


def default_model() -> str:
    if os.environ.get("KERNELCHAT_MODEL"):
        return os.environ["KERNELCHAT_MODEL"]
    return "gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else EMBEDDED


ENGINES = ("auto", "llama.cpp", "transformers")


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def choose_engine(model: str, engine: str = "auto") -> tuple[str, str]:
    """The engine a local model runs on, and why: llama.cpp for GGUF files and ollama: models where
    it is installed (`kernelchat[gguf]`), transformers for Hub models, folders, and the embedded
    model (its number grounding is a transformers logits processor). `engine` asks for one; a
    request that cannot be met is a BackendError saying what to do."""
    if engine not in ENGINES:
        raise BackendError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    gguf = model.lower() not in EMBEDDED_ALIASES and (model.startswith(OLLAMA_PREFIX) or model.lower().endswith(".gguf"))
    if engine == "transformers":
        return "transformers", "asked for (engine='transformers')"
    if engine == "llama.cpp":
        if not llama_cpp_installed():
            raise BackendError("engine 'llama.cpp' needs llama-cpp-python: pip install 'kernelchat[gguf]' "
                               "(it compiles llama.cpp once, about 7 minutes on 2 cores)")
        if not gguf and model.lower() not in EMBEDDED_ALIASES:
            raise BackendError(f"engine 'llama.cpp' runs GGUF files and ollama: models, and {model!r} is neither; "
                               f"use engine='transformers' (or 'auto')")
        return "llama.cpp", "asked for (engine='llama.cpp')"
    if not gguf:
        return "transformers", ("the embedded model: its number grounding runs on transformers" if model.lower()
                                in EMBEDDED_ALIASES else "a Hub model or a folder: transformers runs those")
    if not llama_cpp_installed():
        return "transformers", "a GGUF file, but llama-cpp-python is not installed: converted once for transformers"
    return "llama.cpp", "a GGUF file, and llama.cpp is installed"


def get_backend(model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                progress: bool = True, keep_alive: float = 0.0, workspace: str | os.PathLike | None = None,
                engine: str = "auto") -> Backend:
    """The backend for a model string (see the module docstring). `keep_alive` > 0: a local model is
    kept loaded in a background process for that many seconds after its last use, and later
    commands connect to it (agent/models/resident.py); 0 loads it in this process. `workspace`: the
    sandbox's, where the code it runs can write: a local model's cache and server stay out of it.
    `engine`: what runs a local model ("auto": see choose_engine)."""
    model = model or default_model()
    if is_local_model(model) and not base_url:
        chosen, _ = choose_engine(model, engine)
        if chosen == "llama.cpp":  # the GGUF as it is, loaded in a fraction of a second: in this process
            name = Path(model[3:] if model.startswith("hf:") else model).expanduser()
            if workspace is not None and name.suffix.lower() == ".gguf" and overlaps(name, Path(workspace)):
                raise BackendError(f"the model file {name} lies in the workspace {workspace}, where the sandboxed "
                                   f"code could change it; keep the model outside the workspace")
            with _local_lock:
                key = f"{model}\0llama.cpp"
                if key not in _local_cache:
                    from agent.models.llamacpp_backend import LlamaCppBackend

                    _local_cache[key] = LlamaCppBackend(model)
                return _local_cache[key]
        from agent.models.embedded import loads_from_cache

        if workspace is not None and loads_from_cache(model) and overlaps(cache_dir(), Path(workspace)):
            raise BackendError(f"kernelchat's model cache {cache_dir()} overlaps the workspace {workspace}, where "
                               f"the sandboxed code could change the model; set KERNELCHAT_CACHE to a folder "
                               f"outside it, or choose another workspace")
        # Loading weights takes seconds: one instance per model in this process (a resident one per
        # workspace: each is checked against the runtime folder).
        with _local_lock:
            key = f"{model}\0resident\0{workspace}" if keep_alive > 0 else f"{model}\0local"
            if key not in _local_cache:
                _local_cache[key] = _load_local(model, progress, keep_alive, workspace)
            return _local_cache[key]
    from agent.models.openai_backend import OpenAIBackend

    return OpenAIBackend(model, base_url=base_url, api_key=api_key)


def preload_transformers() -> None:
    """Import the transformers engine (torch, transformers: seconds), for a caller that times it apart."""
    import agent.models.transformers_backend  # noqa: F401


def _load_local(model: str, progress: bool, keep_alive: float, workspace: str | os.PathLike | None) -> Backend:
    if keep_alive > 0:
        from agent.models.resident import ResidentBackend, ResidentUnavailable

        try:
            return ResidentBackend(model, keep_alive=keep_alive, progress=progress, workspace=workspace)
        except ResidentUnavailable as e:  # an unsafe runtime folder or server: load it here, and say why
            import warnings

            warnings.warn(f"the model is loaded in this process: {e}", stacklevel=3)
    from agent.models.transformers_backend import TransformersBackend

    return TransformersBackend(model, progress=progress)


# What front ends use of the models: they import from here, never from the modules.
__all__ = ["Backend", "BackendError", "Capabilities", "get_backend", "default_model", "is_local_model", "EMBEDDED",
           "ENGINES", "choose_engine", "llama_cpp_installed",
           "EMBEDDED_ALIASES", "OLLAMA_PREFIX", "KEEP_ALIVE_DEFAULT", "Cassette", "CassetteError", "RecordingBackend",
           "ReplayBackend", "context_window", "count_request", "preload_transformers", "prices", "resident_servers",
           "stop_servers"]
