"""Token counting: offline encodings and the OpenAI cookbook's counting rules."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from agent.models import tokens
from agent.frontends.cli import main
from agent.core.messages import Message, ToolCall, tool_result

# The cookbook "How to count tokens with tiktoken" example, with the counts the OpenAI API returned.
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
                                  "jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch "
                                                          "base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to "
                                                               "do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]
COOKBOOK_TOOLS = [{"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "description": "The unit of temperature to return",
                 "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"]}}}]
COOKBOOK_TOOL_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize("model,expected", [("gpt-3.5-turbo", 129), ("gpt-4-0613", 129), ("gpt-4", 129),
                                            ("gpt-4o", 124), ("gpt-4o-mini", 124),
                                            ("gpt-4o-mini-2024-07-18", 124)])
def test_cookbook_message_counts(model, expected):
    assert tokens.count_messages(COOKBOOK_MESSAGES, model) == expected


@pytest.mark.parametrize("model,expected", [("gpt-3.5-turbo", 105), ("gpt-4", 105),
                                            ("gpt-4o", 101), ("gpt-4o-mini", 101)])
def test_cookbook_tool_counts(model, expected):
    assert tokens.count_request(COOKBOOK_TOOL_MESSAGES, COOKBOOK_TOOLS, model) == expected


def test_known_encodings():
    assert tokens.get_encoding("cl100k_base").encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert tokens.get_encoding("o200k_base").encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert tokens.encoding_name_for("gpt-4-0613") == "cl100k_base"
    assert tokens.encoding_name_for("gpt-4o-2024-08-06") == tokens.encoding_name_for("o4-mini") == "o200k_base"
    assert tokens.encoding_name_for("hf:smollm2") == "o200k_base"  # unknown: an approximation


def test_hand_computed_messages():
    hello = Message(role="user", content="hello world")
    # 3 per message + "user" (1) + "hello world" (2) + 3 reply priming
    assert tokens.count_messages([hello], "gpt-4o") == 9
    # a name adds its own tokens + 1
    assert tokens.count_messages([{"role": "user", "name": "bob", "content": "hello world"}], "gpt-4o") == 11
    # special-token text in user content is counted as text, never refused
    assert tokens.count_text("<|endoftext|>", "gpt-4o") > 1
    call = ToolCall(id="call_1", name="python", arguments='{"code": "1+1"}')
    calling = Message(role="assistant", tool_calls=[call])
    enc = tokens.encoding_for("gpt-4o")
    n_args = len(enc.encode('{"code": "1+1"}'))
    base = tokens.count_messages([hello], "gpt-4o")
    with_call = tokens.count_messages([hello, calling], "gpt-4o")
    assert with_call - base == 3 + 1 + tokens.TOKENS_PER_TOOL_CALL + 1 + n_args  # msg, "assistant", call, name, args
    with_result = tokens.count_messages([hello, calling,
                                         tool_result("call_1", "2")], "gpt-4o")
    assert with_result - with_call == 3 + len(enc.encode("tool")) + 1 + len(enc.encode("call_1"))


def test_offline_cache_population(tmp_path):
    """A fresh process with an empty cache loads both encodings from the shipped files, no network."""
    code = ("import socket\n"
            "def no_net(*a, **k): raise AssertionError('network used')\n"
            "socket.socket.connect = no_net; socket.create_connection = no_net\n"
            "from agent.models import tokens\n"
            "print(tokens.count_text('hello world', 'gpt-4o'), tokens.count_text('hello world', 'gpt-4'))\n")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]
    for name, digest in tokens._SHA256.items():
        cached = tmp_path / hashlib.sha1(f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
                                         .encode()).hexdigest()
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
    # a corrupted cache file is replaced, not trusted
    cached.write_bytes(b"garbage")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["2", "2"], out.stderr


def test_nested_schema_is_counted():
    flat = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "description": "numbers"}}}}}]
    nested = json.loads(json.dumps(flat))
    nested[0]["function"]["parameters"]["properties"]["xs"]["items"] = {"type": "number"}
    assert tokens.count_tools(nested, "gpt-4o") > tokens.count_tools(flat, "gpt-4o") > 0
    assert tokens.count_tools(None, "gpt-4o") == tokens.count_tools([], "gpt-4o") == 0


def test_throughput():
    assert tokens.counting_throughput("gpt-4o", min_seconds=0.05) > 10_000


def test_cli_tokens(tmp_path, capsys):
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}))
    assert main(["tokens", str(req), "--model", "gpt-4o"]) == 0
    assert capsys.readouterr().out.strip() == "101"
    assert main(["tokens", str(req), "--model", "gpt-3.5-turbo"]) == 0
    assert capsys.readouterr().out.strip() == "105"
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert main(["tokens", str(bad)]) == 2
    assert "not valid JSON" in " ".join(capsys.readouterr().err.split())  # rich wraps lines
