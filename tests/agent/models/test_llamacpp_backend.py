"""The llama.cpp engine on real GGUF files: the embedded SmolLM2 (no tool template) and the
tool-trained Qwen2.5-Coder 0.5B. Each model is loaded once per test session (llama.cpp loads a GGUF
in a fraction of a second; the transformers fixtures beside them are the session's own)."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of `make setup` (kernelchat[gguf])")

from agent import Chat  # noqa: E402
from agent.core.backend import BackendError  # noqa: E402
from agent.core.messages import Done, Message, TextDelta, ToolCall, tool_result  # noqa: E402
from agent.models import choose_engine, get_backend  # noqa: E402
from agent.models.embedded import embedded_gguf_path  # noqa: E402
from agent.models.llamacpp_backend import LlamaCppBackend  # noqa: E402
from tools.python_tool import SCHEMA as PYTHON  # noqa: E402

LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                           "parameters": {"type": "object", "properties": {"word": {"type": "string"}},
                                                          "required": ["word"]}}}


@pytest.fixture(scope="session")
def llama_smollm2():
    return LlamaCppBackend("hf:smollm2")


@pytest.fixture(scope="session")
def llama_qwen(qwen_05b_gguf):
    return LlamaCppBackend(str(qwen_05b_gguf))


def conversation() -> list[Message]:
    call = ToolCall(id="call_1", name="python", arguments=json.dumps({"code": "print(6*7)"}))
    return [Message(role="system", content="You are helpful."), Message(role="user", content="What is 6*7?"),
            Message(role="assistant", content="", tool_calls=[call]), tool_result("call_1", "42", name="python"),
            Message(role="assistant", content="42."), Message(role="user", content="And 7*8?")]


def collect(backend, messages, tools=None, **kw):
    deltas, reply = [], None
    for ev in backend.stream(messages, tools, **kw):
        if isinstance(ev, TextDelta):
            deltas.append(ev.text)
        elif isinstance(ev, Done):
            reply = ev.reply
    return "".join(deltas), reply


def test_the_prompt_is_rendered_as_transformers_renders_it(llama_qwen, qwen_05b, llama_smollm2, local_backend):
    """The GGUF's own template, tools included, gives the same text (and tokens) on both engines."""
    for llama, hf in ((llama_qwen, qwen_05b), (llama_smollm2, local_backend)):
        for tools in (None, [PYTHON], [PYTHON, LOOKUP]):
            assert llama.render(conversation(), tools) == hf.render(conversation(), tools)
            assert llama.encode(conversation(), tools) == hf.encode(conversation(), tools)
    assert llama_qwen.capabilities.tools and not llama_smollm2.capabilities.tools  # as each template says
    assert llama_qwen.capabilities.parameters == pytest.approx(qwen_05b.capabilities.parameters, rel=0.01)
    assert llama_smollm2.tools_note and "no tool support" in llama_smollm2.tools_note and llama_qwen.tools_note is None


def test_a_reply_streams_stops_at_the_turn_end_and_counts_its_tokens(llama_qwen):
    messages = [Message(role="user", content="Say hello in one short sentence.")]
    text, reply = collect(llama_qwen, messages, max_tokens=40)
    assert reply.finish_reason == "stop" and text == reply.message.content and text.strip()
    assert "<|im_end|>" not in text and "<|im_start|>" not in text
    assert reply.usage.prompt_tokens == llama_qwen.count_prompt_tokens(messages)
    assert 0 < reply.usage.completion_tokens <= 40 and reply.usage.cost_usd == 0.0
    _, short = collect(llama_qwen, [Message(role="user", content="Count from 1 to 100, one number a line.")],
                       max_tokens=5)
    assert short.finish_reason == "length" and short.usage.completion_tokens == 5


def test_the_python_tool_is_called_with_valid_arguments(llama_qwen):
    messages = [Message(role="system", content="You are a helpful assistant. Use the python tool to compute."),
                Message(role="user", content="What is 2**100? Use Python.")]
    text, reply = collect(llama_qwen, messages, [PYTHON], max_tokens=120)
    assert reply.finish_reason == "tool_calls", reply.message.content
    call = reply.message.tool_calls[0]
    assert call.name == "python" and "2**100" in json.loads(call.arguments)["code"].replace(" ", "")
    assert "<tool_call>" not in text  # held back while it streams: shown as the call, not as text


def test_the_embedded_model_answers_python_with_a_fenced_block_that_becomes_a_call(llama_smollm2):
    messages = [Message(role="user", content="Compute 17*23 with Python. Reply with a ```python block.")]
    _, reply = collect(llama_smollm2, messages, [PYTHON], max_tokens=200)
    assert reply.finish_reason == "tool_calls" and reply.message.tool_calls[0].name == "python"
    assert "print(" in json.loads(reply.message.tool_calls[0].arguments)["code"]
    assert reply.usage.completion_tokens < 200  # generation stopped where the block closed


