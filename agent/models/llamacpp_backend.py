"""A GGUF model on llama.cpp (llama-cpp-python), in process: `.gguf` files and `ollama:` models.

Why: on a CPU, llama.cpp generates about 2.5 to 3 times as fast as the transformers engine on the
same GGUF, loads the file as it is (no conversion, no cache) in a fraction of a second, imports in
a fraction of a second and holds the quantized weights (docs/performance.md). The prompt is the
GGUF's own chat template, rendered by transformers' template renderer (torch is not imported), so a
conversation reads to the model exactly as on the transformers engine; the calls in its text are
parsed by the same parser (toolparse.py). llama.cpp keeps the KV cache of the last prompt and
evaluates only what follows the longest common prefix: the loop's growing conversation costs only
its new tokens.
"""

from __future__ import annotations

import atexit
import codecs
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from llama_cpp import Llama, LlamaGrammar, LogitsProcessorList, llama_model_n_ctx_train, llama_model_n_params
from transformers.utils.chat_template_utils import render_jinja_template

from agent.core.backend import Backend, BackendError, Capabilities
from agent.core.messages import Done, Message, StreamEvent, TextDelta, Usage
from agent.models.call_grammar import CALL_BRACKETS, call_grammar, call_is_whole, opened_call
from agent.models.code_guides import CodeGuide, Vocabulary, digits_are_single_tokens
from agent.models.embedded import gguf_file
from agent.models.local_chat import (DEFAULT_MAX_TOKENS, TURN_TOKENS, fenced_python, local_reply, reply_is_done,
                                     template_messages, tools_note)
from agent.models.pricing import Price
from agent.models.toolparse import ToolCallStream
from agent.models.toolprompt import described_tools, template_renders_tools, with_tool_prompt

# The context llama.cpp allocates (its KV cache is made whole at load): the model's own, at most this.
MAX_CONTEXT = 8192


class ChatTemplate:
    """A GGUF's chat template, rendered as transformers' `apply_chat_template` renders it (the same
    sandboxed Jinja environment, the tokenizer's special tokens as variables)."""

    def __init__(self, template: str, special_tokens: dict[str, str]):
        self.template, self.special_tokens = template, special_tokens

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = False,
                            add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None) -> str:
        rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=self.template,
                                            add_generation_prompt=add_generation_prompt, **self.special_tokens)
        return rendered[0]


