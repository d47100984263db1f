"""Getting models as users do (agent/models/sources.py): Hub models downloaded from a stand-in for
the Hub (a real HTTP server on 127.0.0.1 that answers what huggingface_hub's snapshot_download asks)
and Ollama models found in a real Ollama folder layout.

The downloads run in a subprocess with HF_HOME and HF_ENDPOINT in its environment, as a user's
command does: huggingface_hub reads both when it is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

import pytest

from agent.core.backend import BackendError
from agent.models import is_local_model
from agent.models.embedded import embedded_gguf_path, embedded_model_dir, resolve_model_path
from agent.models.sources import (MAX_MANIFEST_BYTES, ModelSourceError, ollama_blob, parse_hub_id,
                                  parse_ollama_name)

ROOT = Path(__file__).resolve().parents[3]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = "test-org/tiny-model"
# What a transformers causal LM needs of the tiny repo: its decoys (.bin, .gguf, onnx/, original/) are not fetched.
NEEDED = {"chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
          "tokenizer_config.json"}


class StandInHub:
    """The Hub's API and file routes for a few repos (folders), in a thread; `requests` records each call."""

    def __init__(self, repos: dict[str, Path], gated: frozenset[str] = frozenset()) -> None:
        self.repos, self.gated, self.requests = repos, gated, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append(f"{h.command} {h.path}")
        code, data, headers = self.route(path)
        h.send_response(code)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(data)

    def route(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        if path == "/api/agent-harnesses":  # huggingface_hub's own telemetry registry
            return 200, b'{"standardEnvVars": [], "harnesses": {}}', {}
        for repo, folder in self.repos.items():
            files = {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}
            if path.startswith(f"/api/models/{repo}/revision/"):
                if path.endswith("/nope"):
                    return 404, b"{}", {"X-Error-Code": "RevisionNotFound"}
                info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                return 200, json.dumps(info).encode(), {"Content-Type": "application/json"}
            if path == f"/api/models/{repo}/tree/{COMMIT}":
                tree = [{"type": "file", "path": f, "size": p.stat().st_size,
                         "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for f, p in files.items()]
                return 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}
            if path.startswith(f"/{repo}/resolve/{COMMIT}/"):
                if repo in self.gated:
                    return 403, b"", {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}
                p = files.get(path.split(f"/resolve/{COMMIT}/", 1)[1])
                if p is None:
                    return 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
                data = p.read_bytes()
                return 200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        return 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 32, 2 layers) with the embedded SmolLM2's tokenizer, saved as a
    Hub repo is, beside the duplicate weights a download must skip."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    source, folder = embedded_model_dir(progress=False), tmp_path_factory.mktemp("repo")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, folder / name)
    smol = json.loads((source / "config.json").read_text())
    config = LlamaConfig(vocab_size=smol["vocab_size"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=smol.get("bos_token_id"),
                         eos_token_id=smol.get("eos_token_id"))
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(folder)
    for decoy in ("pytorch_model.bin", "model.gguf", "onnx/model.onnx", "original/model.safetensors", "README.md"):
        (folder / decoy).parent.mkdir(exist_ok=True)
        (folder / decoy).write_bytes(b"not for transformers")
    return folder


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """A fresh HF_HOME for this test (huggingface_hub's cache constant too, for code run in this process)."""
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN",
                 "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


@pytest.fixture
def hub(tiny_repo, tmp_path) -> Iterator[StandInHub]:
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    shutil.copy(tiny_repo / "config.json", bin_only / "config.json")
    (bin_only / "pytorch_model.bin").write_bytes(b"weights")
    stand_in = StandInHub({TINY: tiny_repo, "test-org/bin-only": bin_only, "test-org/gated": tiny_repo},
                          gated=frozenset({"test-org/gated"}))
    yield stand_in
    stand_in.stop()


def resolve_elsewhere(model: str, endpoint: str, **env: str) -> tuple[Path | None, str]:
    """resolve_model_path(model) in a fresh process with HF_ENDPOINT (and `env`) set: (folder, "") or
    (None, the error's message)."""
    code = ("import sys\nfrom agent.models.embedded import resolve_model_path\n"
            "try:\n    print(resolve_model_path(sys.argv[1], progress=False))\n"
            "except FileNotFoundError as e:\n    print('ERROR', e)\n")
    run = subprocess.run([sys.executable, "-c", code, model], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_ENDPOINT": endpoint, **env})
    assert run.returncode == 0, run.stderr
    out = run.stdout.strip().splitlines()[-1]
    return (None, out[len("ERROR "):]) if out.startswith("ERROR ") else (Path(out), "")


def test_a_hub_model_is_downloaded_once_then_loads_from_the_cache_alone(hub, hf_home, monkeypatch):
    folder, error = resolve_elsewhere(f"hf:{TINY}", hub.url)
    assert not error
    assert folder == hf_home / "hub" / "models--test-org--tiny-model" / "snapshots" / COMMIT
    assert {p.name for p in folder.iterdir()} == NEEDED  # no .bin, .gguf, onnx/ or original/ copies
    asked = len(hub.requests)
    assert asked and not [r for r in hub.requests if "pytorch_model.bin" in r or "gguf" in r or "onnx" in r]
    hub.stop()
    assert resolve_elsewhere(f"hf:{TINY}", hub.url) == (folder, "")  # the cache first: no server needed
    assert len(hub.requests) == asked

    from agent.models.transformers_backend import TransformersBackend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = TransformersBackend(f"hf:{TINY}", progress=False)
    assert type(backend.hf_model).__name__ == "LlamaForCausalLM" and backend.hf_model.config.hidden_size == 32
    from agent.core.messages import Message

    reply = backend.complete([Message(role="user", content="Hi")], max_tokens=3)
    assert reply.usage.completion_tokens <= 3


def test_a_revision_and_a_repo_with_pytorch_weights_only(hub, hf_home):
    folder, error = resolve_elsewhere(f"hf:{TINY}@v1.0", hub.url)
    assert not error and folder.name == COMMIT
    assert (hf_home / "hub" / "models--test-org--tiny-model" / "refs" / "v1.0").read_text() == COMMIT
    folder, error = resolve_elsewhere("hf:test-org/bin-only", hub.url)
    assert not error and {p.name for p in folder.iterdir()} == {"config.json", "pytorch_model.bin"}
    folder, error = resolve_elsewhere(f"hf:{TINY}@nope", hub.url)
    assert folder is None and error.startswith(f"hf:{TINY}@nope: the Hub repo has no revision 'nope'")


def test_an_unreachable_hub_is_one_sentence(hf_home, free_port):
    folder, error = resolve_elsewhere(f"hf:{TINY}", f"http://127.0.0.1:{free_port}")
    assert folder is None
    assert error == (f"hf:{TINY} is not in the local Hugging Face cache ({hf_home / 'hub'}) and the Hub "
                     f"(http://127.0.0.1:{free_port}) cannot be reached (offline?): connect and run again, or copy "
                     f"the model folder here and pass its path, or run `hf download {TINY}` on a machine that is "
                     f"online and copy its cache here")


def test_offline_mode_with_an_empty_cache_asks_no_one(hub, hf_home):
    folder, error = resolve_elsewhere(f"hf:{TINY}", hub.url, HF_HUB_OFFLINE="1")
    assert folder is None and hub.requests == []
    assert error.startswith(f"hf:{TINY} is not in the local Hugging Face cache ({hf_home / 'hub'}) and "
                            f"HF_HUB_OFFLINE is set (unset it to download the model): connect and run again")


def test_a_missing_or_gated_repo_is_one_sentence(hub, hf_home):
    folder, error = resolve_elsewhere("hf:test-org/no-such-model", hub.url)
    assert folder is None and error == (
        f"hf:test-org/no-such-model was not found on the Hugging Face Hub (or it is private or gated): check the "
        f"name at {hub.url}/test-org/no-such-model; for a private or gated model set HF_TOKEN in the environment")
    folder, error = resolve_elsewhere("hf:test-org/gated", hub.url)
    assert folder is None and error.startswith(f"hf:test-org/gated is gated on the Hugging Face Hub: accept its "
                                               f"conditions at {hub.url}/test-org/gated and set HF_TOKEN")


@pytest.mark.parametrize("model", ["hf:a/b/c", "hf:bad--name/x", "hf:org/name@", "hf:../x", "hf:org/x@a..b",
                                   "hf:./no-such-folder", "hf:org/na me"])
def test_a_malformed_hub_id_says_so_without_the_network(model, hf_home):
    with pytest.raises(ModelSourceError, match=r"is neither a model folder or \.gguf file that exists nor a "
                                               r"Hugging Face model id: write hf:ORG/NAME"):
        resolve_model_path(model)
    assert parse_hub_id("Qwen/Qwen2.5-0.5B-Instruct@main").repo_id == "Qwen/Qwen2.5-0.5B-Instruct"


def test_the_backend_says_the_sentence(hf_home, monkeypatch):
    from agent.models.transformers_backend import TransformersBackend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackendError, match=r"^hf:nobody/absent is not in the local Hugging Face cache .* "
                                           r"HF_HUB_OFFLINE is set"):
        TransformersBackend("hf:nobody/absent", progress=False)


# --- Ollama ------------------------------------------------------------------------------------------


def pull(root: Path, name: tuple[str, str, str, str], weights: bytes | Path) -> Path:
    """Lay out a model as `ollama pull` does: blobs/sha256-HEX (weights, config, template, params)
    and manifests/HOST/NAMESPACE/MODEL/TAG; returns the weights' blob."""
    def blob(data: bytes | Path) -> dict[str, object]:
        digest = hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()
        path = root / "blobs" / f"sha256-{digest}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            try:
                os.link(data, path)  # a hard link: same bytes, no copy, no symlink
            except OSError:
                shutil.copyfile(data, path)
        else:
            path.write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": path.stat().st_size}

    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           **blob(b'{"model_format":"gguf","model_family":"llama"}')},
                "layers": [{"mediaType": "application/vnd.ollama.image.model", **blob(weights)},
                           {"mediaType": "application/vnd.ollama.image.template", **blob(b"{{ .Prompt }}")},
                           {"mediaType": "application/vnd.ollama.image.params", **blob(b'{"stop":["<|im_end|>"]}')}]}
    path = root / "manifests" / Path(*name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return root / "blobs" / ("sha256-" + manifest["layers"][0]["digest"].split(":")[1])


@pytest.fixture
def ollama(tmp_path, monkeypatch) -> Path:
    """An Ollama models folder with smollm2:135m (a small stand-in GGUF) pulled, as OLLAMA_MODELS."""
    root = tmp_path / "ollama"
    pull(root, ("registry.ollama.ai", "library", "smollm2", "135m"), b"GGUF" + bytes(60))
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def manifest_of(root: Path) -> Path:
    return root / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"


def test_an_ollama_model_is_the_gguf_blob_its_manifest_names(ollama):
    digest = json.loads(manifest_of(ollama).read_text())["layers"][0]["digest"]
    assert ollama_blob(parse_ollama_name("smollm2:135m")) == ollama / "blobs" / digest.replace(":", "-")
    other = pull(ollama, ("registry.ollama.ai", "someone", "tiny", "q4"), b"GGUF" + bytes(8))
    hub = pull(ollama, ("hf.co", "org", "Tiny-GGUF", "Q4_K_M"), b"GGUF" + bytes(9))
    assert ollama_blob(parse_ollama_name("someone/tiny:q4")) == other
    assert ollama_blob(parse_ollama_name("hf.co/org/tiny-gguf:q4_k_m")) == hub  # names ignore case
    assert parse_ollama_name("hf.co/org/Tiny-GGUF:Q4_K_M").slug == "ollama-hf.co-org-tiny-gguf-q4_k_m"
    assert parse_ollama_name("smollm2").tag == "latest" and is_local_model("ollama:smollm2")


@pytest.mark.parametrize("spec", ["../../etc", "../../../etc/passwd:x", "smollm2:../../x", "a/../../b", "/etc/passwd",
                                  ".hidden", "smollm2:", "", "a/b/c/d", "x:y:z", "smöllm"])
def test_a_name_cannot_leave_the_manifests_folder(spec, ollama):
    with pytest.raises(ModelSourceError, match=r"is not an Ollama model name: write ollama:NAME or ollama:NAME:TAG"):
        resolve_model_path(f"ollama:{spec}")


def test_what_is_not_pulled_says_what_is(ollama, tmp_path, monkeypatch):
    with pytest.raises(ModelSourceError) as e:
        resolve_model_path("ollama:smollm2:360m")
    assert str(e.value) == (f"smollm2:360m is not pulled in Ollama ({ollama}): run `ollama pull smollm2:360m` "
                            f"(its tags here: smollm2:135m)")
    with pytest.raises(ModelSourceError, match=r"^qwen3:latest is not pulled .* \(the models here: smollm2:135m\)$"):
        resolve_model_path("ollama:qwen3")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelSourceError, match=r"^there is no Ollama models folder at .*nowhere: run `ollama pull "
                                               r"smollm2:135m`, or set OLLAMA_MODELS"):
        resolve_model_path("ollama:smollm2:135m")


