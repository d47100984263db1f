"""Model backends: one interface for OpenAI-compatible servers and local Hugging Face models.

Model strings: `gpt-4o-mini` or `openai:NAME` (OpenAI, or any compatible server with
`base_url`); and models run here: `hf:smollm2` (the embedded default), `hf:ORG/NAME[@REVISION]`
(a Hugging Face Hub model: from the local cache, else downloaded into it; HF_HUB_OFFLINE=1: the cache
only), `ollama:NAME[:TAG]` (a model pulled with Ollama, from $OLLAMA_MODELS), a local folder, or a
`.gguf` file (GGUF files, Ollama's and the embedded one run on llama.cpp where llama-cpp-python is installed, else
they are converted once to a 16-bit safetensors cache for transformers: see choose_engine). With no
model: `KERNELCHAT_MODEL`, else `gpt-4o-mini` when OPENAI_API_KEY is set, else the embedded
`hf:smollm2` (offline, no key). agent/models/sources.py finds Hub and Ollama models.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from agent.core.backend import Backend, BackendError, Capabilities
from agent.core.dirs import cache_dir, overlaps
from agent.models.cassette import Cassette, CassetteError, RecordingBackend, ReplayBackend
from agent.models.embedded import EMBEDDED_ALIASES
from agent.models.engines import ENGINES, choose_engine, llama_cpp_installed, load_in_process
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


def get_backend(model: str | None = None, *, base_url: str | None = None, api_key: str | None = None,
                progress: bool = True, keep_alive: float = 0.0, workspace: str | os.PathLike | None = None,
                engine: str = "auto", images: bool | None = None) -> Backend:
    """The backend for a model string (see the module docstring). `keep_alive` > 0: a local model is
    kept loaded in a background process for that many seconds after its last use, and later
    commands connect to it (agent/models/resident.py); 0 loads it in this process. `workspace`: the
    sandbox's, where the code it runs can write: a local model's cache and server stay out of it.
    `engine`: what runs a local model ("auto": see choose_engine). `images`: whether a server's model
    takes images (None: OpenAI's vision models by name; local models get text only)."""
    model = model or default_model()
    if is_local_model(model) and not base_url:
        chosen, _ = choose_engine(model, engine)
        if chosen == "llama.cpp":  # the GGUF as it is: it must not lie where the sandboxed code writes
            name = Path(model[3:] if model.startswith("hf:") else model).expanduser()
            if workspace is not None and name.suffix.lower() == ".gguf" and overlaps(name, Path(workspace)):
                raise BackendError(f"the model file {name} lies in the workspace {workspace}, where the sandboxed "
                                   f"code could change it; keep the model outside the workspace")
        else:
            from agent.models.embedded import loads_from_cache

            if workspace is not None and loads_from_cache(model) and overlaps(cache_dir(), Path(workspace)):
                raise BackendError(f"kernelchat's model cache {cache_dir()} overlaps the workspace {workspace}, "
                                   f"where the sandboxed code could change the model; set KERNELCHAT_CACHE to a "
                                   f"folder outside it, or choose another workspace")
        # Loading weights takes time: one instance per model and engine in this process (a resident
        # one per workspace: each is checked against the runtime folder).
        with _local_lock:
            key = f"{model}\0{chosen}\0" + (f"resident\0{workspace}" if keep_alive > 0 else "local")
            if key not in _local_cache:
                _local_cache[key] = _load_local(model, chosen, progress, keep_alive, workspace)
            return _local_cache[key]
    from agent.models.openai_backend import OpenAIBackend

    return OpenAIBackend(model, base_url=base_url, api_key=api_key, images=images)


def preload_transformers() -> None:
    """Import the transformers engine (torch, transformers: seconds), for a caller that times it apart."""
    import agent.models.transformers_backend  # noqa: F401


def _load_local(model: str, engine: str, progress: bool, keep_alive: float,
                workspace: str | os.PathLike | None) -> Backend:
    from agent.models.resident import ResidentBackend, ResidentUnavailable

    if keep_alive > 0:
        try:
            return ResidentBackend(model, keep_alive=keep_alive, progress=progress, workspace=workspace, engine=engine)
        except ResidentUnavailable as e:  # an unsafe runtime folder or server: load it here, and say why
            import warnings

            warnings.warn(f"the model is loaded in this process: {e}", stacklevel=3)
    return load_in_process(model, engine, progress=progress)


# What front ends use of the models: they import from here, never from the modules.
__all__ = ["Backend", "BackendError", "Capabilities", "get_backend", "default_model", "is_local_model", "EMBEDDED",
           "ENGINES", "choose_engine", "llama_cpp_installed",
           "EMBEDDED_ALIASES", "OLLAMA_PREFIX", "KEEP_ALIVE_DEFAULT", "Cassette", "CassetteError", "RecordingBackend",
           "ReplayBackend", "context_window", "count_request", "preload_transformers", "prices", "resident_servers",
           "stop_servers"]