def default_threads() -> int:
    """Every core this process may use (llama-cpp-python's own default is half of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class LlamaCppBackend(Backend):
    """The Backend protocol over a GGUF file on llama.cpp, in this process."""

    price = Price()  # on this machine: free, any money budget holds

    def __init__(self, model: str = "hf:smollm2", *, path: str | Path | None = None, gpu: bool = False,
                 threads: int | None = None, context: int | None = None, constrain_calls: bool = False) -> None:
        """`path`: the GGUF file (default: the one `model` names). `gpu`: every layer on the GPU (a
        CUDA build of llama-cpp-python). `context`: tokens of KV cache (default: the model's, at most
        MAX_CONTEXT). `constrain_calls`: the default of `stream`'s (call_grammar.py)."""
        self.model, self.constrain_calls = model, constrain_calls
        try:
            self.path = Path(path) if path is not None else gguf_file(model)
        except FileNotFoundError as e:
            raise BackendError(str(e)) from None
        if self.path is None:
            raise BackendError(f"{model!r} is not a GGUF file: the llama.cpp engine runs .gguf files and ollama: "
                               f"models; use engine='transformers' for Hub models and folders")
        self.device = "cuda" if gpu else "cpu"
        threads = threads or default_threads()
        def load(n_ctx: int) -> Llama:
            return Llama(model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         n_gpu_layers=-1 if gpu else 0, verbose=False)

        try:
            self.llm = load(context or MAX_CONTEXT)
            trained = llama_model_n_ctx_train(self.llm.model)
            if not context and 0 < trained < MAX_CONTEXT:  # a model trained on less: its own (rare; loads fast)
                self.llm.close()
                self.llm = load(trained)
        except (ValueError, RuntimeError, OSError) as e:  # not a GGUF llama.cpp reads, or a broken one
            raise BackendError(f"llama.cpp cannot load {self.path}: {' '.join(str(e).split())}") from None
        self.context_window = self.llm.n_ctx()
        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise BackendError(f"{self.path} holds no chat template (tokenizer.chat_template), which a chat needs")
        self.template = ChatTemplate(template, self._special_tokens(meta))
        self.capabilities = Capabilities(
            tools=template_renders_tools(self.template),  # else tools are described in the system prompt
            grounds_numbers=digits_are_single_tokens(self._tokens),  # see code_guides.py
            favours_tokens=True, stops_after_calls=True, constrains_calls=True,
            parameters=int(llama_model_n_params(self.llm.model)))
        self.stop_ids = self._stop_ids()
        self.last_tokens: list[int] = []  # the token ids of the last reply (benchmarks compare them)
        self._lock = threading.Lock()  # one model, one KV cache: one generation at a time
        self._grammars: dict[str, LlamaGrammar] = {}  # per tool list
        self._vocabulary: Vocabulary | None = None  # built at the first guided reply (a second for 150k tokens)
        # Freed before the interpreter tears llama_cpp's module down (else its __del__ fails noisily at exit).
        atexit.register(self.close)

    def close(self) -> None:
        """Free the model and its KV cache (the backend is unusable after)."""
        self.llm.close()

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _text(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=False).decode("utf-8", "replace")

    def _guides(self, n_prompt: int, numbers: set[str] | None, favour: str | None,
                bonus: float) -> LogitsProcessorList | None:
        """The grounded-code guide (code_guides.py) for these options as a llama.cpp logits
        processor, or None when none applies."""
        allowed = numbers if numbers and self.capabilities.grounds_numbers else None
        favoured = self._tokens(favour) if favour and bonus else []
        if not allowed and not favoured:
            return None
        if self._vocabulary is None:
            self._vocabulary = Vocabulary({tid: self._text([tid]) for tid in range(self.llm.n_vocab())})
        guide = CodeGuide(self._vocabulary, self._text, allowed, favoured, bonus)

        def apply(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
            change = guide.adjust(input_ids[n_prompt:].tolist())
            if change is None:
                return scores
            if change.favoured:
                scores[change.favoured] += change.bonus
            if change.only is not None:
                kept = scores[change.only].copy()
                scores[:] = -np.inf
                scores[change.only] = kept
            elif change.blocked:
                scores[change.blocked] = -np.inf
            return scores

        return LogitsProcessorList([apply])

    def _call_grammar(self, tools: list[dict[str, Any]] | None) -> LlamaGrammar | None:
        key = json.dumps(tools, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_string(call_grammar(tools or []), verbose=False)
        return self._grammars[key]

    def _opened_call(self, gen: list[int]) -> str | None:
        return opened_call(self.llm.detokenize(gen[-4:], special=True).decode("utf-8", "replace"))

    def _special_tokens(self, meta: dict[str, str]) -> dict[str, str]:
        out = {}
        for name in ("bos", "eos", "unk", "pad"):
            token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
            if token_id is not None:
                out[f"{name}_token"] = self.llm.detokenize([int(token_id)], special=True).decode("utf-8", "replace")
        return out

    def _stop_ids(self) -> list[int]:
        ids = {self.llm.token_eos()}
        for token in TURN_TOKENS:
            found = self.llm.tokenize(token.encode(), add_bos=False, special=True)
            if len(found) == 1:  # one token: the model knows it as a special token
                ids.add(found[0])
        return sorted(i for i in ids if i >= 0)

    # --- prompt ----------------------------------------------------------------------------------

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text exactly as the model sees it (chat template + generation prompt)."""
        template = template_messages(messages, self.capabilities.tools)
        if tools and self.capabilities.tools:
            return self.template.apply_chat_template(template, add_generation_prompt=True, tools=tools)
        return self.template.apply_chat_template(with_tool_prompt(template, tools), add_generation_prompt=True)

    @property
    def tools_note(self) -> str | None:
        return tools_note(self.model, self.capabilities)

    def encode(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        # The template holds the special tokens as text: parse them, add no BOS of our own.
        return self.llm.tokenize(self.render(messages, tools).encode("utf-8"), add_bos=False, special=True)

    def count_prompt_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        return len(self.encode(messages, tools))

    # --- generation -------------------------------------------------------------------------------

    def _cached_prefix(self, ids: list[int]) -> int:
        """The prompt tokens llama.cpp will not evaluate again (the KV cache's common prefix)."""
        common = 0
        for a, b in zip(self.llm.input_ids[:self.llm.n_tokens].tolist(), ids):
            if a != b:
                break
            common += 1
        return min(common, len(ids) - 1)

    def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, *,
               max_tokens: int | None = None, temperature: float | None = None, max_calls: int | None = None,
               numbers: set[str] | None = None, favour: str | None = None, bonus: float = 0.0,
               constrain_calls: bool | None = None, cancel: threading.Event | None = None,
               **guides: Any) -> Iterator[StreamEvent]:
        """`cancel`: set it (from any thread) to stop generating; the reply so far is returned.
        `max_calls`: stop where a reply's call number max_calls + 1 begins. `numbers`, `favour`,
        `bonus`: the grounded-code guide (code_guides.py). `constrain_calls`: a call is written under
        a grammar (call_grammar.py; None: `self.constrain_calls`). Generation runs on the caller's thread, a
        token at a time: Ctrl-C stops it at the next token."""
        with self._lock:
            t0 = time.perf_counter()
            ids = self.encode(messages, tools)
            room = self.context_window - len(ids)
            if room <= 0:
                raise BackendError(f"the prompt ({len(ids)} tokens) does not fit the context window of "
                                   f"{self.model} ({self.context_window} tokens)")
            max_new = min(max_tokens or DEFAULT_MAX_TOKENS, room)
            reused = self._cached_prefix(ids) if self.llm.n_tokens else 0
            prompted = not self.capabilities.tools and bool(described_tools(tools))  # tools in the system prompt
            fences = fenced_python(self.capabilities, tools)
            limit = max_calls if tools else None
            watch = ToolCallStream(tools) if tools and (self.capabilities.tools or prompted) else None
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            guide = self._guides(len(ids), numbers, favour, bonus)
            constrain = self.constrain_calls if constrain_calls is None else constrain_calls
            grammar = self._call_grammar(tools) if constrain and watch is not None else None
            gen: list[int] = []
            text, call, stopped, opening = "", "", False, None
            while True:  # one pass; with a grammar, a new pass where a call opens and where it closes
                switch = False
                tokens = self.llm.generate(ids + gen, temp=temperature or 0.0, repeat_penalty=1.0, reset=True,
                                           logits_processor=None if opening is not None else guide,
                                           grammar=grammar if opening is not None else None)
                try:
                    for token in tokens:
                        if token in self.stop_ids and opening is None:
                            gen.append(token)
                            stopped = True
                            break
                        gen.append(token)
                        piece = decoder.decode(self.llm.detokenize([token], special=False))
                        if grammar is not None and opening is None and gen == [token] and piece.lstrip()[:1] == "{":
                            gen, switch, opening = [], True, ""  # a bare call: again from the start, under the grammar
                            break
                        text += piece
                        call += piece
                        shown = watch.feed(piece) if watch and piece else piece
                        if shown:
                            yield TextDelta(text=shown)
                        if (len(gen) >= max_new or (cancel is not None and cancel.is_set())
                                or reply_is_done(text, fences, prompted, limit)):
                            break
                        if grammar is not None and (call_is_whole(call) if opening is not None
                                                    else self._opened_call(gen)):
                            switch = True
                            break
                finally:
                    tokens.close()
                if not switch:
                    break
                if opening == "" and not gen:  # the bare call starts now
                    continue
                if opening is not None:  # the call's JSON is whole: closed as it was opened, then on freely
                    closing_text = CALL_BRACKETS[opening][text.endswith("\n"):]  # its newline: once
                    closing = self.llm.tokenize(closing_text.encode(), add_bos=False, special=True)
                    gen += closing
                    piece = self._text(closing)
                    text += piece
                    shown = watch.feed(piece) if watch else piece
                    if shown:
                        yield TextDelta(text=shown)
                    if len(gen) >= max_new or reply_is_done(text, fences, prompted, limit):
                        break
                    opening = None
                else:
                    opening = self._opened_call(gen)
                call = ""
            tail = watch.finish()[0] if watch else ""
            if tail:
                yield TextDelta(text=tail)
            self.last_tokens = gen
            body = gen[:-1] if stopped else gen
            plain = self.llm.detokenize(body, special=False).decode("utf-8", "replace")
            raw = self.llm.detokenize(body, special=True).decode("utf-8", "replace")
            usage = Usage(prompt_tokens=len(ids), completion_tokens=len(gen), cached_tokens=reused,
                          seconds=time.perf_counter() - t0, cost_usd=0.0)
            yield Done(reply=local_reply(self.model, plain, raw, tools, stopped=stopped, generated=len(gen),
                                         max_new=max_new, usage=usage, cancelled=bool(cancel and cancel.is_set())))


__all__ = ["LlamaCppBackend", "ChatTemplate", "MAX_CONTEXT"]
