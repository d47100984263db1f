"""Tools from plain functions, and the python tool's rendering (with a real kernel)."""

import json

import pytest

from tools.python_tool import SCHEMA, PythonTool, render
from tools.text import PYTHON_FENCE
from tools.schema import Outcome, Tool, ToolContext
from tools.text import MAX_MESSAGE_CHARS, clip


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


def run_tool(tool, arguments, context=None) -> tuple[list, Outcome]:
    """Drive a tool's run: (what it streamed, its outcome)."""
    run, streamed = tool.run(arguments, context or ToolContext()), []
    while True:
        try:
            streamed.append(next(run))
        except StopIteration as stop:
            return streamed, stop.value


def run_python(kernel, code: str) -> tuple[str, object]:
    _, outcome = run_tool(PythonTool(), json.dumps({"code": code}), ToolContext(kernel=lambda: kernel))
    return outcome.text, outcome.cell


def test_a_function_tool_runs_like_any_tool():
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    def boom() -> str:
        """Fail."""
        raise KeyError("x")

    assert run_tool(Tool(add), '{"a": 40, "b": 2}') == ([], Outcome("42"))
    assert run_tool(Tool(add), '{"a": "x"}')[1].status == "invalid"
    assert run_tool(Tool(boom), "{}")[1] == Outcome("Error: boom raised KeyError: 'x'", "error")
    assert Tool(add).code('{"a": 1}') is None


def test_the_python_tool_streams_asks_and_revises(shared_kernel):
    tool, seen = PythonTool(), []
    assert tool.code('{"code": "1"}') == "1" and tool.code('{"code": 1}') is None and tool.code("{") is None
    assert "not valid JSON" in run_tool(tool, '{"code": ')[1].text
    assert run_tool(tool, '{"code": 1}')[1].status == "invalid"
    refuse = ToolContext(kernel=lambda: shared_kernel, approve=lambda code: seen.append(code) or False)
    assert run_tool(tool, '{"code": "print(1)"}', refuse)[1] == Outcome(
        "The user did not allow this code to run. Ask them, or try a different approach.", "rejected", code="print(1)")
    edit = ToolContext(kernel=lambda: shared_kernel, approve=lambda code: "print('edited', flush=True)")
    streamed, outcome = run_tool(tool, '{"code": "print(1)"}', edit)
    assert streamed == [("stdout", "edited\n")] and outcome.code == "print('edited', flush=True)"
    assert outcome.cell.stdout == "edited\n" and seen == ["print(1)"]
    revise = ToolContext(kernel=lambda: shared_kernel,
                         revise=lambda code, res: ("print(2)", "ran print(2)") if "1" in code else None)
    streamed, outcome = run_tool(tool, '{"code": "print(1)"}', revise)
    assert streamed[-1] == ("notice", "ran print(2)") and outcome.text == "2" and outcome.code == "print(2)"


def test_the_python_fence_finds_blocks_closed_or_cut():
    text = "Sure.\n```python\nprint(1)\n```\nand\n``` PY\nx = 2\n  ```\n```python3\ncut by max_tok"
    assert [m.group(1) for m in PYTHON_FENCE.finditer(text)] == ["print(1)", "x = 2", "cut by max_tok"]
    assert not PYTHON_FENCE.search("```js\nx\n```")


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


def test_the_rendered_message_is_bounded_as_a_whole(shared_kernel):
    """Each field is capped in the sandbox, but every field at its cap at once adds up."""
    code = ("import sys\nfrom IPython.display import Markdown, display\n"
            "for i in range(5): display(Markdown(str(i) * 19_000))\n"
            "print('o' * 100_000); print('e' * 100_000, file=sys.stderr)\n'v' * 100_000 + 'END'")
    text, res = run_python(shared_kernel, code)
    fields = [res.stdout, res.stderr, res.result] + [o.text or "" for o in res.outputs]
    assert sum(map(len, fields)) > 2 * MAX_MESSAGE_CHARS
    assert len(text) <= MAX_MESSAGE_CHARS and "characters cut from the middle" in text
    whole = render(res, max_chars=10**9)
    assert text[:1000] == whole[:1000] and text[-1000:] == whole[-1000:]  # the head and the tail are kept
    assert len(render(res, max_chars=1000)) <= 1000


@pytest.mark.parametrize("size", [0, 10, 999, 1000, 1001, 5_000_000])
def test_clip_keeps_head_and_tail_within_the_limit(size):
    text = "h" + "z" * max(size - 2, 0) + "t" if size > 1 else "x" * size
    out = clip(text, 1000)
    assert len(out) <= 1000 and (out == text if size <= 1000 else out[0] == "h" and out[-1] == "t")
    if size > 1000:
        kept = out.count("z") + 2
        assert f"[... {size - kept:,} characters cut" in out  # says exactly how much is gone