def test_a_broken_pull_is_one_sentence_each(ollama):
    model, manifest = parse_ollama_name("smollm2:135m"), manifest_of(ollama)
    good = json.loads(manifest.read_text())
    blob = ollama / "blobs" / good["layers"][0]["digest"].replace(":", "-")
    again = "run `ollama pull smollm2:135m` again"

    def broken(text: str | bytes) -> str:
        manifest.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ModelSourceError) as e:
            ollama_blob(model)
        return str(e.value)

    assert broken("{not json") == f"the Ollama manifest {manifest} is not valid JSON: {again}"
    assert broken('{"layers": "no"}') == f"the Ollama manifest {manifest} is not an Ollama manifest: {again}"
    assert broken(json.dumps({**good, "layers": good["layers"][1:]})) == (
        f"the Ollama manifest {manifest} has no model layer (application/vnd.ollama.image.model): {again}")
    assert broken(b" " * (MAX_MANIFEST_BYTES + 1)).endswith(f"is over {MAX_MANIFEST_BYTES} bytes, not a manifest: "
                                                            f"{again}")
    odd = {**good, "layers": [{**good["layers"][0], "digest": "sha256:../../../etc/passwd"}]}
    assert "not a sha256 digest" in broken(json.dumps(odd))
    manifest.write_text(json.dumps(good))
    blob.write_bytes(b"GGUF" + bytes(10))
    assert broken(json.dumps(good)).endswith(f"are 14 bytes, its manifest says 64: {again}")
    blob.write_bytes(b"\x00" * 64)
    assert "are not a GGUF file" in broken(json.dumps(good))
    blob.unlink()
    assert broken(json.dumps(good)) == (f"the weights of smollm2:135m ({blob}) are missing from the Ollama models "
                                        f"folder: {again}")
    manifest.unlink()
    os.mkfifo(manifest)  # a FIFO in a manifest's place: refused at once, not waited on
    with pytest.raises(ModelSourceError, match=r"is not a regular file: remove it and run `ollama pull"):
        ollama_blob(model)


