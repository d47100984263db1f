"""Tool calls out of a local model's text: one parser for the formats small open models emit.

Native formats: Hermes/Qwen `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, Llama 3 JSON
calls (the whole reply is `{"name": ..., "parameters": {...}}`, optionally after `<|python_tag|>`),
and `<|python_tag|>code` (Llama 3.1's code interpreter). Fallback: models without tool training (the
embedded SmolLM2) write ```python blocks; when a tool named `python` is offered, those become one call
`python({"code": ...})`.

Malformed JSON is repaired when the fix is unambiguous (trailing commas, single quotes, Python
literals, missing closing brackets, raw newlines inside strings); otherwise the call keeps the raw
text as its arguments so the loop can show the JSON error to the model and let it retry.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Iterable

from agent.core.messages import ToolCall
from tools.python_tool import PYTHON_FENCE as PY_FENCE_RE

HERMES_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
PYTHON_TAG = "<|python_tag|>"
LLAMA_END_RE = re.compile(r"<\|(?:eom_id|eot_id|end_of_text)\|>")
# ```python / ```py / ```python3 blocks; an unclosed block at the very end (cut by max_tokens) counts.
JSON_FENCE_RE = re.compile(r"```[ \t]*json[ \t]*\n(.*?)\n[ \t]*```", re.DOTALL | re.IGNORECASE)
NAME_RE = re.compile(r"""["']name["']\s*:\s*["']([^"']+)["']""")
_LITERALS = {"True": "true", "False": "false", "None": "null"}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def parse_tool_calls(text: str, tool_names: Iterable[str] | None = None) -> tuple[str, list[ToolCall]]:
    """Split a reply into (text without the calls, calls). `tool_names`: the tools offered; the
    python-fence fallback applies only when `python` is among them."""
    names = set(tool_names or ())
    calls: list[ToolCall] = []

    # 1. Hermes / Qwen: <tool_call>...</tool_call>, possibly several.
    if "<tool_call>" in text:
        for m in HERMES_RE.finditer(text):
            calls.append(_call_from_json_text(m.group(1), names))
        return _clean(HERMES_RE.sub("", text)), calls

    # 2. Llama 3.1 <|python_tag|>: a JSON call or raw code for the code interpreter.
    if PYTHON_TAG in text:
        before, _, after = text.partition(PYTHON_TAG)
        body = LLAMA_END_RE.split(after, maxsplit=1)[0].strip()
        obj = _load_call_object(body)
        if obj is not None:
            calls.extend(_calls_from_object(obj))
        elif body.lstrip().startswith("{") and NAME_RE.search(body):
            calls.append(_call_from_json_text(body, names))
        else:
            calls.append(ToolCall(id=new_call_id(), name="python", arguments=json.dumps({"code": body})))
        return _clean(before), calls

    # 3. Llama 3 bare JSON call(s): the whole reply is the call (prose containing JSON is not a call).
    stripped = LLAMA_END_RE.sub("", text).strip()
    fenced = JSON_FENCE_RE.fullmatch(stripped)
    candidate = fenced.group(1) if fenced else stripped
    if candidate.startswith(("{", "[")):
        parts = [p for p in re.split(r";\s*(?=\{)", candidate) if p.strip()]  # `{...}; {...}`
        objs = [_load_call_object(p) for p in parts]
        if objs and all(o is not None for o in objs):
            for o in objs:
                calls.extend(_calls_from_object(o))
            return "", calls

    # 4. Fallback: fenced python becomes a call of the `python` tool.
    if "python" in names:
        blocks = [m.group(1).strip("\n") for m in PY_FENCE_RE.finditer(text)]
        blocks = [b for b in blocks if b.strip()]
        if blocks:
            code = "\n\n".join(blocks)
            calls.append(ToolCall(id=new_call_id(), name="python", arguments=json.dumps({"code": code})))
            return _clean(PY_FENCE_RE.sub("", text)), calls

    return text, calls


def _clean(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", LLAMA_END_RE.sub("", text)).strip()


def _call_from_json_text(body: str, names: set[str]) -> ToolCall:
    """One call from JSON text; if unrepairable, keep the raw text as arguments (the loop reports it)."""
    obj = _load_call_object(body)
    if obj is not None:
        calls = _calls_from_object(obj)
        if len(calls) == 1:
            return calls[0]
    m = NAME_RE.search(body)
    return ToolCall(id=new_call_id(), name=m.group(1) if m else "", arguments=body)


def _load_call_object(text: str) -> Any | None:
    """A call-shaped JSON value ({"name": ...} or a list of them) from possibly malformed text."""
    fixed = repair_json(text)
    if fixed is None:
        return None
    value = json.loads(fixed)
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(o, dict) and _name_of(o) for o in items):
        return value
    return None


def _name_of(obj: dict[str, Any]) -> str | None:
    fn = obj.get("function")
    name = obj.get("name") or (fn.get("name") if isinstance(fn, dict) else None)
    return name if isinstance(name, str) and name else None


def _calls_from_object(value: Any) -> list[ToolCall]:
    out = []
    for obj in value if isinstance(value, list) else [value]:
        fn = obj.get("function") if isinstance(obj.get("function"), dict) else obj  # OpenAI-shaped too
        args = fn.get("arguments", fn.get("parameters", {}))
        if isinstance(args, str):  # arguments given as a JSON string: repair it too
            fixed = repair_json(args)
            args = json.loads(fixed) if fixed is not None else args
        arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        out.append(ToolCall(id=new_call_id(), name=_name_of(obj) or "", arguments=arguments))
    return out


def repair_json(text: str) -> str | None:
    """Valid JSON text for `text`, repairing unambiguous mistakes; None if it cannot be parsed."""
    text = text.strip()
    if text.startswith("```"):
        text = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text)
    try:
        json.loads(text)
        return text
    except json.JSONDecodeError:
        pass
    fixed = _normalize(text)
    try:
        json.loads(fixed)
        return fixed
    except json.JSONDecodeError:
        pass
    # An extra closing bracket after a complete value (`{...}}`) is a common slip.
    try:
        value, end = json.JSONDecoder().raw_decode(fixed)
    except json.JSONDecodeError:
        return None
    if re.fullmatch(r"[\s}\];]*", fixed[end:]):
        return json.dumps(value, ensure_ascii=False)
    return None


def _normalize(text: str) -> str:
    """One pass over the text: single-quoted strings -> double, raw control chars in strings escaped,
    Python literals -> JSON, trailing commas dropped, unclosed strings/brackets closed."""
    out: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\" and i + 1 < n:
                nxt = text[i + 1]
                out.append("'" if (quote == "'" and nxt == "'") else c + nxt)
                i += 2
                continue
            if c == quote:
                out.append('"')
                quote = None
            elif c == '"':  # a double quote inside a single-quoted string
                out.append('\\"')
            elif c in "\n\r\t":
                out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
            else:
                out.append(c)
            i += 1
            continue
        if c in "\"'":
            quote = c
            out.append('"')
        elif c in "{[":
            stack.append(c)
            out.append(c)
        elif c in "}]":
            _drop_trailing_comma(out)
            if stack:
                stack.pop()
            out.append(c)
        else:
            word = re.match(r"[A-Za-z_]+", text[i:])
            if word and word.group(0) in _LITERALS:
                out.append(_LITERALS[word.group(0)])
                i += len(word.group(0))
                continue
            out.append(word.group(0) if word else c)
            i += len(word.group(0)) if word else 1
            continue
        i += 1
    if quote:
        out.append('"')
    _drop_trailing_comma(out)
    for b in reversed(stack):
        out.append("}" if b == "{" else "]")
    return "".join(out)


def _drop_trailing_comma(out: list[str]) -> None:
    s = "".join(out).rstrip()
    if s.endswith(","):
        s = s[:-1]
    out[:] = [s]
