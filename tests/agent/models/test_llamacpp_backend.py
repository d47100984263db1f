"""The llama.cpp engine on real GGUF files: the embedded SmolLM2 (no tool template) and the
tool-trained Qwen2.5-Coder 0.5B. Each model is loaded once per test session (llama.cpp loads a GGUF
in a fraction of a second; the transformers fixtures beside them are the session's own)."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of `make setup` (kernelchat[gguf])")

from agent import Chat  # noqa: E402
from agent.core.backend import BackendError  # noqa: E402
from agent.core.messages import Done, Message, TextDelta, ToolCall, tool_result  # noqa: E402
from agent.models import choose_engine, get_backend  # noqa: E402
from agent.models.embedded import embedded_gguf_path  # noqa: E402
from agent.models.llamacpp_backend import LlamaCppBackend  # noqa: E402
from agent.smallmodel.shots import CONSTANTS, numbers_in, pick  # noqa: E402
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


def test_the_grounded_code_guide_masks_digits_on_llama_cpp(llama_smollm2):
    """The small-model mode's decoding guides (code_guides.py) as a llama.cpp logits processor."""
    b = llama_smollm2
    assert b.capabilities.grounds_numbers and b.capabilities.favours_tokens
    digit = {str(d): b._tokens(str(d))[0] for d in range(10)}
    guide = b._guides(0, {"1", "10", "1000"}, "print(x)", 2.0)[0]

    def scores(text):
        return guide(np.array(b._tokens(text), dtype=np.intc), np.zeros(b.llm.n_vocab(), dtype=np.single))

    def allowed(text):
        return {d for d, i in digit.items() if scores(text)[i] > -np.inf}

    assert allowed("some prose 7") == set(digit) and not scores("some prose 7").any()  # prose: untouched
    assert allowed("```python\nprint(") == {"1"}
    assert allowed("```python\nprint(10") == {"0"} and scores("```python\nprint(10")[b._tokens(")")[0]] == 2.0
    assert scores("```python\nprint(100")[b._tokens(")")[0]] == -np.inf  # 100 must go on to 1000
    assert b._guides(0, None, None, 2.0) is None and b._guides(0, {"1"}, None, 0.0) is not None


def test_the_real_model_writes_only_grounded_numbers_on_llama_cpp(llama_smollm2):
    question = "What is the sum of the integers from 1 to 1000?"
    allowed = CONSTANTS | numbers_in(question)
    shots = [Message(role=r, content=t) for q, a in pick(question) for r, t in (("user", q), ("assistant", a))]
    messages = [Message(role="system", content="Answer with one Python code block."), *shots,
                Message(role="user", content=question)]

    def code(**guides):
        reply = llama_smollm2.complete(messages, [PYTHON], max_tokens=80, **guides)
        return json.loads(reply.message.tool_calls[0].arguments)["code"]

    assert not numbers_in(code()) <= allowed  # unguided, it copies the example's 100 (pinned llama.cpp, greedy)
    assert numbers_in(code(numbers=allowed)) <= allowed


COLOUR = {"type": "function", "function": {"name": "set_colour", "description": "Set the lamp's colour",
                                           "parameters": {"type": "object", "required": ["colour"], "properties": {
                                               "colour": {"type": "string", "enum": ["red", "green"]}}}}}