def test_a_resident_server_follows_the_blob(ollama, monkeypatch):
    """A new pull (a new blob) makes a new converted folder, so a new resident-server address."""
    import agent.models.embedded as embedded
    from agent.models.resident import Address

    def converted(gguf: Path, target: Path, progress: bool = True) -> Path:  # the folder, without the 30 s
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text(json.dumps({"source": str(gguf)}))
        return target

    monkeypatch.setattr(embedded, "converted_dir", converted)
    monkeypatch.setenv("KERNELCHAT_CACHE", str(ollama / "cache"))
    runtime = Path(tempfile.mkdtemp(prefix="kc-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    try:
        first = resolve_model_path("ollama:smollm2:135m")
        assert Path(first).name.startswith("gguf-ollama-smollm2-135m-")
        pull(ollama, ("registry.ollama.ai", "library", "smollm2", "135m"), b"GGUF" + bytes(61))  # a newer pull
        second = resolve_model_path("ollama:smollm2:135m")
        assert first != second
        assert Address.of("ollama:smollm2:135m", first).socket != Address.of("ollama:smollm2:135m", second).socket
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.slow
def test_an_ollama_model_is_converted_once_into_a_readable_cache_folder(tmp_path, monkeypatch):
    root = tmp_path / "ollama"
    pull(root, ("registry.ollama.ai", "library", "smollm2", "135m"), embedded_gguf_path())
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    monkeypatch.setenv("KERNELCHAT_CACHE", str(tmp_path / "cache"))
    folder = Path(resolve_model_path("ollama:smollm2:135m", progress=False))
    assert folder.parent == tmp_path / "cache" / "models" and folder.name.startswith("gguf-ollama-smollm2-135m-")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    link = tmp_path / "cache" / "models" / "ollama" / "ollama-smollm2-135m.gguf"  # transformers wants the suffix
    assert link.resolve() == ollama_blob(parse_ollama_name("smollm2:135m")).resolve()
    assert resolve_model_path("ollama:smollm2:135m", progress=False) == str(folder)  # cached: no second conversion
