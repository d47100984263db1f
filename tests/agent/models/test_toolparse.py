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


# --- realistic outputs per format (written for these tests), and the cases servers disagree on -------

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                          "unit": {"type": "string"}}}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
    "a": {"type": "integer"}, "b": {"type": "integer"}, "note": {"type": "string"}}}}}
SCHEMAS = [WEATHER, ADD, "python"]
NAMES = ["get_weather", "add", "python"]


def pairs(calls):
    return [(c.name, args(c)) for c in calls]


@pytest.mark.parametrize("reply, text, expected", [
    # Hermes 2 Pro / Qwen 2.5: one block per call, text before.
    ("I'll look that up for you.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
     "</tool_call>", "I'll look that up for you.", [("get_weather", {"city": "Paris"})]),
    ("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>\n"
     "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n</tool_call><|im_end|>", "",
     [("get_weather", {"city": "Paris", "unit": "celsius"}), ("add", {"a": 2, "b": 3})]),
    # QwQ: thinking first, then the call.
    ("<think>\nThe user wants 2+3.\n</think>\n\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n"
     "</tool_call>", "<think>\nThe user wants 2+3.\n</think>", [("add", {"a": 2, "b": 3})]),
    # A JSON list inside one block.
    ('<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 1}}, {"name": "add", "arguments": {"a": 2, "b": 2}}]'
     '</tool_call>', "", [("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})]),
    # Llama 3.1 / 3.2: bare JSON with "parameters", one or several.
    ('{"name": "get_weather", "parameters": {"city": "Tokyo"}}', "", [("get_weather", {"city": "Tokyo"})]),
    ('{"name": "add", "parameters": {"a": 1, "b": 2}}\n{"name": "add", "parameters": {"a": 3, "b": 4}}', "",
     [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]),
    ('{"name": "add", "parameters": {"a": 1, "b": 2}} {"name": "add", "parameters": {"a": 3, "b": 4}}', "",
     [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]),
    ('{"name": "add", "parameters": {"a": 1, "b": 2}}, {"name": "add", "parameters": {"a": 3, "b": 4}}', "",
     [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]),
    ('{"name": "add", "parameters": {"a": 1, "b": 2}}{"name": "add", "parameters": {"a": 3, "b": 4}}', "",
     [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]),
    ('[{"name": "add", "parameters": {"a": 1, "b": 2}}]<|eot_id|>', "", [("add", {"a": 1, "b": 2})]),
    ("Let me check.\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}", "Let me check.",
     [("get_weather", {"city": "Oslo"})]),
    # Llama 3.x after <|python_tag|>: `;`-separated, a repeated tag.
    ('<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "get_weather", "parameters": '
     '{"city": "Rome"}}<|eom_id|>', "", [("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Rome"})]),
    ('Checking both.<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}<|python_tag|>{"name": '
     '"add", "parameters": {"a": 5, "b": 6}}', "Checking both.", [("add", {"a": 1, "b": 2}), ("add", {"a": 5, "b": 6})]),
    ('<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}; <|python_tag|>{"name": "add", '
     '"parameters": {"a": 3, "b": 4}}', "", [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]),
    ("<|python_tag|>[x**2 for x in range(3)]<|eom_id|>", "", [("python", {"code": "[x**2 for x in range(3)]"})]),
    # Granite 3: a JSON list after <|tool_call|>.
    ('<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Boston"}}]', "",
     [("get_weather", {"city": "Boston"})]),
    # Mistral: [TOOL_CALLS] with a list, and the newer NAME[ARGS]{...} form.
    ('[TOOL_CALLS][{"name": "add", "arguments": {"a": 7, "b": 8}}]</s>', "", [("add", {"a": 7, "b": 8})]),
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Lyon"}[TOOL_CALLS]add[ARGS]{"a": 1, "b": 1}', "",
     [("get_weather", {"city": "Lyon"}), ("add", {"a": 1, "b": 1})]),
    # A valid call followed by junk keeps the call; the junk stays text.
    ('{"name": "add", "parameters": {"a": 1, "b": 2}}\n{', "{", [("add", {"a": 1, "b": 2})]),
    ('{"name": "add", "parameters": {"a": 1, "b": 2}} I used {a} and {b} as inputs.',
     "I used {a} and {b} as inputs.", [("add", {"a": 1, "b": 2})]),
    ('<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}} {', "{", [("add", {"a": 1, "b": 2})]),
])
def test_formats(reply, text, expected):
    got_text, calls = parse_tool_calls(reply, SCHEMAS)
    assert pairs(calls) == expected and got_text == text
    assert len({c.id for c in calls}) == len(calls)


QWEN_XML = """I'll check the weather and add.
<tool_call>
<function=get_weather>
<parameter=city>
New York
</parameter>
</function>
</tool_call>
<tool_call>
<function=add>
<parameter=a>
12
</parameter>
<parameter=b>
30
</parameter>
<parameter=note>
first line
second line
</parameter>
</function>
</tool_call>"""


def test_qwen3_coder_xml_calls_typed_by_schema():
    text, calls = parse_tool_calls(QWEN_XML, SCHEMAS)
    assert text == "I'll check the weather and add."
    assert pairs(calls) == [("get_weather", {"city": "New York"}),
                            ("add", {"a": 12, "b": 30, "note": "first line\nsecond line"})]


def test_qwen3_coder_xml_without_schema_keeps_strings():
    _, calls = parse_tool_calls(QWEN_XML, NAMES)
    assert args(calls[1])["a"] == "12"


def test_qwen3_coder_xml_python_code_is_kept_verbatim():
    code = 'for i in range(3):\n    print("<b>", i)\n'
    _, calls = parse_tool_calls(f"<tool_call>\n<function=python>\n<parameter=code>\n{code}\n</parameter>\n"
                                "</function>\n</tool_call>", [PYTHON := {"type": "function", "function": {
                                    "name": "python", "parameters": {"properties": {"code": {"type": "string"}}}}}])
    assert args(calls[0]) == {"code": code}


def test_qwen3_coder_xml_cut_off_is_not_a_call():
    reply = "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar"
    assert parse_tool_calls(reply, SCHEMAS) == (reply, [])


@pytest.mark.parametrize("reply", [
    '{"name": "Alice", "age": 30}',                    # a payload, not a call
    '{"name": "Alice"}',
    '{"name": "get_w',                                  # truncated
    '<tool_call>{"name": "get_w',
    '<|python_tag|>{"name": "get_w',
    '<tool_call>{"name": "unknown_tool"}</tool_call>',  # no arguments and not offered
    'See <function=add> for the details.',
    '{"name": "get_weather", "parameters": {"city": "Par',   # cut inside a value: never completed
    '[{"id": 1, "user": {"name": "get_weather"}}]',      # a nested name is not a call
    '{"name": "get_weather", "parameters": {"city": "Paris"}, "reason": "asked"}',  # extra keys, no marker
    'Use the format {"name": "add", "parameters": {"a": 1, "b": 2}} to call it.',  # inside prose
])
def test_not_calls(reply):
    text, calls = parse_tool_calls(reply, SCHEMAS)
    assert calls == [] and text.strip()


def test_bare_json_needs_an_offered_name_but_a_marker_does_not():
    assert parse_tool_calls('{"name": "delete_all", "parameters": {}}', SCHEMAS)[1] == []
    _, calls = parse_tool_calls('<tool_call>{"name": "delete_all", "arguments": {}}</tool_call>', SCHEMAS)
    assert calls[0].name == "delete_all"  # the loop answers which tools exist


def test_name_only_object_is_a_call_of_an_offered_tool():
    _, calls = parse_tool_calls('{"name": "get_weather"}', SCHEMAS)
    assert pairs(calls) == [("get_weather", {})]


@pytest.mark.parametrize("value, expected", [
    ('"{\\"city\\": \\"Paris\\"}"', '{"city": "Paris"}'),  # a JSON-encoded object: decoded once
    ('"Paris"', '"Paris"'),                                # a plain string: a JSON string
    ("null", "{}"),
])
def test_string_arguments(value, expected):
    _, calls = parse_tool_calls(f'<tool_call>{{"name": "get_weather", "arguments": {value}}}</tool_call>', SCHEMAS)
    assert calls[0].arguments == expected


def test_unrepairable_marked_call_ignores_a_nested_name():
    body = '{"payload": {"name": "add"}, "x": 1 "y"}'
    text, calls = parse_tool_calls(f"<tool_call>{body}</tool_call>", SCHEMAS)
    assert calls == [] and body in text


def test_stream_holds_back_calls_and_shows_text():
    from agent.models.toolparse import ToolCallStream

    reply = 'Sure, one moment.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    s = ToolCallStream(SCHEMAS)
    shown = "".join(s.feed(reply[i:i + 3]) for i in range(0, len(reply), 3))
    tail, content, calls = s.finish()
    assert shown == "Sure, one moment.\n" and tail == "" and content == "Sure, one moment."
    assert pairs(calls) == [("add", {"a": 1, "b": 2})]


def test_stream_releases_held_text_that_was_no_call():
    from agent.models.toolparse import ToolCallStream

    reply = "Here is a dict:\n{\"name\": \"Alice\"}\nand a < sign"
    s = ToolCallStream(SCHEMAS)
    shown = "".join(s.feed(ch) for ch in reply)
    tail, content, calls = s.finish()
    assert shown == "Here is a dict:\n" and shown + tail == reply and calls == []


def test_stream_does_not_hold_code_blocks():
    from agent.models.toolparse import ToolCallStream

    s = ToolCallStream(SCHEMAS)
    reply = "```python\nd = {\n  1: 2}\nprint(d)\n```\n"
    assert "".join(s.feed(ch) for ch in reply) == reply


# --- small tool-trained models (Qwen2.5-Coder-Instruct 0.5B / 1.5B): calls the Hermes template asks
# for but written loosely (replies modelled on what these models wrote) ------------------------------

PYTHON = {"type": "function", "function": {"name": "python", "description": "Run Python code",
          "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}
PANDAS = "import pandas as pd\ndf = pd.read_csv('train.csv')\nprint(df.head())\n"
TQ = '"""'
TQ1 = "'''"


@pytest.mark.parametrize("quotes", [TQ, TQ1])
def test_json_fence_with_triple_quoted_code(quotes):
    reply = ("I'll load the data first.\n\n```json\n{\n  \"name\": \"python\",\n  \"arguments\": {\n"
             f"    \"code\": {quotes}\n{PANDAS}{quotes}\n  }}\n}}\n```\n\nThis shows the first rows.")
    text, calls = parse_tool_calls(reply, [PYTHON])
    assert pairs(calls) == [("python", {"code": PANDAS})]
    assert text == "I'll load the data first.\n\nThis shows the first rows."


def test_fence_without_language_and_triple_quotes():
    reply = f'```\n{{"name": "python", "arguments": {{"code": {TQ}\nprint(1 + 1)\n{TQ}}}}}\n```'
    text, calls = parse_tool_calls(reply, ["python"])
    assert pairs(calls) == [("python", {"code": "print(1 + 1)\n"})] and text == ""


@pytest.mark.parametrize("reply", [
    f'<tool_call>\n{{"name": "python", "arguments": {{"code": {TQ}\n{PANDAS}{TQ}}}}}\n</tool_call>',
    f"<tool_call>\n{{'name': 'python', 'arguments': {{'code': {TQ1}\n{PANDAS}{TQ1}}}}}\n</tool_call>",
    # the JSON of the block in a fence, and the block never closed
    f'<tool_call>\n```json\n{{"name": "python", "arguments": {{"code": {TQ}\n{PANDAS}{TQ}}}}}\n```\n</tool_call>',
    f'<tool_call>\n{{"name": "python", "arguments": {{"code": {TQ}\n{PANDAS}{TQ}}}}}\n',
    f'<tool_call>\n{{"name": "python", "arguments": {{"code": {TQ}\n{PANDAS}{TQ}}}}}<|im_end|>',
])
def test_tool_call_with_triple_quoted_code(reply):
    text, calls = parse_tool_calls(reply, [PYTHON])
    assert pairs(calls) == [("python", {"code": PANDAS})] and text == ""


@pytest.mark.parametrize("written, code", [
    ('print("a\\nb")', 'print("a\\nb")'),               # \n stays two characters: it is code
    ("path = 'C:\\\\data'", "path = 'C:\\data'"),        # \\ is one backslash, as in Python
    ('s = \\"\\"\\"doc\\"\\"\\"', 's = """doc"""'),      # escaped quotes do not close
    ("print('it\\'s')", "print('it's')"),               # \' is a quote, as in Python
    ("x = None\nprint(True, {'a': [1,]})", "x = None\nprint(True, {'a': [1,]})"),  # no JSON repair inside
    ("def f():\n    '''Doc.'''\n    return 1\n", "def f():\n    '''Doc.'''\n    return 1\n"),
    ("x = 1", "x = 1"),                                  # no newline after the quotes
    ("\n\nx = 1", "\nx = 1"),                            # only one newline is dropped
    ("\r\nx = 1\r\n", "x = 1\r\n"),
    ("ends with a backslash \\\\", "ends with a backslash \\"),  # \\ just before the closing quotes
])
def test_triple_quoted_string_value(written, code):
    _, calls = parse_tool_calls(f'<tool_call>{{"name": "python", "arguments": {{"code": {TQ}{written}{TQ}}}}}'
                                "</tool_call>", [PYTHON])
    assert args(calls[0]) == {"code": code}


def test_triple_quoted_values_of_other_parameters():
    _, calls = parse_tool_calls(f'```json\n{{"name": "get_weather", "arguments": {{"city": {TQ1}Paris{TQ1},'
                                f' "unit": {TQ}celsius{TQ}}}}}\n```', SCHEMAS)
    assert pairs(calls) == [("get_weather", {"city": "Paris", "unit": "celsius"})]


@pytest.mark.parametrize("reply", [
    f'<tool_call>\n{{"name": "python", "arguments": {{"code": {TQ}\nimport pandas as pd\ndf = pd.read',  # cut
    f'<tool_call>\n{{"name": "python", "arguments": {{"code": {TQ}\nx = 1\n}}}}\n</tool_call>',  # never closed
    f'<tool_call>{{"name": "python", "arguments": {{"code": {TQ}\ndef f():\n    {TQ}Doc.{TQ}\n{TQ}}}}}</tool_call>',
])
def test_triple_quoted_code_cut_or_unclosed_is_never_run(reply):
    _, calls = parse_tool_calls(reply, [PYTHON])
    assert [c.name for c in calls] == ["python"]  # the raw text, so the loop shows the JSON error
    with pytest.raises(ValueError, match="not valid JSON"):
        calls[0].parsed_arguments()


def test_fenced_triple_quoted_code_cut_off_is_text():
    reply = f'```json\n{{"name": "python", "arguments": {{"code": {TQ}\nimport pandas as pd\n```'
    assert parse_tool_calls(reply, [PYTHON]) == (reply, [])


@pytest.mark.parametrize("repaired, expected", [
    (f'{{"code": {TQ}\na\n{TQ}}}', {"code": "a\n"}),
    (f'{{"a": {TQ1}x{TQ1}, "b": "{TQ1}"}}', {"a": "x", "b": TQ1}),  # triple quotes inside a string are text
    (f'{{"a": {TQ}{TQ}}}', {"a": ""}),
])
def test_repair_json_triple_quotes(repaired, expected):
    assert json.loads(repair_json(repaired)) == expected


def test_repair_json_does_not_complete_a_cut_triple_quoted_string():
    assert repair_json(f'{{"code": {TQ}\nprint(', close_strings=False) is None
    assert json.loads(repair_json(f'{{"code": {TQ}\nprint(')) == {"code": "print("}


@pytest.mark.parametrize("code, joined", [
    (["import math", "print(math.pi)"], "import math\nprint(math.pi)"),
    (["import math\n", "print(math.pi)\n"], "import math\nprint(math.pi)\n"),  # a notebook's `source`
    (["x = 1"], "x = 1"),
])
@pytest.mark.parametrize("tools", [["python"], [PYTHON], None, SCHEMAS])
def test_code_as_a_list_of_lines_is_joined(code, joined, tools):
    for reply in (f'<tool_call>\n{{"name": "python", "arguments": {{"code": {json.dumps(code)}}}}}\n</tool_call>',
                  f'```json\n{{"name": "python", "arguments": {{"code": {json.dumps(code)}}}}}\n```',
                  f'{{"name": "python", "parameters": {{"code": {json.dumps(code)}}}}}',
                  f'[TOOL_CALLS]python[ARGS]{{"code": {json.dumps(code)}}}',
                  f'<tool_call>{{"name": "python", "arguments": {json.dumps(json.dumps({"code": code}))}}}</tool_call>'):
        _, calls = parse_tool_calls(reply, tools)
        assert pairs(calls) == [("python", {"code": joined})], reply


SQL = {"type": "function", "function": {"name": "sql", "parameters": {"type": "object", "properties": {
    "query": {"type": "string"}, "tables": {"type": "array", "items": {"type": "string"}},
    "note": {"type": ["string", "null"]}}}}}


def test_lists_of_lines_follow_the_schema():
    _, calls = parse_tool_calls('<tool_call>{"name": "sql", "arguments": {"query": ["SELECT *", "FROM t"], '
                                '"tables": ["t", "u"], "note": ["a", "b"]}}</tool_call>', [SQL, "search"])
    assert args(calls[0]) == {"query": "SELECT *\nFROM t", "tables": ["t", "u"], "note": "a\nb"}


@pytest.mark.parametrize("tools, reply", [
    (["python", "search"], '<tool_call>{"name": "search", "arguments": {"q": ["a", "b"]}}</tool_call>'),
    (["python"], '<tool_call>{"name": "python", "arguments": {"files": ["a", "b"]}}</tool_call>'),
    (["python"], '<tool_call>{"name": "python", "arguments": {"code": ["x = 1", 2]}}</tool_call>'),
    (["python"], '<tool_call>{"name": "python", "arguments": {"code": []}}</tool_call>'),
    ([{"type": "function", "function": {"name": "python", "parameters": {"properties": {
        "code": {"type": "array"}}}}}], '<tool_call>{"name": "python", "arguments": {"code": ["x"]}}</tool_call>'),
])
def test_lists_that_are_not_lines_of_a_string_are_kept(tools, reply):
    _, calls = parse_tool_calls(reply, tools)
    body = json.loads(reply[len("<tool_call>"):-len("</tool_call>")])
    assert args(calls[0]) == body["arguments"]


@pytest.mark.parametrize("reply", [
    # the OpenAI wire shape, arguments a JSON-encoded string as on the wire
    '<tool_call>\n{"type": "function", "function": {"name": "python", "arguments": "{\\"code\\": '
    '\\"print(sum(range(10)))\\"}"}}\n</tool_call>',
    '<tool_call>\n{"id": "call_0", "type": "function", "function": {"name": "python", "arguments": '
    '{"code": "print(sum(range(10)))"}}, "index": 0}\n</tool_call>',
    '```json\n{"function": {"name": "python", "arguments": {"code": "print(sum(range(10)))"}}}\n```',
    'Running it:\n```json\n{"id": "call_0", "type": "function", "function": {"name": "python", '
    '"arguments": "{\\"code\\": \\"print(sum(range(10)))\\"}"}}\n```',
    '```\n[{"type": "function", "function": {"name": "python", "arguments": {"code": "print(sum(range(10)))"}}}]\n```',
    f'```json\n{{"type": "function", "function": {{"name": "python", "arguments": {{"code": {TQ}\n'
    f'print(sum(range(10))){TQ}}}}}}}\n```',
])
def test_openai_wire_shape_in_tool_call_or_fence(reply):
    text, calls = parse_tool_calls(reply, [PYTHON, "search"])
    assert pairs(calls) == [("python", {"code": "print(sum(range(10)))"})]
    assert text in ("", "Running it:")


def test_openai_wire_shape_with_other_keys_needs_a_marker():
    reply = '```json\n{"type": "function", "function": {"name": "python", "arguments": {}}, "index": 0}\n```'
    assert parse_tool_calls(reply, ["python"]) == (reply, [])


@pytest.mark.parametrize("reply, text", [
    ('I will compute pi.\n<tool_call>\n{"name": "python", "arguments": {"code": "import math\\nprint(math.pi)"}}\n',
     "I will compute pi."),
    ('<tool_call>\n{"name": "python", "arguments": {"code": "import math\\nprint(math.pi)"}}<|im_end|>', ""),
    ('<tool_call>\n{"name": "python", "arguments": {"code": "import math\\nprint(math.pi)"}', ""),  # one } short
])
def test_unclosed_tool_call_at_the_end(reply, text):
    got, calls = parse_tool_calls(reply, [PYTHON])
    assert pairs(calls) == [("python", {"code": "import math\nprint(math.pi)"})] and got == text


def test_unclosed_tool_call_cut_inside_the_code_is_never_run():
    _, calls = parse_tool_calls('<tool_call>\n{"name": "python", "arguments": {"code": "import math\\nprint(ma',
                                [PYTHON])
    with pytest.raises(ValueError, match="not valid JSON"):
        calls[0].parsed_arguments()


def test_every_fence_of_calls_is_calls():
    reply = ('First the data:\n```json\n{"name": "python", "arguments": {"code": "x = 2"}}\n```\nThen:\n'
             '```\n{"name": "python", "arguments": {"code": "print(x)"}}\n```\nDone.')
    text, calls = parse_tool_calls(reply, ["python"])
    assert pairs(calls) == [("python", {"code": "x = 2"}), ("python", {"code": "print(x)"})]
    assert text == "First the data:\n\nThen:\n\nDone."


def test_fences_pair_as_in_markdown():
    # The closing ``` of the python block opens nothing: the plain fence after it is the call.
    reply = ('```python\nprint(1)\n```\nThen:\n```\n{"name": "search", "arguments": {"q": "x"}}\n```')
    text, calls = parse_tool_calls(reply, ["search"])
    assert pairs(calls) == [("search", {"q": "x"})] and text == "```python\nprint(1)\n```\nThen:"


def test_a_plain_fence_of_code_is_not_a_call():
    reply = "```\nfor i in range(3):\n    print(i)\n```"
    assert parse_tool_calls(reply, ["python"]) == (reply, [])


def test_stream_holds_back_a_triple_quoted_call():
    from agent.models.toolparse import ToolCallStream

    reply = f'Loading.\n<tool_call>\n{{"name": "python", "arguments": {{"code": {TQ}\n{PANDAS}{TQ}}}}}\n</tool_call>'
    s = ToolCallStream([PYTHON])
    shown = "".join(s.feed(reply[i:i + 5]) for i in range(0, len(reply), 5))
    tail, content, calls = s.finish()
    assert shown == "Loading.\n" and tail == "" and content == "Loading."
    assert pairs(calls) == [("python", {"code": PANDAS})]


MB = 1_000_000
HOSTILE = {  # 1 MB replies built to make the new paths slow
    "json fences left open": "```json\n{" * (MB // 9),  # a regex per opening: minutes (quadratic)
    "plain fences left open": "```\n{" * (MB // 5),
    "a call with many triple quotes": f'<tool_call>{{"name": "python", "arguments": {{"code": {TQ}' + f"{TQ}x" * (MB // 4),
    "blocks each cut in a triple quote": f'<tool_call>{{"name": "python", "arguments": {{"code": {TQ}\n' * (MB // 60),
    "escapes in a triple quote": f'<tool_call>{{"name": "python", "arguments": {{"code": {TQ}' + '\\"\\\\\\' * (MB // 6),
    "fences each cut in a triple quote": f'```json\n{{"name": "python", "arguments": {{"code": {TQ1}\n```\n' * (MB // 60),
    "a fence of triple quotes": "```json\n" + TQ1 * (MB // 3) + "\n```",
    "lines each cut in a triple quote": f'{{"name": "python", "arguments": {{"code": {TQ}\n' * (MB // 46),
    "a fenced block of blanks": "<tool_call>```json\n" + " \n" * (MB // 2),
    "a fenced string of blanks": '<tool_call>{"name": "python", "arguments": "```' + " \n" * (MB // 2) + 'x"}',
    "a long list of lines": '<tool_call>{"name": "python", "arguments": {"code": [' + '"x",' * (MB // 4) + '"y"]}}',
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", HOSTILE)
def test_new_paths_are_linear_on_hostile_text(name):
    import time

    t = time.monotonic()
    content, _ = parse_tool_calls(HOSTILE[name], ["python"])
    assert time.monotonic() - t < 5, f"{name}: {time.monotonic() - t:.1f} s for 1 MB"
    assert isinstance(content, str)


def test_repair_json_fence_strip_is_linear():
    import time

    t = time.monotonic()
    assert repair_json("```json\n{" + " \n" * (MB // 2) + "x") is None
    assert time.monotonic() - t < 5


def test_a_code_string_that_lost_its_closing_quote_before_the_braces_is_closed():
    """Recorded from Qwen2.5-Coder-0.5B (the reply ended there, with its end-of-turn token)."""
    text, calls = parse_tool_calls('{"name": "python", "arguments": {"code": "print(3 ** 2 + 4 ** 2)}}', ["python"])
    assert text == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("python", {"code": "print(3 ** 2 + 4 ** 2)"})]
    # a value cut off (no closing braces after a finished call) is still never completed
    _, calls = parse_tool_calls('<tool_call>{"name": "python", "arguments": {"code": "print(3 ** 2', ["python"])
    with pytest.raises(json.JSONDecodeError):  # kept raw: the loop shows the model the JSON error
        json.loads(calls[0].arguments)
