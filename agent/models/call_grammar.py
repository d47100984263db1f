"""Tool calls constrained by a grammar: once a model opens a call (`<tool_call>`), what it writes
is a JSON object naming an offered tool with arguments of that tool's schema, nothing else.

Why: a small model's call is the step most often lost to syntax (a missing brace, a tool that
does not exist, `"code"` misspelt); under a grammar those cannot be written. The grammar is
llama.cpp's GBNF, made from the tools' JSON schemas by llama-cpp-python's converter; a schema it
cannot convert falls back to the tool's name and any JSON object for its arguments.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from agent.models.local_chat import tool_name

# Where a small model opens a call, and how it closes one: Qwen's template's tags, and the ```json
# block the Qwen2.5-Coder 0.5B writes as often (the parser reads both). Under the grammar such a
# block is always a call: a model asked to show JSON in prose would call a tool instead.
# A reply that starts with "{" is a bare call (opened by nothing, closed by nothing).
CALL_BRACKETS = {"<tool_call>": "\n</tool_call>", "```json": "\n```", "": ""}


def call_schema(tools: list[dict[str, Any]], strict: bool = True) -> dict[str, Any]:
    """The JSON schema of one call of any of `tools` ({"name": ..., "arguments": {...}});
    `strict` False: any JSON object as the arguments."""
    def one(tool: dict[str, Any]) -> dict[str, Any]:
        params = tool.get("function", tool).get("parameters") if strict else None
        return {"type": "object", "properties": {"name": {"const": tool_name(tool)},
                                                 "arguments": params or {"type": "object"}},
                "required": ["name", "arguments"]}
    alternatives = [one(t) for t in tools]
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


def call_grammar(tools: list[dict[str, Any]]) -> str:
    """GBNF for whitespace then one call of `tools`."""
    try:
        gbnf = json_schema_to_gbnf(json.dumps(call_schema(tools)))
    except Exception:  # noqa: BLE001 - a schema feature the converter lacks: names still hold
        gbnf = json_schema_to_gbnf(json.dumps(call_schema(tools, strict=False)))
    gbnf = re.sub(r"^root ::=", "kernelchat-call ::=", gbnf, flags=re.MULTILINE)
    # The converter allows one space between tokens; a model that indents its JSON (the Qwen2.5-Coder
    # models do) is pushed off its way of writing by that, into worse code: any layout, bounded.
    gbnf = re.sub(r"^space ::= .*$", r"space ::= [ \\t\\n]{0,32}", gbnf, flags=re.MULTILINE)
    return "root ::= [ \\t\\n]{0,8} kernelchat-call\n" + gbnf


def call_is_whole(text: str) -> bool:
    """The call's JSON (written under the grammar) is closed: its object parses."""
    if not text.rstrip().endswith("}"):
        return False
    try:
        json.loads(text, strict=False)  # the grammar allows a raw newline in a string, as the parser does
        return True
    except json.JSONDecodeError:
        return False


def opened_call(raw_tail: str) -> str | None:
    """The call opening `raw_tail` (the reply's last characters, special tokens included) ends with."""
    tail = raw_tail.rstrip(" \t\n")
    return next((o for o in CALL_BRACKETS if o and tail.endswith(o)), None)


__all__ = ["CALL_BRACKETS", "opened_call", "call_schema", "call_grammar", "call_is_whole"]
