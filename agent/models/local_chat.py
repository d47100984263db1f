"""What every local engine (transformers, llama.cpp) does alike with a chat: messages as chat
templates expect them, where a reply stops, and the Reply made of the generated text.

An engine gives the tokens; this module knows the conversation: tool calls written back as the model
wrote them (for templates without tool support), the ```python block or `</tool_call>` after which a
small model only imagines output, and the parsing of its calls (toolparse.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent.core.backend import Capabilities
from agent.core.messages import Message, Reply, ToolCall, Usage
from agent.models.embedded import EMBEDDED_ALIASES
from agent.models.toolparse import parse_tool_calls
from tools.text import PYTHON_FENCE_CLOSED

# Tokens that end an assistant turn, or start a new one (a model that runs on into the next turn).
TURN_TOKENS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end|>",
               "<end_of_turn>", "<|end_of_text|>")
DEFAULT_MAX_TOKENS = 1024
CALL_START = re.compile(r'[{,]\s*"name"\s*:')


def template_messages(messages: list[Message], renders_tools: bool) -> list[dict[str, Any]]:
    """Our messages -> the dicts chat templates expect. Templates without tool support
    (`renders_tools` False) get tool calls written back as the text the model produced and tool
    results as user turns."""
    out: list[dict[str, Any]] = []
    for m in messages:
        content = m.content or ""
        if m.role == "assistant" and m.tool_calls:
            if renders_tools:
                out.append({"role": "assistant", "content": content, "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": arguments_value(c)}} for c in m.tool_calls]})
                continue
            content = "\n\n".join([content] * bool(content) + [call_as_text(c) for c in m.tool_calls])
        elif m.role == "tool" and not renders_tools:
            out.append({"role": "user", "content": f"Output of {m.name or 'the tool'}:\n{content}"})
            continue
        d: dict[str, Any] = {"role": m.role, "content": content}
        if m.role == "tool":
            d["tool_call_id"] = m.tool_call_id
            if m.name:
                d["name"] = m.name
        out.append(d)
    return out


def tool_name(tool: dict[str, Any]) -> str:
    fn = tool.get("function", tool)
    return fn.get("name", "")


def arguments_value(call: ToolCall) -> Any:
    """HF templates expect arguments as a dict; keep the raw text when it is not valid JSON."""
    try:
        return json.loads(call.arguments)
    except json.JSONDecodeError:
        return call.arguments


def call_as_text(call: ToolCall) -> str:
    """A tool call as the text a model without tool support wrote (the inverse of the parser)."""
    args = arguments_value(call)
    if call.name == "python" and isinstance(args, dict) and isinstance(args.get("code"), str):
        return f"```python\n{args['code']}\n```"
    return f"<tool_call>\n{json.dumps({'name': call.name, 'arguments': args})}\n</tool_call>"


def fenced_python(capabilities: Capabilities, tools: list[dict[str, Any]] | None) -> bool:
    """The python tool is offered to a model that can only answer it with a fenced block."""
    return not capabilities.tools and "python" in [tool_name(t) for t in tools or []]


def reply_is_done(text: str, fences: bool, calls: bool, max_calls: int | None) -> bool:
    """Whether generation should stop at this reply text: after the first closed ```python block
    (`fences`: what a model without tool training writes after it is imagined output), after the
    first `</tool_call>` (`calls`: tools described in the prompt), or where call number
    max_calls + 1 begins (each call's JSON names its tool once)."""
    return ((fences and "```" in text[-8:] and bool(PYTHON_FENCE_CLOSED.search(text)))
            or (calls and "</tool_call>" in text[-16:])
            or (max_calls is not None and '"name"' in text[-12:] and len(CALL_START.findall(text)) > max_calls))


def local_reply(model: str, text: str, raw: str, tools: list[dict[str, Any]] | None, *, stopped: bool,
                generated: int, max_new: int, usage: Usage, cancelled: bool = False) -> Reply:
    """The Reply of a local generation: `text` without special tokens, `raw` with them (Llama's
    <|python_tag|> carries meaning for calls); `stopped`: it ended at a stop token."""
    content, calls = parse_tool_calls(raw, tools) if tools else (text, [])
    if calls:
        finish = "tool_calls"
    elif cancelled:
        finish = "cancelled"
    else:
        finish = "length" if not stopped and generated >= max_new else "stop"
    msg = Message(role="assistant", content=content or (None if calls else ""), tool_calls=calls)
    return Reply(message=msg, usage=usage, finish_reason=finish, model=model)


def tools_note(model: str, capabilities: Capabilities) -> str | None:
    """Said once to the user when custom tools are offered to a local model without tool support."""
    if capabilities.tools:
        return None
    return (f"{model} has no tool support in its chat template: your tools are described in its "
            f"system prompt and its calls read from its text; a small model may call them wrongly or not at all"
            + (" (the embedded model made 0 correct calls in 10 tries: bench/tool_call_rate.py)"
               if model.lower() in EMBEDDED_ALIASES else ""))


__all__ = ["TURN_TOKENS", "DEFAULT_MAX_TOKENS", "template_messages", "tool_name", "arguments_value", "call_as_text",
           "fenced_python", "reply_is_done", "local_reply", "tools_note"]
