"""A local Hugging Face model in process: the embedded SmolLM2, a Hub id, a folder, a .gguf or Ollama model.

Model strings: `hf:smollm2` (embedded), `hf:ORG/NAME[@REVISION]` (a Hub model: the local HF cache,
else downloaded into it), a local folder, a `.gguf` file or `ollama:NAME[:TAG]` (an Ollama model's
GGUF; both converted once and cached like the embedded model). resolve_model_path makes each a folder.

Speed: the agent loop re-sends a growing conversation every step, so the KV cache of the previous
call is kept and only the new suffix of the prompt is run through the model (the cache is cropped to
the longest common token prefix, which also serves edited branches of a conversation tree).
"""

from __future__ import annotations

import pickle
import threading
import time
from contextlib import contextmanager, nullcontext
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList, StoppingCriteria,
                          StoppingCriteriaList, TextIteratorStreamer)

from transformers.generation.utils import GenerateDecoderOnlyOutput

from agent.models.embedded import quiet_loading, resolve_model_path
from agent.core.backend import Backend, BackendError, Capabilities
from agent.models.pricing import Price
from agent.core.messages import Done, Message, Reply, StreamEvent, TextDelta, Usage
from agent.models.local_chat import (DEFAULT_MAX_TOKENS, TURN_TOKENS, fenced_python, local_reply, reply_is_done,
                                     template_messages, tools_note)
from agent.models.toolparse import ToolCallStream
from agent.models.toolprompt import described_tools, template_renders_tools, with_tool_prompt
from agent.models.transformers_guides import GroundedCode
from agent.models.precision import Fp16Packer, Precision, load_dtype
from agent.models.precision import choose as precision_for

# transformers 5.x renamed generate's `past_key_values` to `cache`; support both.
CACHE_KW = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


# Every generation of every TransformersBackend in the process runs on this one thread. Each thread that
# runs torch's parallel ops keeps its own OpenMP team, and two live teams on two cores fight: running
# generate on varying threads made streaming ~1.5x slower, and a second backend (its own thread), or
# one parallel op on the main thread, halves generation for the rest of the process (38 -> 19 tok/s,
# bench/backend_bench.py). Torch work of your own beside an in-process model: run it on a thread that
# ends, or keep the model in its own process (keep_alive, agent/models/resident.py).
GENERATION_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernelchat-generate")


def load_problem(error: Exception) -> str:
    """What transformers' refusal means, in one sentence (its messages run over several lines)."""
    text = str(error)
    if "custom code" in text or "trust_remote_code" in text:
        return ("it needs its own Python code (an auto_map in its config.json), which kernelchat never runs; "
                "use a model whose architecture transformers has built in")
    return " ".join(text.split())


