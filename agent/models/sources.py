"""Where local models come from besides folders and .gguf files: the Hugging Face Hub and Ollama.

`hf:ORG/NAME[@REVISION]`: its snapshot folder in the usual Hugging Face cache (HF_HOME, HF_HUB_CACHE),
asked first without the network (a cached model starts offline), else downloaded (HF_HUB_OFFLINE=1:
the cache only). Only what a transformers causal LM loads is fetched: no .bin, gguf or onnx copies of
safetensors weights. A token reaches huggingface_hub from its environment (HF_TOKEN), never from us.
`ollama:[HOST/][NAMESPACE/]NAME[:TAG]`: the GGUF blob a pulled model's manifest names, under
$OLLAMA_MODELS (default ~/.ollama/models); embedded.py converts it like any .gguf file.
Each failure is a ModelSourceError: one sentence saying what is wrong and what to do.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

OLLAMA_PREFIX = "ollama:"


class ModelSourceError(FileNotFoundError):
    """No model this machine has or can fetch (a FileNotFoundError: the backends make it a BackendError)."""


# --- the Hugging Face Hub ----------------------------------------------------------------------------

HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"(?:{HUB_PART}/)?{HUB_PART}")
HUB_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}")
# What from_pretrained reads for a causal LM. Top level only: subfolders hold onnx/, gguf/ or
# original/ copies of the same weights, often larger than the model itself.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
PYTORCH_WEIGHTS = ["pytorch_model*.bin"]  # asked for only when a repo has no safetensors
SUBFOLDERS = ["*/*"]


@dataclass(frozen=True)
class HubModel:
    """A Hub model string, checked."""

    repo_id: str
    revision: str | None  # None: the repo's default branch

    @property
    def name(self) -> str:
        return f"hf:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def parse_hub_id(spec: str) -> HubModel:
    """`ORG/NAME` or `ORG/NAME@REVISION` (no `hf:`) -> HubModel; a malformed id is a ModelSourceError."""
    repo_id, at, revision = spec.partition("@")
    bad_revision = at and not (HUB_REVISION.fullmatch(revision) and ".." not in revision)
    if not HUB_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git") or bad_revision:
        raise ModelSourceError(f"hf:{spec} is neither a model folder or .gguf file that exists nor a Hugging Face "
                               f"model id: write hf:ORG/NAME (letters, digits, '-', '_', '.'), optionally @REVISION")
    return HubModel(repo_id, revision or None)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE): as huggingface_hub read it at import, or as set since."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        p.is_file() for pattern in ("*.safetensors", *PYTORCH_WEIGHTS) for p in folder.glob(pattern))


def hub_model_folder(spec: str, progress: bool = True) -> Path:
    """The snapshot folder of a Hub model: the cached one when complete (no network), else downloaded
    into the cache (unless HF_HUB_OFFLINE), with huggingface_hub's progress bars if `progress`."""
    from huggingface_hub.utils import LocalEntryNotFoundError

    model = parse_hub_id(spec)
    try:  # LocalEntryNotFoundError: not cached, or partly (IncompleteSnapshotError)
        folder = fetch_snapshot(model, MODEL_FILES, local_only=True, progress=False)
        if has_weights(folder):
            return folder
    except LocalEntryNotFoundError:
        pass
    if hub_offline():
        raise ModelSourceError(not_cached(model, "HF_HUB_OFFLINE is set (unset it to download the model)"))
    try:
        folder = fetch_snapshot(model, MODEL_FILES, local_only=False, progress=progress)
        if not has_weights(folder):  # an older repo with PyTorch weights only
            folder = fetch_snapshot(model, MODEL_FILES + PYTORCH_WEIGHTS, local_only=False, progress=progress)
    except Exception as e:  # huggingface_hub's OSErrors, and its HTTP client's (requests, httpx: by version)
        raise hub_error(model, e) from None
    if not has_weights(folder):
        raise ModelSourceError(f"{model.name} has no config.json with safetensors or PyTorch weights (a GGUF-only "
                               f"repo? download its .gguf file and pass that path)")
    return folder


