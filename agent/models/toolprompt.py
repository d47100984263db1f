"""Tools described in the system prompt, for local models whose chat template has no tool section
(the embedded SmolLM2): without this, `tools=[f]` would reach the model as nothing at all. The model
is asked for the Hermes format, which the parser (toolparse.py) reads back."""

from __future__ import annotations

import json
from typing import Any

PROBE_TOOL = {"type": "function", "function": {
    "name": "kernelchat_probe", "description": "probe",
    "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}
# The python tool is not described: models without tool training answer it with ```python blocks.
FENCED = {"python"}
EXAMPLE_VALUES = {"string": "...", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the chat template puts a `tools` list into the prompt: render a conversation with and
    without a probe tool and compare (a template may mention tools and still ignore them)."""
    messages = [{"role": "user", "content": "hi"}]
    try:
        plain = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        with_tool = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  tools=[PROBE_TOOL])
    except Exception:  # no template, or one that fails on tools: it renders none
        return False
    return plain != with_tool


def described_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The tools that go into the prompt (all but the fenced python tool)."""
    return [t for t in tools or [] if _fn(t).get("name") not in FENCED]


def tool_prompt(tools: list[dict[str, Any]]) -> str:
    """A compact description of `tools` and how to call them (the Hermes `<tool_call>` format)."""
    lines = ["You can call these tools:"]
    for t in tools:
        fn = _fn(t)
        props = (fn.get("parameters") or {}).get("properties") or {}
        params = ", ".join(f"{k}: {(v or {}).get('type', 'any')}" for k, v in props.items())
        desc = fn.get("description") or ""
        lines.append(f"- {fn.get('name')}({params})" + (f": {desc.strip().splitlines()[0]}" if desc.strip() else ""))
    first = _fn(tools[0])
    example = {k: EXAMPLE_VALUES.get((v or {}).get("type"), "...")
               for k, v in ((first.get("parameters") or {}).get("properties") or {}).items()}
    call = json.dumps({"name": first.get("name"), "arguments": example})
    lines += ["To call a tool, reply with only the call, like this:", f"<tool_call>\n{call}\n</tool_call>",
              "The tool's result comes back in the next message."]
    return "\n".join(lines)


def with_tool_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Template messages with the tool description added to the system message (one is added first
    if there is none); unchanged when no tool needs describing."""
    described = described_tools(tools)
    if not described:
        return messages
    prompt = tool_prompt(described)
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}".strip()}
        return [first, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _fn(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("function", tool)