def test_the_kv_cache_of_the_last_prompt_is_reused(llama_qwen):
    first = [Message(role="system", content="You are terse."), Message(role="user", content="Name a colour.")]
    _, a = collect(llama_qwen, first, max_tokens=8)
    longer = first + [a.message, Message(role="user", content="Name another.")]
    _, b = collect(llama_qwen, longer, max_tokens=8)
    assert b.usage.cached_tokens >= a.usage.prompt_tokens - 1  # only the new turn was evaluated
    assert b.usage.cached_tokens < b.usage.prompt_tokens


def test_cancel_and_letting_go_stop_generation_at_once(llama_qwen):
    messages = [Message(role="user", content="Write a long story about a lighthouse keeper.")]
    cancel = threading.Event()
    got = []
    t0 = time.monotonic()
    for ev in llama_qwen.stream(messages, max_tokens=1000, cancel=cancel):
        if isinstance(ev, TextDelta):
            got.append(ev.text)
            if len(got) == 3:
                cancel.set()
        elif isinstance(ev, Done):
            reply = ev.reply
    assert reply.finish_reason == "cancelled" and reply.usage.completion_tokens <= 4
    assert time.monotonic() - t0 < 30
    stream = llama_qwen.stream(messages, max_tokens=1000)
    next(e for e in stream if isinstance(e, TextDelta))
    stream.close()  # the consumer lets go: the lock is free for the next request at once
    _, again = collect(llama_qwen, [Message(role="user", content="Say ok.")], max_tokens=5)
    assert again.usage.completion_tokens > 0


def test_the_engine_is_chosen_per_model_with_its_reason(qwen_05b_gguf, tmp_path):
    assert choose_engine(str(qwen_05b_gguf)) == ("llama.cpp", "a GGUF file, and llama.cpp is installed")
    assert choose_engine("hf:smollm2")[0] == "transformers"  # its number grounding needs transformers
    assert choose_engine("hf:smollm2", "llama.cpp")[0] == "llama.cpp"
    assert choose_engine(str(tmp_path))[0] == "transformers"
    with pytest.raises(BackendError, match="runs GGUF files and ollama: models"):
        choose_engine(str(tmp_path), "llama.cpp")
    with pytest.raises(BackendError, match="engine must be one of auto, llama.cpp, transformers"):
        choose_engine(str(qwen_05b_gguf), "vllm")
    backend = get_backend(str(qwen_05b_gguf))
    assert isinstance(backend, LlamaCppBackend) and backend is get_backend(str(qwen_05b_gguf))
    assert embedded_gguf_path().is_file()


def test_a_broken_gguf_is_one_sentence(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(BackendError, match="llama.cpp cannot load"):
        LlamaCppBackend(str(bad))
    with pytest.raises(BackendError, match="GGUF file not found"):
        LlamaCppBackend(str(tmp_path / "missing.gguf"))


def test_the_loop_runs_a_small_tool_model_on_llama_cpp(qwen_05b_gguf, tmp_path):
    """End to end: the 0.5B on llama.cpp, the small tool-model strategy, a real kernel."""
    with Chat(str(qwen_05b_gguf), engine="llama.cpp", workspace=tmp_path, progress=False) as chat:
        assert isinstance(chat.backend, LlamaCppBackend)
        answer = chat("What is 2**100? Use Python.")
        assert "1267650600228229401496703205376" in answer.replace(",", "")
        assert chat.tree.cells() and chat.tree.cells()[0].cell.status == "ok"


def test_kernelchat_models_says_which_engine_runs_a_model_and_why(qwen_05b_gguf, capsys):
    from agent.frontends.cli import main

    assert main(["models", "--model", str(qwen_05b_gguf), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == {"model": str(qwen_05b_gguf), "engine": "llama.cpp",
                             "engine_reason": "a GGUF file, and llama.cpp is installed"}
    assert data["engines"]["llama.cpp"] is True and data["local"]["hf:smollm2"]["engine"] == "transformers"
    assert main(["models", "--model", str(qwen_05b_gguf), "--engine", "transformers"]) == 0
    assert "engine transformers (asked for" in capsys.readouterr().out


def test_the_one_shot_runs_a_gguf_on_llama_cpp(qwen_05b_gguf, tmp_path, capsys):
    from agent.frontends.cli import main

    assert main(["--model", str(qwen_05b_gguf), "--engine", "llama.cpp", "--keep-alive", "0", "--no-save",
                 "--workspace", str(tmp_path), "--json", "What is 2**100? Use Python."]) == 0
    out = capsys.readouterr().out
    assert "1267650600228229401496703205376" in out.replace(",", "")