def fetch_snapshot(model: HubModel, patterns: list[str], local_only: bool, progress: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import tqdm as hub_tqdm

    class SilentBar(hub_tqdm):  # a class, as thread_map wants one; `disable` wins over the library's choice
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

    return Path(snapshot_download(model.repo_id, revision=model.revision, allow_patterns=patterns,
                                  ignore_patterns=SUBFOLDERS, local_files_only=local_only,
                                  tqdm_class=None if progress else SilentBar))


def not_cached(model: HubModel, reason: str) -> str:
    from huggingface_hub import constants

    revision = f" --revision {model.revision}" if model.revision else ""
    return (f"{model.name} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}: connect "
            f"and run again, or copy the model folder here and pass its path, or run `hf download {model.repo_id}"
            f"{revision}` on a machine that is online and copy its cache here")


def hub_error(model: HubModel, error: Exception) -> ModelSourceError:
    """A failed download as one sentence: offline, not found, gated, refused, or the Hub's own trouble."""
    from huggingface_hub import constants
    from huggingface_hub.utils import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    # snapshot_download wraps a connection error or a Hub failure in a LocalEntryNotFoundError
    cause = error.__cause__ if isinstance(error, LocalEntryNotFoundError) and error.__cause__ else error
    page = f"{constants.ENDPOINT}/{model.repo_id}"
    response = getattr(cause, "response", None) if isinstance(cause, HfHubHTTPError) else None
    status = getattr(response, "status_code", None)
    # Connection errors are the HTTP client's, whose classes change with huggingface_hub's version.
    unreachable = status is None and (isinstance(error, LocalEntryNotFoundError) or isinstance(
        cause, (ConnectionError, TimeoutError)) or re.search("Connect|Timeout|Network|Proxy", type(cause).__name__))
    if isinstance(cause, GatedRepoError):
        text = (f"{model.name} is gated on the Hugging Face Hub: accept its conditions at {page} and set HF_TOKEN "
                f"in the environment to a token of that account")
    elif isinstance(cause, RepositoryNotFoundError):
        text = (f"{model.name} was not found on the Hugging Face Hub (or it is private or gated): check the name at "
                f"{page}; for a private or gated model set HF_TOKEN in the environment")
    elif isinstance(cause, RevisionNotFoundError):
        text = f"{model.name}: the Hub repo has no revision {model.revision!r}: name a branch, tag or commit of {page}"
    elif status in (401, 403):
        text = (f"the Hugging Face Hub refused {model.name} (HTTP {status}): accept its conditions at {page} if it "
                f"is gated, and set HF_TOKEN in the environment to a token with access")
    elif unreachable:
        text = not_cached(model, f"the Hub ({constants.ENDPOINT}) cannot be reached (offline?)")
    else:
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        text = (f"{model.name} could not be downloaded from the Hugging Face Hub ({detail}): try again later, or "
                f"pass a model folder or .gguf file")
    return ModelSourceError(text)


# --- Ollama ------------------------------------------------------------------------------------------

OLLAMA_REGISTRY, OLLAMA_NAMESPACE, OLLAMA_TAG = "registry.ollama.ai", "library", "latest"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is about 1 kB
# No '/' and no leading '.': a part can never climb out of the manifests folder.
OLLAMA_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
OLLAMA_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}(?::[0-9]{1,5})?")
OLLAMA_TAG_CHARS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
BLOB_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class OllamaLayer(BaseModel):
    """One blob of an Ollama model: weights, template, params, license..."""

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int = Field(default=0, ge=0)


class OllamaManifest(BaseModel):
    """The part of an Ollama manifest (an OCI image manifest) that says where the weights are."""

    layers: list[OllamaLayer]