def pick_device(device: str | None = None) -> str:
    """cuda when available, else cpu."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for a while."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Cancel(StoppingCriteria):
    """Stops generation when a stream's consumer goes away (`event`, its own) or the caller cancels
    (`caller`, never set here: the caller reads it to tell a cancelled reply)."""

    def __init__(self, caller: threading.Event | None = None) -> None:
        self.event, self.caller = threading.Event(), caller

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        stop = self.event.is_set() or (self.caller is not None and self.caller.is_set())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _FenceStop(StoppingCriteria):
    """Stops where the reply is done though the model writes on (local_chat.reply_is_done)."""

    def __init__(self, tokenizer, n_prompt: int, fences: bool = True, calls: bool = False,
                 max_calls: int | None = None) -> None:
        self.tokenizer, self.n_prompt, self.fences, self.calls = tokenizer, n_prompt, fences, calls
        self.max_calls = max_calls

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        text = self.tokenizer.decode(input_ids[0, self.n_prompt:], skip_special_tokens=True)
        done = reply_is_done(text, self.fences, self.calls, self.max_calls)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class TransformersBackend(Backend):
    """The Backend protocol over a transformers causal LM in this process."""

    price = Price()  # on this machine: free, any money budget holds

    def __init__(self, model: str = "hf:smollm2", *, device: str | None = None, precision: Precision = "auto",
                 reuse_cache: bool = True, progress: bool = True) -> None:
        """`precision`: "auto" (fp16 weights on a CPU, bf16 on a GPU: see agent/models/precision.py),
        "fp32", "fp16" or "bf16"."""
        self.model = model
        self.reuse_cache = reuse_cache
        self.device = pick_device(device)
        self.precision = precision_for(self.device, precision)  # a bad value: ValueError before loading
        try:
            path = resolve_model_path(model, progress=progress)
        except FileNotFoundError as e:
            raise BackendError(str(e)) from None
        # A model folder may come from anyone (a task file, the Hub): it is data, never code.
        # trust_remote_code=False refuses a config.json's auto_map (else transformers asks on the
        # terminal whether to run it); weights_only=True keeps pickled .bin weights to tensors.
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            with quiet_loading():  # no "Loading weights" bar on every start
                self.hf_model = AutoModelForCausalLM.from_pretrained(
                    path, dtype=load_dtype(self.device, self.precision), local_files_only=True,
                    trust_remote_code=False, weights_only=True)
        except pickle.UnpicklingError:  # torch's weights-only unpickler met something else
            raise BackendError(f"cannot load local model {model!r} from {path}: its pickled PyTorch weights hold "
                               f"Python objects besides tensors, which could run code, and kernelchat loads only "
                               f"tensors; use a copy of the model with safetensors weights") from None
        except (OSError, ValueError) as e:  # a folder without the files transformers needs, or with code
            raise BackendError(f"cannot load local model {model!r} from {path}: {load_problem(e)}") from None
        self.hf_model.to(self.device).eval()
        # fp16 weights on a CPU are packed in the background and take over between generations
        # (precision.Fp16Packer); GPUs load in their precision directly.
        self.fp16 = Fp16Packer(self.hf_model) if self.device == "cpu" and self.precision == "fp16" else None
        self.last_tokens: list[int] = []  # the token ids of the last reply (benchmarks compare them)
        cfg = self.hf_model.config
        self.context_window: int = int(getattr(cfg, "max_position_embeddings", None)
                                       or min(self.tokenizer.model_max_length, 1 << 20))
        self.capabilities = Capabilities(
            tools=template_renders_tools(self.tokenizer),  # else tools are described in the system prompt
            grounds_numbers=GroundedCode.usable(self.tokenizer),  # see transformers_guides.py
            favours_tokens=True, stops_after_calls=True, parameters=sum(p.numel() for p in self.hf_model.parameters()))
        self.stop_ids = self._stop_ids()
        self._lock = threading.Lock()  # one model, one KV cache: one generation at a time
        self._cache: Any = None        # DynamicCache of the last call
        self._cache_ids: list[int] = []  # the tokens whose keys/values `_cache` holds

    # --- prompt ----------------------------------------------------------------------------------

    def _stop_ids(self) -> list[int]:
        vocab = self.tokenizer.get_vocab()
        ids = {vocab[t] for t in TURN_TOKENS if t in vocab}
        eos = self.hf_model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text exactly as the model sees it (chat template + generation prompt)."""
        template = template_messages(messages, self.capabilities.tools)
        if tools and self.capabilities.tools:
            return self.tokenizer.apply_chat_template(template, tokenize=False, add_generation_prompt=True,
                                                      tools=tools)
        # The template has no tool section: describe the tools in the system prompt (toolprompt.py).
        return self.tokenizer.apply_chat_template(with_tool_prompt(template, tools), tokenize=False,
                                                  add_generation_prompt=True)

    @property
    def tools_note(self) -> str | None:
        """Said once to the user when custom tools are offered to this model (see Chat)."""
        return tools_note(self.model, self.capabilities)

    def encode(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        # The template already contains the special tokens: don't let the tokenizer add a BOS again.
        return self.tokenizer(self.render(messages, tools), add_special_tokens=False)["input_ids"]

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        return len(self.encode(messages, tools))

    # --- generation -------------------------------------------------------------------------------

    def _reusable_cache(self, ids: list[int]) -> tuple[Any, int]:
        """The previous call's cache cropped to the longest common prefix with `ids` (at least one
        prompt token must still be fed), or (None, 0)."""
        if not self.reuse_cache or self._cache is None:
            return None, 0
        common = 0
        for a, b in zip(self._cache_ids, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)
        if common <= 0:
            return None, 0
        extra = self._cache.get_seq_length() - common
        try:
            if extra > 0:
                self._cache.crop(-extra)
        except (ValueError, NotImplementedError):  # e.g. sliding-window layers cannot be cropped back
            return None, 0
        return self._cache, common

    def _generate(self, ids: list[int], max_new: int, temperature: float | None,
                  streamer: TextIteratorStreamer | None = None, cancel: _Cancel | None = None,
                  stop_after_code: bool = False, numbers: set[str] | None = None,
                  favour: str | None = None, bonus: float = 0.0,
                  stop_after_call: bool = False, max_calls: int | None = None) -> tuple[list[int], int]:
        """Run model.generate with the reused cache; returns (generated ids, prompt tokens reused)."""
        threads: Any = nullcontext()
        if self.fp16 is not None and not self.fp16.swap():  # no forward pass runs now: swap if all are packed
            # Still packing on a thread: torch's worker threads spin-wait for each other, and beside a
            # busy thread on two cores that measured 3-4x slower than one worker thread.
            threads = torch_threads(max(torch.get_num_threads() - 1, 1))
        cache, reused = self._reusable_cache(ids)
        input_ids = torch.tensor([ids], device=self.device)
        sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature} if temperature
                                    else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        self._cache, self._cache_ids = None, []  # invalid while generate mutates it
        with threads, torch.inference_mode():
            out = self.hf_model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new,
                eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id or self.stop_ids[0],
                use_cache=True, return_dict_in_generate=True, streamer=streamer,
                stopping_criteria=StoppingCriteriaList(
                    [c for c in (cancel, _FenceStop(self.tokenizer, len(ids), stop_after_code, stop_after_call,
                                                    max_calls)
                                    if stop_after_code or stop_after_call or max_calls else None) if c]),
                logits_processor=LogitsProcessorList(self._guides(len(ids), numbers, favour, bonus)),
                **{CACHE_KW: cache}, **sampling)
        seq = out.sequences[0].tolist()
        self.last_tokens = seq[len(ids):]
        new_cache = getattr(out, CACHE_KW, None)
        if self.reuse_cache and new_cache is not None:
            self._cache = new_cache
            self._cache_ids = seq[:self._cache.get_seq_length()]
        return seq[len(ids):], reused

    def _guides(self, n_prompt: int, numbers: set[str] | None, favour: str | None, bonus: float) -> list:
        """The GroundedCode processor for these options, if any applies."""
        allowed = numbers if numbers and self.capabilities.grounds_numbers else None
        favoured = self.tokenizer(favour, add_special_tokens=False)["input_ids"] if favour and bonus else []
        return [GroundedCode(self.tokenizer, n_prompt, allowed, favoured, bonus)] if allowed or favoured else []

    def _max_new(self, n_prompt: int, max_tokens: int | None) -> int:
        room = self.context_window - n_prompt
        if room <= 0:
            raise BackendError(f"the prompt ({n_prompt} tokens) does not fit the context window of "
                               f"{self.model} ({self.context_window} tokens)")
        return min(max_tokens or DEFAULT_MAX_TOKENS, room)

    def _reply(self, gen: list[int], n_prompt: int, reused: int, max_new: int, seconds: float,
               tools: list[dict[str, Any]] | None, cancelled: bool = False) -> Reply:
        stopped = bool(gen) and gen[-1] in self.stop_ids
        body = gen[:-1] if stopped else gen
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        # Special tokens that carry meaning for tool calls (Llama's <|python_tag|>) need the raw text.
        raw = self.tokenizer.decode(body, skip_special_tokens=False) if set(body) & set(
            self.tokenizer.all_special_ids) else text
        usage = Usage(prompt_tokens=n_prompt, completion_tokens=len(gen), cached_tokens=reused,
                      seconds=seconds, cost_usd=0.0)
        return local_reply(self.model, text, raw, tools, stopped=stopped, generated=len(gen), max_new=max_new,
                           usage=usage, cancelled=cancelled)

    def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
               max_tokens: int | None = None, temperature: float | None = None,
               numbers: set[str] | None = None, favour: str | None = None, bonus: float = 0.0,
               max_calls: int | None = None, cancel: threading.Event | None = None,
               **guides: Any) -> Iterator[StreamEvent]:
        """`cancel`: set it (from any thread) to stop generating; the reply so far is returned.
        `max_calls`: stop where a reply's call number max_calls + 1 begins."""
        with self._lock:
            t0 = time.perf_counter()
            ids = self.encode(messages, tools)
            max_new = self._max_new(len(ids), max_tokens)
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            stop = _Cancel(cancel)
            prompted = not self.capabilities.tools and bool(described_tools(tools))  # tools in the system prompt

            def work() -> tuple[list[int], int]:
                try:
                    return self._generate(ids, max_new, temperature, streamer, stop, fenced_python(self.capabilities, tools),
                                          numbers, favour, bonus, stop_after_call=prompted,
                                          max_calls=max_calls if tools else None)
                except BaseException:
                    streamer.end()  # unblock the consumer; the error is re-raised from the future
                    raise

            future = GENERATION_THREAD.submit(work)
            # Text that may be a call is held back (it is shown as the call); python blocks stream as text.
            watch = ToolCallStream(tools) if tools and (self.capabilities.tools or prompted) else None
            try:
                for piece in streamer:
                    piece = watch.feed(piece) if watch and piece else piece
                    if piece:
                        yield TextDelta(text=piece)
                tail = watch.finish()[0] if watch else ""
                if tail:
                    yield TextDelta(text=tail)
            finally:  # consumer gone (or done): stop generating before releasing the lock
                if not future.done():
                    stop.event.set()
                try:
                    future.exception()  # wait for it
                except BaseException:
                    pass
            if future.exception() is not None:
                err = future.exception()
                raise BackendError(f"local generation failed: {err}") from err
            gen, reused = future.result()
            yield Done(reply=self._reply(gen, len(ids), reused, max_new, time.perf_counter() - t0, tools,
                                         cancelled=bool(cancel and cancel.is_set())))

