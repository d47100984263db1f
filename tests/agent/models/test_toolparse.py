"""The local-model tool-call parser: native formats, the python-fence fallback, JSON repair."""

import json

import pytest

from agent.models.toolparse import parse_tool_calls, repair_json

TOOLS = ["python", "search"]


def args(call):
    return call.parsed_arguments()


def test_plain_text_has_no_calls():
    text, calls = parse_tool_calls("The answer is 42.", TOOLS)
    assert text == "The answer is 42." and calls == []


def test_hermes_single_call():
    text, calls = parse_tool_calls(
        'Let me compute.\n<tool_call>\n{"name": "python", "arguments": {"code": "print(1+1)"}}\n</tool_call>', TOOLS)
    assert text == "Let me compute."
    assert [c.name for c in calls] == ["python"] and args(calls[0]) == {"code": "print(1+1)"}
    assert calls[0].id.startswith("call_")


def test_hermes_several_calls_have_distinct_ids():
    text, calls = parse_tool_calls(
        '<tool_call>{"name": "search", "arguments": {"q": "a"}}</tool_call>\n'
        '<tool_call>{"name": "search", "arguments": {"q": "b"}}</tool_call>', TOOLS)
    assert text == ""
    assert [args(c)["q"] for c in calls] == ["a", "b"]
    assert calls[0].id != calls[1].id


def test_hermes_unclosed_tag_at_end():
    _, calls = parse_tool_calls('<tool_call>{"name": "python", "arguments": {"code": "x=1"}}', TOOLS)
    assert args(calls[0]) == {"code": "x=1"}


def test_hermes_arguments_as_json_string():
    _, calls = parse_tool_calls('<tool_call>{"name": "search", "arguments": "{\\"q\\": \\"z\\"}"}</tool_call>')
    assert args(calls[0]) == {"q": "z"}


def test_llama3_bare_json_with_parameters():
    text, calls = parse_tool_calls('{"name": "search", "parameters": {"q": "weather"}}', TOOLS)
    assert text == "" and calls[0].name == "search" and args(calls[0]) == {"q": "weather"}


def test_llama3_several_calls_separated_by_semicolon():
    _, calls = parse_tool_calls('{"name": "search", "parameters": {"q": "a"}}; {"name": "search", "parameters": {"q": "b"}}')
    assert [args(c)["q"] for c in calls] == ["a", "b"]


def test_llama3_python_tag_json_and_eom():
    text, calls = parse_tool_calls('<|python_tag|>{"name": "search", "parameters": {"q": "x"}}<|eom_id|>', TOOLS)
    assert text == "" and calls[0].name == "search" and args(calls[0]) == {"q": "x"}


def test_llama3_python_tag_code():
    _, calls = parse_tool_calls("<|python_tag|>import math\nprint(math.pi)<|eom_id|>", TOOLS)
    assert calls[0].name == "python" and args(calls[0]) == {"code": "import math\nprint(math.pi)"}


def test_json_in_prose_is_not_a_call():
    text, calls = parse_tool_calls('Use the format {"name": "x", "parameters": {}} to call.', TOOLS)
    assert calls == [] and "format" in text


def test_json_fenced_call():
    _, calls = parse_tool_calls('```json\n{"name": "search", "arguments": {"q": "y"}}\n```', TOOLS)
    assert calls[0].name == "search"


def test_openai_shaped_function_object():
    _, calls = parse_tool_calls('<tool_call>{"type": "function", "function": {"name": "search", '
                                '"arguments": {"q": 1}}}</tool_call>')
    assert calls[0].name == "search" and args(calls[0]) == {"q": 1}


def test_python_fence_fallback():
    reply = "Here is the code:\n```python\nprint(2 + 2)\n```\nIt prints 4."
    text, calls = parse_tool_calls(reply, TOOLS)
    assert text == "Here is the code:\n\nIt prints 4."
    assert calls[0].name == "python" and args(calls[0]) == {"code": "print(2 + 2)"}


def test_python_fence_fallback_needs_python_tool():
    reply = "```python\nprint(1)\n```"
    assert parse_tool_calls(reply, ["search"]) == (reply, [])
    assert parse_tool_calls(reply, None) == (reply, [])


def test_several_python_fences_become_one_call():
    _, calls = parse_tool_calls("```python\nx = 2\n```\nthen\n```py\nprint(x)\n```", TOOLS)
    assert len(calls) == 1 and args(calls[0]) == {"code": "x = 2\n\nprint(x)"}


def test_unclosed_python_fence_cut_by_max_tokens():
    _, calls = parse_tool_calls("```python\nfor i in range(3):\n    print(i)", TOOLS)
    assert args(calls[0])["code"] == "for i in range(3):\n    print(i)"


def test_non_python_fence_is_text():
    reply = "```bash\nls\n```"
    assert parse_tool_calls(reply, TOOLS) == (reply, [])


@pytest.mark.parametrize("broken, expected", [
    ('{"a": 1,}', {"a": 1}),
    ('{"a": [1, 2,],}', {"a": [1, 2]}),
    ("{'a': 'b'}", {"a": "b"}),
    ("{'a': 'say \"hi\"'}", {"a": 'say "hi"'}),
    ('{"a": {"b": 1', {"a": {"b": 1}}),
    ('{"code": "print(1)\nprint(2)"}', {"code": "print(1)\nprint(2)"}),
    ('{"a": True, "b": None}', {"a": True, "b": None}),
    ('{"a": 1}}', {"a": 1}),
    ('{"code": "unterminated', {"code": "unterminated"}),
    ('{"s": "it\'s"}', {"s": "it's"}),
])
def test_repair_json(broken, expected):
    assert json.loads(repair_json(broken)) == expected


def test_repair_keeps_valid_json_untouched():
    assert repair_json('{"a": "x,}"}') == '{"a": "x,}"}'


@pytest.mark.parametrize("hopeless", ['{"a": 1 "b": 2}', "not json at all", '{"a": nope}'])
def test_repair_gives_up_when_ambiguous(hopeless):
    assert repair_json(hopeless) is None


def test_hermes_repairs_malformed_call():
    _, calls = parse_tool_calls("<tool_call>{'name': 'python', 'arguments': {'code': 'print(\"a\")',},}</tool_call>", TOOLS)
    assert calls[0].name == "python" and args(calls[0]) == {"code": 'print("a")'}


def test_hermes_raw_newlines_in_code():
    _, calls = parse_tool_calls('<tool_call>{"name": "python", "arguments": {"code": "x = 1\nprint(x)"}}</tool_call>', TOOLS)
    assert args(calls[0]) == {"code": "x = 1\nprint(x)"}


def test_unrepairable_call_keeps_raw_text_for_the_loop():
    body = '{"name": "python", "arguments": {"code": "x" "y"}}'
    _, calls = parse_tool_calls(f"<tool_call>{body}</tool_call>", TOOLS)
    assert calls[0].name == "python" and calls[0].arguments == body
    with pytest.raises(ValueError, match="not valid JSON"):
        calls[0].parsed_arguments()
