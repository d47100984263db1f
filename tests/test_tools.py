"""Tools from plain functions, and the python tool's rendering (with a real kernel)."""

import json

import pytest

from tools.python_tool import SCHEMA, render, run_python
from tools.schema import Tool


def add(a: int, b: int = 2, note: str | None = None) -> int:
    """Add two integers.

    Args:
        a: the first number
        b: the second number
    """
    return a + b


def test_schema_from_hints_and_docstring():
    s = Tool(add).schema["function"]
    assert s["name"] == "add" and s["description"] == "Add two integers."
    props = s["parameters"]["properties"]
    assert props["a"] == {"type": "integer", "description": "the first number"}
    assert props["b"]["default"] == 2 and s["parameters"]["required"] == ["a"]


def test_arguments_validated_with_errors_the_model_can_act_on():
    t = Tool(add)
    assert t('{"a": 1, "b": 5}') == 6 and t({"a": "3"}) == 5  # lax numeric strings, as pydantic does
    with pytest.raises(ValueError, match=r"wrong arguments for add: a: Input should be a valid integer"):
        t('{"a": "one"}')
    with pytest.raises(ValueError, match="a: Field required"):
        t("{}")
    with pytest.raises(ValueError, match="not valid JSON"):
        t('{"a": 1,')
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        t('{"a": 1, "c": 2}')


def test_untyped_parameter_is_refused_at_definition():
    def f(x):
        return x

    with pytest.raises(TypeError, match="needs a type hint"):
        Tool(f)


def test_python_tool_schema_and_rendering(shared_kernel):
    assert SCHEMA["function"]["name"] == "python" and "persist" in SCHEMA["function"]["description"]
    json.dumps(SCHEMA)
    text, res = run_python(shared_kernel, "print('hello'); 6*7")
    assert text == "hello\nOut: 42"
    text, _ = run_python(shared_kernel, "def f():\n    return undefined_name\nf()")
    assert "NameError" in text and "undefined_name" in text and "\x1b" not in text
    text, _ = run_python(shared_kernel, "for i in range(50000): print(i)")
    assert "was long and was cut" in text and "49999" in text
    text, _ = run_python(shared_kernel, "x = 1")
    assert text == "[done, no output]"
    assert render(res).startswith("hello")
