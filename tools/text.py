"""Bounds on what a tool hands back to the model: one message must never fill a context window."""

from __future__ import annotations

# Two full streams at the sandbox's default cap (20,000 characters each): about 10,000 tokens.
MAX_MESSAGE_CHARS = 40_000


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