@dataclass(frozen=True)
class OllamaModel:
    """An Ollama model name, checked: its manifest is manifests/HOST/NAMESPACE/MODEL/TAG."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def name(self) -> str:
        """As `ollama list` writes it (no default registry or `library/`)."""
        default_host = self.host == OLLAMA_REGISTRY
        prefix = ("" if default_host and self.namespace == OLLAMA_NAMESPACE else
                  f"{self.namespace}/" if default_host else f"{self.host}/{self.namespace}/")
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def slug(self) -> str:
        """A readable cache folder stem: `ollama-smollm2-135m`."""
        return "ollama-" + re.sub(r"[^a-z0-9._-]+", "-", self.name.lower()).strip("-")


def parse_ollama_name(spec: str) -> OllamaModel:
    """`NAME[:TAG]`, `NAMESPACE/NAME[:TAG]` or `HOST/NAMESPACE/NAME[:TAG]` (no `ollama:`) -> OllamaModel."""
    path, tag = spec, OLLAMA_TAG
    head, colon, tail = spec.rpartition(":")
    if colon and "/" not in tail:  # a colon before the last '/' is a host's port
        path, tag = head, tail
    parts = path.split("/")
    parts = [OLLAMA_REGISTRY, OLLAMA_NAMESPACE][:max(3 - len(parts), 0)] + parts
    if not (len(parts) == 3 and OLLAMA_HOST.fullmatch(parts[0]) and OLLAMA_TAG_CHARS.fullmatch(tag)
            and all(OLLAMA_PART.fullmatch(p) for p in parts[1:])):
        raise ModelSourceError(f"ollama:{spec} is not an Ollama model name: write ollama:NAME or ollama:NAME:TAG as "
                               f"`ollama list` shows it (letters, digits, '-', '_', '.')")
    return OllamaModel(parts[0], parts[1], parts[2], tag)


def ollama_models_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()


def entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def find_entry(folder: Path, name: str) -> Path | None:
    """`folder/name`, else an entry of that name in other case (Ollama names ignore case)."""
    return folder / name if (folder / name).exists() else next(
        (folder / e for e in entries(folder) if e.lower() == name.lower()), None)


def pulled_models(root: Path) -> list[str]:
    """The models under `root/manifests`, named as `ollama list` does."""
    top = root / "manifests"
    return sorted(OllamaModel(h, n, m, t).name for h in entries(top) for n in entries(top / h)
                  for m in entries(top / h / n) for t in entries(top / h / n / m) if (top / h / n / m / t).is_file())


def manifest_path(model: OllamaModel, root: Path) -> Path:
    """The manifest file of a pulled model; not pulled: a ModelSourceError listing what is there."""
    if not (root / "manifests").is_dir():
        raise ModelSourceError(f"there is no Ollama models folder at {root}: run `ollama pull {model.name}`, or set "
                               f"OLLAMA_MODELS to the folder Ollama keeps its models in")
    found: Path | None = root / "manifests"
    for part in (model.host, model.namespace, model.model, model.tag):
        found = find_entry(found, part) if found is not None else None
    if found is not None and not found.is_dir():  # read_manifest refuses what is not a regular file
        return found
    there = pulled_models(root)
    tags = [n for n in there if n.rpartition(":")[0].lower() == model.name.rpartition(":")[0].lower()]
    seen = (f"its tags here: {', '.join(tags)}" if tags else f"the models here: {', '.join(there[:20])}"
            if there else "no models are pulled here")
    raise ModelSourceError(f"{model.name} is not pulled in Ollama ({root}): run `ollama pull {model.name}` ({seen})")


def read_manifest(path: Path, model: OllamaModel) -> OllamaManifest:
    """Parse a manifest, reading at most MAX_MANIFEST_BYTES of a regular file (O_NONBLOCK and fstat:
    a FIFO or device put in its place is refused instead of blocking or streaming)."""
    again = f"run `ollama pull {model.name}` again"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ModelSourceError(f"cannot read the Ollama manifest {path} ({e.strerror}): {again}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelSourceError(f"the Ollama manifest {path} is not a regular file: remove it and {again}")
        data = b""
        while len(data) <= MAX_MANIFEST_BYTES and (chunk := os.read(fd, MAX_MANIFEST_BYTES + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ModelSourceError(f"the Ollama manifest {path} is over {MAX_MANIFEST_BYTES} bytes, not a manifest: "
                               f"{again}")
    try:
        return OllamaManifest.model_validate_json(data)
    except ValidationError as e:
        what = "is not valid JSON" if e.errors()[0]["type"] == "json_invalid" else "is not an Ollama manifest"
        raise ModelSourceError(f"the Ollama manifest {path} {what}: {again}") from None


def ollama_blob(model: OllamaModel, root: Path | None = None) -> Path:
    """The GGUF file of a pulled Ollama model: its manifest's model layer, in blobs/."""
    root = root or ollama_models_dir()
    path = manifest_path(model, root)
    again = f"run `ollama pull {model.name}` again"
    layer = next((la for la in read_manifest(path, model).layers if la.media_type == OLLAMA_MODEL_LAYER), None)
    if layer is None:
        raise ModelSourceError(f"the Ollama manifest {path} has no model layer ({OLLAMA_MODEL_LAYER}): {again}")
    digest = BLOB_DIGEST.fullmatch(layer.digest)
    if digest is None:
        raise ModelSourceError(f"the Ollama manifest {path} names its weights {layer.digest!r}, not a sha256 digest: "
                               f"{again}")
    blob = root / "blobs" / f"sha256-{digest.group(1)}"
    if not blob.is_file():
        raise ModelSourceError(f"the weights of {model.name} ({blob}) are missing from the Ollama models folder: "
                               f"{again}")
    if layer.size and blob.stat().st_size != layer.size:  # a blob cut short or replaced by hand
        raise ModelSourceError(f"the weights of {model.name} ({blob}) are {blob.stat().st_size} bytes, its manifest "
                               f"says {layer.size}: {again}")
    with open(blob, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelSourceError(f"the weights of {model.name} ({blob}) are not a GGUF file, which is all kernelchat "
                                   f"reads from Ollama: {again}, or use its Hub model (hf:ORG/NAME)")
    return blob
