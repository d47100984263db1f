"""Tool calls under a grammar (agent/models/call_grammar.py): the GBNF llama.cpp takes, made from
the tools' schemas, and the loop asking for it only where the backend declares it can."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of `make setup` (kernelchat[gguf])")

from llama_cpp import LlamaGrammar  # noqa: E402

from agent import Chat  # noqa: E402
from agent.core.backend import Capabilities  # noqa: E402
from agent.models.call_grammar import call_grammar, call_is_whole, call_schema, opened_call  # noqa: E402
from agent.models.scripted import ScriptedBackend  # noqa: E402
from tools.python_tool import SCHEMA as PYTHON  # noqa: E402

ODD = {"type": "function", "function": {"name": "odd", "parameters": {
    "type": "object", "properties": {"x": {"type": "string", "pattern": "(?<=a)b"}}}}}  # a lookbehind: not convertible


def test_the_grammar_names_only_the_offered_tools_and_their_arguments():
    text = call_grammar([PYTHON])
    assert '"\\"python\\""' in text and '"\\"code\\""' in text and text.startswith("root ::=")
    LlamaGrammar.from_string(text, verbose=False)  # llama.cpp's own parser takes it
    schema = call_schema([PYTHON, ODD])
    assert [a["properties"]["name"] for a in schema["anyOf"]] == [{"const": "python"}, {"const": "odd"}]
    LlamaGrammar.from_string(call_grammar([PYTHON, ODD]), verbose=False)


def test_a_schema_the_converter_cannot_take_still_holds_the_names(monkeypatch):
    import agent.models.call_grammar as cg

    real = cg.json_schema_to_gbnf

    def picky(schema: str) -> str:
        if '"pattern"' in schema:
            raise ValueError("unsupported")
        return real(schema)

    monkeypatch.setattr(cg, "json_schema_to_gbnf", picky)
    text = call_grammar([PYTHON, ODD])
    assert '"\\"odd\\""' in text and "pattern" not in text
    LlamaGrammar.from_string(text, verbose=False)


def test_where_a_call_opens_and_when_it_is_whole():
    assert opened_call("I will run it.\n<tool_call>\n") == "<tool_call>"
    assert opened_call("```json") == "```json" and opened_call("```python\n") is None and opened_call("{") is None
    assert not call_is_whole('{"name": "python", "arguments": {"code": "x = {"')
    assert call_is_whole('{"name": "python", "arguments": {"code": "print(1)\nprint(2)"}}\n')  # a raw newline too


class Recording(ScriptedBackend):
    def stream(self, messages, tools=None, **kw):
        self.asked = kw
        yield from super().stream(messages, tools, **kw)


@pytest.mark.parametrize("declares", [True, False])
def test_the_loop_asks_for_the_grammar_only_where_the_backend_can(tmp_path, declares):
    backend = Recording(["Done."], capabilities=Capabilities(streaming=False, constrains_calls=declares))
    with Chat(backend=backend, workspace=tmp_path, constrain_calls=True, use_python=False) as chat:
        chat("Hello")
    assert backend.asked.get("constrain_calls") is (True if declares else None)
    backend = Recording(["Done."], capabilities=Capabilities(streaming=False, constrains_calls=True))
    with Chat(backend=backend, workspace=tmp_path, use_python=False) as chat:  # not asked: the engine's default
        chat("Hello")
    assert "constrain_calls" not in backend.asked
