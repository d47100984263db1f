"""Tools described in the system prompt for chat templates without a tool section: detection with
real tokenizers' templates (the embedded model's loads offline in ~2 s), and the rendered text."""

import pytest

from agent.models.toolparse import parse_tool_calls
from agent.models.toolprompt import described_tools, template_renders_tools, tool_prompt, with_tool_prompt
from tools.schema import as_tool


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return city


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


PYTHON = {"type": "function", "function": {"name": "python", "parameters": {
    "type": "object", "properties": {"code": {"type": "string"}}}}}
TOOLS = [as_tool(get_weather).schema, as_tool(add).schema]
# A Hermes-style template that renders the tools list (as Qwen 2.5's does).
TOOL_TEMPLATE = ("{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n"
                 "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from agent.models.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir(progress=False)), local_files_only=True)


def test_embedded_template_has_no_tool_section(tokenizer):
    assert not template_renders_tools(tokenizer)


def test_a_template_that_renders_tools_is_detected(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", TOOL_TEMPLATE)
    assert template_renders_tools(tokenizer)


def test_a_template_that_only_mentions_tools_is_not_taken_for_one(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenizer, "chat_template", "{# tools are not supported #}" + tokenizer.chat_template)
    assert not template_renders_tools(tokenizer)


def test_tool_prompt_describes_each_tool_and_the_call_format():
    text = tool_prompt(TOOLS)
    assert "- get_weather(city: string): Get the current weather in a city." in text
    assert "- add(a: integer, b: integer): Add two integers." in text
    # The example in the prompt is itself a call the parser reads back.
    _, calls = parse_tool_calls(text[text.index("<tool_call>"):], TOOLS)
    assert [c.name for c in calls] == ["get_weather"]


def test_system_message_gets_the_tools_or_one_is_added():
    msgs = [{"role": "user", "content": "hi"}]
    added = with_tool_prompt(msgs, TOOLS)
    assert added[0]["role"] == "system" and "get_weather" in added[0]["content"] and added[1:] == msgs
    merged = with_tool_prompt([{"role": "system", "content": "Be brief."}, *msgs], TOOLS)
    assert merged[0]["content"].startswith("Be brief.\n\nYou can call these tools:") and len(merged) == 2


def test_python_alone_changes_nothing():
    msgs = [{"role": "user", "content": "hi"}]
    assert with_tool_prompt(msgs, [PYTHON]) is msgs and with_tool_prompt(msgs, None) is msgs
    assert described_tools([PYTHON, *TOOLS]) == TOOLS