def test_a_call_under_the_grammar_keeps_to_the_tools_schema(llama_qwen):
    """Free, the 0.5B asks for a colour the tool does not take; under the grammar it cannot. Its
    ```json call (the python tool) is the same call either way."""
    ask = [Message(role="system", content="You are a helpful assistant."),
           Message(role="user", content="Set the lamp's colour to blue.")]
    free = llama_qwen.complete(ask, [COLOUR], max_tokens=60, constrain_calls=False)
    held = llama_qwen.complete(ask, [COLOUR], max_tokens=60, constrain_calls=True)
    assert json.loads(free.message.tool_calls[0].arguments) == {"colour": "blue"}  # pinned llama.cpp, greedy
    assert held.message.tool_calls[0].name == "set_colour"
    assert json.loads(held.message.tool_calls[0].arguments)["colour"] in ("red", "green")
    compute = [Message(role="system", content="You are a helpful assistant. Use the python tool to compute."),
               Message(role="user", content="What is 2**100? And look up the word 'kernel'. Use the tools.")]
    _, constrained = collect(llama_qwen, compute, [PYTHON, LOOKUP], max_tokens=150, constrain_calls=True)
    plain = llama_qwen.complete(compute, [PYTHON, LOOKUP], max_tokens=150)
    assert said(constrained) == said(plain) and constrained.message.tool_calls
    assert llama_qwen.constrain_calls is False  # off unless asked (measured: no gain on the bench)


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
    assert choose_engine("hf:smollm2")[0] == "llama.cpp"  # its own GGUF, guides included
    assert choose_engine("hf:smollm2", "transformers")[0] == "transformers"
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
    assert data["engines"]["llama.cpp"] is True and data["local"]["hf:smollm2"]["engine"] == "llama.cpp"
    assert main(["models", "--model", str(qwen_05b_gguf), "--engine", "transformers"]) == 0
    assert "engine transformers (asked for" in capsys.readouterr().out


def test_the_one_shot_runs_a_gguf_on_llama_cpp(qwen_05b_gguf, tmp_path, capsys):
    from agent.frontends.cli import main

    assert main(["--model", str(qwen_05b_gguf), "--engine", "llama.cpp", "--keep-alive", "0", "--no-save",
                 "--workspace", str(tmp_path), "--json", "What is 2**100? Use Python."]) == 0
    out = capsys.readouterr().out
    assert "1267650600228229401496703205376" in out.replace(",", "")


@pytest.fixture(scope="module")
def llama_runtime():
    """A private runtime folder for the resident llama.cpp servers these tests start (killed after)."""
    import shutil
    import signal
    import tempfile
    from pathlib import Path

    from agent.models.resident import servers

    folder = Path(tempfile.mkdtemp(prefix="kc-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(folder))
        try:
            yield folder
        finally:
            for info in servers():
                try:
                    os.kill(info["pid"], signal.SIGKILL)
                except OSError:
                    pass
    shutil.rmtree(folder, ignore_errors=True)


def said(reply):
    """What a reply says (its text and calls; a call's id is new each time)."""
    return reply.message.content, [(c.name, c.arguments) for c in reply.message.tool_calls]


def test_a_gguf_stays_loaded_on_llama_cpp_between_commands(llama_runtime, qwen_05b_gguf, llama_qwen, capsys):
    """keep_alive on a GGUF: a resident llama.cpp server, answering as the model in process does,
    found by the next command with its KV cache (the system prompt is not evaluated again)."""
    from agent.frontends.cli import main
    from agent.models.resident import ResidentBackend, servers

    first = ResidentBackend(str(qwen_05b_gguf), keep_alive=120, progress=False, engine="llama.cpp")
    assert first.started and first.pid != os.getpid()
    assert first.capabilities == llama_qwen.capabilities and first.context_window == llama_qwen.context_window
    messages = conversation()
    assert first.count_prompt_tokens(messages, [PYTHON]) == llama_qwen.count_prompt_tokens(messages, [PYTHON])
    here, there = llama_qwen.complete(messages, [PYTHON], max_tokens=30), first.complete(messages, [PYTHON], max_tokens=30)
    assert said(there) == said(here)
    t = time.monotonic()
    second = ResidentBackend(str(qwen_05b_gguf), keep_alive=120, progress=False, engine="llama.cpp")
    assert not second.started and second.pid == first.pid and time.monotonic() - t < 2.0
    again = second.complete(messages, [PYTHON], max_tokens=30)
    assert again.usage.cached_tokens == again.usage.prompt_tokens - 1 and said(again) == said(here)
    [row] = servers()
    assert row["engine"] == "llama.cpp" and row["model"] == str(qwen_05b_gguf)
    second.close()
    first.close()
    assert main(["models", "--json"]) == 0
    assert '"engine": "llama.cpp"' in capsys.readouterr().out

