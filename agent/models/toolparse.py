r"""Tool calls out of a model's text: one parser for the formats open models emit.

Formats: Hermes / Qwen 2.5 `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (several
blocks, or a JSON list in one); Qwen3-Coder / Qwen3.5 XML inside `<tool_call>`:
`<function=NAME><parameter=KEY>VALUE</parameter></function>`; Llama 3.x `<|python_tag|>` followed by
JSON calls (separated by `;`, or the tag repeated) or by code (Llama 3.1's code interpreter, a call of
`python`); Llama 3 bare JSON calls `{"name": ..., "parameters": {...}}` at the start of a line (one or
several, separated by nothing, spaces, newlines, `,` or `;`; also in ```json or ``` fences); Granite
`<|tool_call|>[...]`; Mistral `[TOOL_CALLS][...]` and `[TOOL_CALLS]NAME[ARGS]{...}`. Fallback: models
without tool training (the embedded SmolLM2) write ```python blocks; when a tool named `python` is
offered, those become one call `python({"code": ...})`.

Conventions (also in docs/models.md, "Tool calls written as text"):
- `arguments` and `parameters` are the same thing. A call's `arguments` is JSON text: a string that
  holds a JSON object is decoded once; any other string is kept as a JSON string.
- After a marker (`<tool_call>`, `<|python_tag|>`, `<|tool_call|>`, `[TOOL_CALLS]`) an object with a
  `name` and arguments is a call even of a tool not offered (the loop answers which tools exist). A
  bare JSON object is a call only if it names an offered tool and has no keys but the call's.
- Text around the calls stays the message's text; text after the calls that is not a call (a lone
  `{`, prose) too.
- Malformed JSON is repaired when the fix is unambiguous (trailing commas, single quotes, Python
  literals, missing closing brackets, raw newlines in strings). Text cut inside a string (a truncated
  reply) is never completed: a call must not run with a cut-off value. Inside a marker, a call of an
  offered tool that cannot be repaired keeps its raw text as arguments, so the loop shows the JSON
  error to the model; other text that holds no call stays text.
- Small tool-trained models (Qwen2.5-Coder 0.5B / 1.5B): a Python triple-quoted string (three double
  or single quotes) is a JSON string of its text as written (pyliterals.py: `\\`, `\"`, `\'` as in
  Python, other backslashes kept, one newline after the opening quotes dropped); a list of strings for
  a string parameter (per the schema; without one, `python`'s `code`) is its lines joined by newlines;
  the OpenAI `{"type": "function", "function": {...}}` shape is a call; a `<tool_call>` block may hold
  its JSON in a ```json fence. Every ```json or ``` fence that holds only calls is calls.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Iterable, Iterator

from agent.core.messages import Reply, ToolCall
from agent.models.tooljson import Offered, arguments_text, call_from_object, new_call_id, repair_json
from tools.text import PYTHON_FENCE as PY_FENCE_RE

__all__ = ["ToolCallStream", "new_call_id", "parse_tool_calls", "repair_json", "with_text_calls"]

HERMES_RE = re.compile(r"<tool_call>(.*?)(</tool_call>|(?=<tool_call>)|$)", re.DOTALL)
FUNCTION_RE = re.compile(r"<function=([^<>\s]+)\s*>(.*?)(</function>|(?=<function=)|$)", re.DOTALL)
PARAM_RE = re.compile(r"<parameter=([^<>\s]+)\s*>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)
PYTHON_TAG = "<|python_tag|>"
MARKERS = (PYTHON_TAG, "<|tool_call|>", "[TOOL_CALLS]")  # everything after one of these is calls
STARTS = ("<tool_call>", "<function=") + MARKERS  # what the stream holds back from
MISTRAL_ARGS_RE = re.compile(r"\s*([\w.-]+)(?:\[CALL_ID\]\w+)?\[ARGS\]")
LLAMA_END_RE = re.compile(r"<\|(?:eom_id|eot_id|end_of_text|im_end|endoftext)\|>|</s>")  # turn ends
# A fence: ``` at a line's start (group 1: the newline and indent before it) and/or followed by an
# info string and a newline (group 2), which an opening needs.
FENCE_RE = re.compile(r"(\n[ \t]*)?```([^\n`]*\n)?")
JSON_FENCE_LANGS = ("", "json")
FENCED_BODY_RE = re.compile(r"\s*```[ \t]*(?:json)?[ \t]*\n", re.IGNORECASE)  # a block's JSON in a fence
LINE_JSON_RE = re.compile(r"^[ \t]*[{\[]", re.MULTILINE)  # a line that starts with JSON
TOP_NAME_RE = re.compile(r"""^\s*\[?\s*\{\s*["']name["']\s*:\s*["']([^"'\n]+)["']""")
SEPARATORS = re.compile(r"[\s,;]*")
DECODER = json.JSONDecoder()
MAX_BARE_TRIES = 16  # lines tried as an unmarked JSON call
MAX_BARE_REPAIR = 100_000  # characters: a longer unmarked call is taken only when it is valid JSON


def parse_tool_calls(text: str, tools: Iterable[str | dict[str, Any]] | None = None) -> tuple[str, list[ToolCall]]:
    """Split a reply into (text without the calls, calls). `tools`: the tools offered, as names or
    as OpenAI tool schemas (the schemas type Qwen3-Coder's XML values); None = unknown. The
    python-fence fallback applies only when `python` is among them."""
    try:
        return _parse(text, Offered(tools))
    except RecursionError:  # JSON nested thousands deep: not a call (json raises rather than refusing)
        return text, []


def with_text_calls(reply: Reply, tools: Iterable[str | dict[str, Any]] | None) -> Reply:
    """A reply with calls written as text (```python blocks: a server without tool support, a model
    without tool training) as a reply with those calls, for the tools offered; others as they are."""
    msg = reply.message
    if msg.tool_calls or not tools or "```" not in (msg.content or ""):
        return reply
    text, calls = parse_tool_calls(msg.content or "", tools)
    if not calls:
        return reply
    return reply.model_copy(update={"message": msg.model_copy(update={"content": text or None, "tool_calls": calls})})


def _parse(text: str, offered: Offered) -> tuple[str, list[ToolCall]]:
    if "<tool_call>" in text or "<function=" in text:
        return _hermes(text, offered)
    for marker in MARKERS:
        if marker in text:
            return _after_marker(text, marker, offered)
    found = _bare_json(text, offered)
    if found is not None:
        return found
    if offered.names and "python" in offered.names:
        blocks = [m.group(1).strip("\n") for m in PY_FENCE_RE.finditer(text)]
        blocks = [b for b in blocks if b.strip()]
        if blocks:
            code = "\n\n".join(blocks)
            call = ToolCall(id=new_call_id(), name="python", arguments=json.dumps({"code": code}))
            return _clean(PY_FENCE_RE.sub("", text)), [call]
    return text, []


def _clean(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", LLAMA_END_RE.sub("", text)).strip()


def _hermes(text: str, offered: Offered) -> tuple[str, list[ToolCall]]:
    """`<tool_call>` blocks holding JSON or Qwen3-Coder XML; a bare `<function=` too."""
    calls: list[ToolCall] = []
    pattern = HERMES_RE if "<tool_call>" in text else FUNCTION_RE

    def block(m: re.Match) -> str:
        if pattern is FUNCTION_RE:
            found = _xml_calls(m.group(0), offered, closed=False)
        else:
            body, closed = m.group(1), bool(m.group(2))
            found = (_xml_calls(body, offered, closed) if "<function=" in body
                     else _json_calls(_unfenced(body), offered, marked=True, whole=True)[0])
        calls.extend(found)
        return "" if found else m.group(0)  # a block that holds no call stays in the text

    rest = pattern.sub(block, text)
    return _clean(rest), calls


def _unfenced(body: str) -> str:
    """A block's body without turn-end tokens and the ```json (or ```) fence a model wrapped its JSON in."""
    body = LLAMA_END_RE.sub("", body)
    m = FENCED_BODY_RE.match(body)
    if not m:
        return body
    inner = body[m.end():].rstrip()
    return inner[:-3] if inner.endswith("```") else inner


def _xml_calls(body: str, offered: Offered, closed: bool) -> list[ToolCall]:
    """Qwen3-Coder calls: a function is complete when closed by `</function>` or by its block's end tag."""
    calls = []
    for m in FUNCTION_RE.finditer(body):
        if not (m.group(3) == "</function>" or closed):
            continue  # cut off: not a call
        name, args = m.group(1), {}
        for p in PARAM_RE.finditer(m.group(2)):
            args[p.group(1)] = _xml_value(p.group(2), offered.param_type(name, p.group(1)))
        calls.append(ToolCall(id=new_call_id(), name=name, arguments=json.dumps(args, ensure_ascii=False)))
    return calls


def _xml_value(raw: str, kind: Any) -> Any:
    """A parameter's text: the template puts it between newlines; JSON-decoded unless the schema says
    string (or says nothing)."""
    value = raw[1:] if raw.startswith("\n") else raw
    value = value[:-1] if value.endswith("\n") else value
    if kind in (None, "string") or (isinstance(kind, list) and "string" in kind):
        return value
    fixed = repair_json(value, close_strings=False)
    return json.loads(fixed) if fixed is not None else value


def _after_marker(text: str, marker: str, offered: Offered) -> tuple[str, list[ToolCall]]:
    """Everything after the first marker is calls (the marker may repeat between them)."""
    before, *segments = text.split(marker)
    calls: list[ToolCall] = []
    kept = [before]
    for seg in segments:
        seg = LLAMA_END_RE.sub("", seg)
        found: list[ToolCall] = []
        pos = 0  # an index, not `seg = seg[end:]`: copying the rest after each call was quadratic
        while (m := MISTRAL_ARGS_RE.match(seg, pos)) and marker == "[TOOL_CALLS]":  # NAME[ARGS]{...}
            try:
                args, pos = DECODER.raw_decode(seg, m.end())
            except json.JSONDecodeError:
                break
            found.append(ToolCall(id=new_call_id(), name=m.group(1),
                                  arguments=arguments_text(args, offered, m.group(1))))
        seg = seg[pos:]
        more, rest = _json_calls(seg, offered, marked=True, whole=True)
        found += more
        if not found and marker == PYTHON_TAG and seg.strip() and not seg.lstrip().startswith("{"):
            found, rest = [ToolCall(id=new_call_id(), name="python", arguments=json.dumps({"code": seg.strip()}))], ""
        calls += found
        kept.append(rest if found else seg)
    return _clean("\n".join(kept)), calls


def _json_calls(text: str, offered: Offered, marked: bool, whole: bool) -> tuple[list[ToolCall], str]:
    """Calls written one after another as JSON values from the start of `text`; returns them and the
    text left after them. `whole`: the text is one call block (a marker's body), so an unrepairable
    call there keeps its raw text as arguments."""
    calls: list[ToolCall] = []
    pos = SEPARATORS.match(text).end()
    while pos < len(text) and text[pos] in "{[":
        try:
            value, end = DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            # Unmarked text is repaired only when short: each line tried may read to the end
            value = _repaired(text[pos:]) if marked or len(text) - pos <= MAX_BARE_REPAIR else None
            end = len(text)
        found = _calls_in(value, offered, marked)
        if not found:
            if whole and not calls and value is None and (m := TOP_NAME_RE.match(text[pos:])) \
                    and offered.has(m.group(1)):
                calls.append(ToolCall(id=new_call_id(), name=m.group(1), arguments=text[pos:].strip()))
                pos = len(text)
            break
        calls += found
        pos = SEPARATORS.match(text, end).end()
    return calls, text[pos:] if calls else text


def _repaired(text: str) -> Any:
    """The value of `text` up to its end, repaired; None when it cannot be."""
    fixed = repair_json(text, close_strings=False)
    return json.loads(fixed) if fixed is not None else None


def _calls_in(value: Any, offered: Offered, marked: bool) -> list[ToolCall]:
    """The calls in one JSON value (an object or a list of them); [] unless all of it is calls."""
    items = value if isinstance(value, list) else [value]
    calls = [call_from_object(o, offered, marked) for o in items]
    return calls if calls and all(calls) else []  # type: ignore[return-value]


def _json_fences(text: str) -> Iterator[tuple[int, int, str]]:
    """The closed ```json and ``` fences: (start, end, body). One pass that pairs fences as Markdown
    does (the closing ``` of a ```python block opens nothing); a regex per opening re-read the rest of
    the text for each fence left open: quadratic."""
    lang: str | None = None  # inside a fence: its language
    start = body = 0
    for m in FENCE_RE.finditer(text):
        indent = len(m.group(1) or "")
        if lang is None and m.group(2) is not None:
            lang, start, body = (m.group(2).split() or [""])[0].lower(), m.start() + indent, m.end()
        elif lang is not None and m.group(1) is not None:
            if lang in JSON_FENCE_LANGS:
                yield start, m.start() + indent + 3, text[body:m.start()]
            lang = None


def _bare_json(text: str, offered: Offered) -> tuple[str, list[ToolCall]] | None:
    """Llama 3 style: JSON calls at the start of a line (or filling ```json / ``` fences), no marker."""
    calls: list[ToolCall] = []
    kept: list[str] = []
    last = 0
    for start, end, body in _json_fences(text):
        found, rest = _json_calls(body, offered, marked=False, whole=False)
        if found and not rest.strip():
            calls += found
            kept.append(text[last:start])
            last = end
    if calls:
        return _clean("\n".join([*kept, text[last:]])), calls
    cleaned = LLAMA_END_RE.sub("", text)
    # The first few lines that start like JSON only: each try may read to the end of the text, so
    # trying every line would be quadratic (a reply of 100,000 "{" lines took minutes).
    for m in itertools.islice(LINE_JSON_RE.finditer(cleaned), MAX_BARE_TRIES):
        calls, rest = _json_calls(cleaned[m.start():], offered, marked=False, whole=False)
        if calls:
            return _clean(cleaned[:m.start()] + "\n" + rest), calls
    return None


class ToolCallStream:
    """The streaming form: feed text as it is generated; `feed` returns the text that is surely not
    part of a call (show it now), holding back from where a call may begin; `finish` parses the whole
    reply and returns (held text that turned out not to be a call, content, calls)."""

    def __init__(self, tools: Iterable[str | dict[str, Any]] | None = None) -> None:
        self.tools = list(tools or [])
        self.text, self.shown, self.holding = "", 0, False

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.holding:
            return ""
        start = self._call_start()
        if start is not None:
            self.holding = True
        else:  # keep back a tail that may be the beginning of a marker
            start = len(self.text)
            for k in range(1, max(map(len, STARTS))):
                if any(s.startswith(self.text[-k:]) for s in STARTS):
                    start = len(self.text) - k
        start = max(start, self.shown)
        out, self.shown = self.text[self.shown:start], start
        return out

    def _call_start(self) -> int | None:
        found = [i for s in STARTS if (i := self.text.find(s, self.shown)) >= 0]
        for m in LINE_JSON_RE.finditer(self.text, self.shown):
            if self.text.count("```", 0, m.start()) % 2 == 0:  # not inside a code block
                found.append(m.start())
                break
        return min(found) if found else None

    def finish(self) -> tuple[str, str, list[ToolCall]]:
        content, calls = parse_tool_calls(self.text, self.tools)
        return ("" if calls else self.text[self.shown:]), content, calls
