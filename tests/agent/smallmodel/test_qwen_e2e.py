"""End to end with a real tool-trained model, Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, fetched by
bench/fetch_qwen.py): native tool calls through its own chat template, the small-model strategy for
tool-trained models chosen by its size, and the command line. Greedy decoding: repeatable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import Chat
from agent.core.events import ToolResultEvent
from agent.smallmodel.toolmodel import SmallToolModelStrategy

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent / "kernelchat"


def cells(events):
    return [e for e in events if isinstance(e, ToolResultEvent) and e.code is not None and e.status != "repeat"]


@pytest.mark.parametrize("question, expected", [
    ("What is 2**100? Use Python.", "1267650600228229401496703205376"),  # 57 identical calls before
    ("What is the sum of the integers from 1 to 1000? Use Python.", "500500"),  # `1 + 2 + ... + 1000` before
])
def test_the_05b_answers_with_what_its_code_printed(qwen_05b, tmp_path, question, expected):
    assert qwen_05b.capabilities.tools and 400e6 < qwen_05b.capabilities.parameters < 700e6  # 630 M here
    with Chat(backend=qwen_05b, workspace=tmp_path, progress=False) as chat:
        assert isinstance(chat.strategy, SmallToolModelStrategy)
        events = list(chat.run(question))
    ran = cells(events)
    assert expected in events[-1].text.replace(",", "")
    assert 1 <= len(ran) <= 3 and len({e.code.strip() for e in ran}) == len(ran)  # no cell ran twice
    assert chat.last_outcome.status == "answered"


def test_the_05b_calls_a_custom_tool_natively(qwen_05b, tmp_path):
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"sunny, 21 C in {city}"

    with Chat(backend=qwen_05b, workspace=tmp_path, tools=[get_weather], use_python=False,
              progress=False) as chat:
        events = list(chat.run("What is the weather in Paris? Use the get_weather tool."))
    calls = [e for e in events if isinstance(e, ToolResultEvent)]
    assert calls and calls[0].name == "get_weather" and "Paris" in calls[0].output


def test_the_05b_from_the_command_line(qwen_05b_gguf, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "KERNELCHAT_KEEP_ALIVE": "0"}
    if os.environ.get("KERNELCHAT_CACHE"):
        env["KERNELCHAT_CACHE"] = os.environ["KERNELCHAT_CACHE"]
    out = subprocess.run([str(BIN), "--model", str(qwen_05b_gguf), "What is 12345 * 6789? Use Python.", "--json"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert "83810205" in data["answer"] and 1 <= len(data["tool_calls"]) <= 3
