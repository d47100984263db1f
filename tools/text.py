"""Text shared by tools and model parsers: bounds on what a tool hands back to the model (one
message must never fill a context window), and the one definition of a ```python block. Imports
nothing, so a parser of model text needs no sandbox."""

from __future__ import annotations

import re

# Two full streams at the sandbox's default cap (20,000 characters each): about 10,000 tokens.
MAX_MESSAGE_CHARS = 40_000

# A ```python (```py, ```python3) block; group 1 is its code. A block left open at the very end
# (a reply cut by max_tokens) counts: models without tool training answer in these.
# The one definition of a ```python block (also ```py, ```python3), for every parser of model text.
_OPENING = r"```[ \t]*(?:python3?|py)[ \t]*\n"
PYTHON_FENCE_OPENING = re.compile(_OPENING, re.IGNORECASE)
PYTHON_FENCE = re.compile(_OPENING + r"(.*?)(?:\n[ \t]*```|$)", re.DOTALL | re.IGNORECASE)  # open at the end counts
PYTHON_FENCE_CLOSED = re.compile(_OPENING + r".*?\n[ \t]*```", re.DOTALL | re.IGNORECASE)


def _marker(cut: int) -> str:
    return f"\n[... {cut:,} characters cut from the middle of this tool output ...]\n"


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` if it fits in `limit` characters, else its head and tail around a marker that says
    how much was cut (the tail holds what a model most needs: the error, the last value)."""
    if len(text) <= limit:
        return text
    keep = max(limit - len(_marker(len(text))), 0)  # the marker for the largest cut is the longest
    head = keep // 2
    return text[:head] + _marker(len(text) - keep) + text[len(text) - (keep - head):]
