"""JSON pieces of the tool-call parser (toolparse.py): repair of malformed JSON, and what counts as a
call object. Conventions are in toolparse.py's docstring and docs/models.md ("Tool calls written as text")."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from agent.core.messages import ToolCall
from agent.models.pyliterals import TRIPLE_QUOTES, triple_quoted

_LITERALS = {"True": "true", "False": "false", "None": "null"}
_WORD = re.compile(r"[A-Za-z_]+")
_FENCE_OPENING = re.compile(r"```[a-zA-Z]*\s*")
# The keys a call object may have; a bare JSON object (no marker before it) with others is not a call.
CALL_KEYS = {"name", "arguments", "parameters", "id", "type"}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


class Offered:
    """The tools offered: names (None = unknown, anything goes) and their parameter schemas."""

    def __init__(self, tools: Any = None) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        names: set[str] = set()
        for t in tools or ():
            if isinstance(t, str):
                names.add(t)
            elif isinstance(t, dict):
                fn = t.get("function", t)
                names.add(fn.get("name", ""))
                self.schemas[fn.get("name", "")] = fn.get("parameters") or {}
        self.names: set[str] | None = names or None

    def has(self, name: str) -> bool:
        return self.names is None or name in self.names

    def param_type(self, tool: str, param: str) -> Any:
        """The JSON-schema type of a parameter, or None when unknown."""
        prop = (self.schemas.get(tool, {}).get("properties") or {}).get(param) or {}
        return prop.get("type")

    def wants_string(self, tool: str, param: str) -> bool:
        """The parameter is a string: its schema says so, or (no schema for the tool) it is `python`'s `code`."""
        if tool not in self.schemas:
            return (tool, param) == ("python", "code")
        kind = self.param_type(tool, param)
        return kind == "string" or (isinstance(kind, list) and "string" in kind and "array" not in kind)

    def join_lines(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """`args` with each non-empty list of strings given for a string parameter joined into one text:
        by newlines, or as they are when each line but the last already ends in one (a notebook's `source`)."""
        out = dict(args)
        for key, value in args.items():
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value) \
                    and self.wants_string(tool, key):
                ended = all(v.endswith("\n") for v in value[:-1])
                out[key] = ("" if ended else "\n").join(value)
        return out


def call_from_object(obj: Any, offered: Offered, marked: bool) -> ToolCall | None:
    """A call from one decoded JSON value, or None when it is not call-shaped.

    Call-shaped: a string `name` with `arguments` or `parameters` (or the OpenAI `{"function": {...}}`
    wrapper). After a call marker (`marked`) that suffices; a bare object must also use only the call
    keys and name an offered tool. An object with a name alone is a call only of an offered tool."""
    if not isinstance(obj, dict):
        return None
    fn = obj.get("function")
    body = fn if isinstance(fn, dict) else obj
    keys = set(obj) - {"function"} | set(body) if isinstance(fn, dict) else set(obj)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    has_args = "arguments" in body or "parameters" in body
    offered_name = offered.names is not None and name in offered.names
    if not marked and (not keys <= CALL_KEYS or not offered.has(name)):
        return None
    if not (offered_name or has_args):
        return None
    args = body.get("arguments", body.get("parameters"))
    return ToolCall(id=new_call_id(), name=name, arguments=arguments_text(args, offered, name))


def arguments_text(args: Any, offered: Offered | None = None, tool: str = "") -> str:
    """Arguments as JSON text. A string holding a JSON object is decoded once; any other string
    becomes a JSON string (the loop then says arguments must be an object); null is `{}`. With
    `offered`, lists of lines given for the string parameters of `tool` are joined (Offered.join_lines)."""
    if args is None:
        return "{}"
    if isinstance(args, str):
        fixed = repair_json(args, close_strings=False)
        decoded = json.loads(fixed) if fixed is not None else None
        if isinstance(decoded, dict):
            args = decoded
    if offered is not None and isinstance(args, dict):
        args = offered.join_lines(tool, args)
    return json.dumps(args, ensure_ascii=False)


def repair_json(text: str, *, close_strings: bool = True) -> str | None:
    """Valid JSON text for `text`, repairing unambiguous mistakes; None if it cannot be parsed.
    `close_strings=False`: text cut inside a string (a truncated value) is not repaired."""
    text = text.strip()
    if text.startswith("```"):  # not one regex for both ends: `\s*```$` tried at each blank was quadratic
        text = text[_FENCE_OPENING.match(text).end():]
        text = text[:-3].rstrip() if text.endswith("```") else text
    try:
        json.loads(text)
        return text
    except json.JSONDecodeError:
        pass
    fixed, open_string = _normalize(text)
    if open_string and (closed := closed_before_closers(text)) is not None:
        return closed
    if open_string and not close_strings:
        return None
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


# A call whose code lost its closing quote but not the JSON's braces (`{"code": "print(3 ** 2)}}`,
# recorded from Qwen2.5-Coder-0.5B; the reply ended there with its end-of-turn token).
STRING_LOST_ITS_QUOTE = re.compile(r"\)(\s*\}+)\s*$")


def closed_before_closers(text: str) -> str | None:
    """`text` with the open string closed after its last `)` and before the braces that end the
    reply, if that makes valid JSON; else None. Not a cut-off value: the braces show where the model
    meant the JSON to end, and the code before them ends a call."""
    m = STRING_LOST_ITS_QUOTE.search(text)
    if m is None:
        return None
    candidate = text[:m.start(1)] + '"' + m.group(1)
    try:
        json.loads(candidate)
    except json.JSONDecodeError:
        return None
    return candidate


def _normalize(text: str) -> tuple[str, bool]:
    """One pass over the text: single-quoted and Python triple-quoted strings -> JSON strings, raw
    control chars in strings escaped, Python literals -> JSON, trailing commas dropped, unclosed
    strings/brackets closed. Also says whether the text ended inside a string."""
    out: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    cut = False  # ended inside a triple-quoted string
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
        if text.startswith(TRIPLE_QUOTES, i):
            value, i, closed = triple_quoted(text, i)
            out.append(json.dumps(value, ensure_ascii=False))
            cut = not closed
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
            word = _WORD.match(text, i)  # at i, not on a copy of the rest: one pass stays linear
            if word and word.group(0) in _LITERALS:
                out.append(_LITERALS[word.group(0)])
                i += len(word.group(0))
                continue
            out.append(word.group(0) if word else c)
            i += len(word.group(0)) if word else 1
            continue
        i += 1
    open_string = quote is not None or cut
    if quote:
        out.append('"')
    _drop_trailing_comma(out)
    for b in reversed(stack):
        out.append("}" if b == "{" else "]")
    return "".join(out), open_string


def _drop_trailing_comma(out: list[str]) -> None:
    """Drop trailing blanks and one comma from the text built so far; only its tail is looked at
    (joining all of it at every bracket was quadratic)."""
    while out and not out[-1].strip():
        out.pop()
    if out:
        out[-1] = out[-1].rstrip()
        if out[-1].endswith(","):
            out[-1] = out[-1][:-1]
