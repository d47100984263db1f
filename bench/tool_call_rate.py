"""How often does a local model call a simple custom tool correctly? The tools are described in its
system prompt when its chat template has no tool section (agent/models/toolprompt.py); a correct call
has the right tool name and the right argument values. Greedy decoding, one request per prompt.

    python bench/tool_call_rate.py [--model hf:smollm2] [--verbose]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.core.messages import Message  # noqa: E402
from agent.models import get_backend  # noqa: E402
from tools.schema import as_tool  # noqa: E402


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


CASES: list[tuple[str, str, dict]] = [
    ("What is the weather in Paris? Use the get_weather tool.", "get_weather", {"city": "Paris"}),
    ("Use the get_weather tool to find the weather in Tokyo.", "get_weather", {"city": "Tokyo"}),
    ("Is it raining in London? Call get_weather.", "get_weather", {"city": "London"}),
    ("Check the weather in Berlin with the get_weather tool.", "get_weather", {"city": "Berlin"}),
    ("get_weather for Madrid, please.", "get_weather", {"city": "Madrid"}),
    ("What is 2 plus 3? Use the add tool.", "add", {"a": 2, "b": 3}),
    ("Use the add tool to add 10 and 32.", "add", {"a": 10, "b": 32}),
    ("Add 7 and 8 with the add tool.", "add", {"a": 7, "b": 8}),
    ("Call add with a=100 and b=23.", "add", {"a": 100, "b": 23}),
    ("What is 45 + 55? Call the add tool.", "add", {"a": 45, "b": 55}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hf:smollm2")
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--verbose", action="store_true")
    opts = ap.parse_args()
    backend = get_backend(opts.model, progress=False)
    schemas = [as_tool(f).schema for f in (get_weather, add)]
    right = wrong = none = 0
    t0 = time.perf_counter()
    for prompt, name, expected in CASES:
        reply = backend.complete([Message(role="user", content=prompt)], schemas, max_tokens=opts.max_tokens)
        calls = reply.message.tool_calls
        try:
            ok = len(calls) >= 1 and calls[0].name == name and calls[0].parsed_arguments() == expected
        except ValueError:
            ok = False
        right, wrong, none = right + ok, wrong + (bool(calls) and not ok), none + (not calls)
        if opts.verbose:
            shown = [(c.name, c.arguments) for c in calls] or repr((reply.message.content or "")[:120])
            print(f"{'ok ' if ok else 'BAD'} {prompt!r}: {shown}")
    n = len(CASES)
    print(f"{opts.model}: {right}/{n} correct calls, {wrong} wrong calls, {none} without a call "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
