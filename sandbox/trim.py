"""Bounds on what one cell's result may carry to the model, and the kernel's notices.

Streams are capped where they are produced (boot.py) and again on the host (capture.py); the
other fields of a result (the last expression's value, the error and its traceback, rich text,
the number of displays) are capped here, keeping the head and the tail like the streams."""

from __future__ import annotations

import json
import re

NOTICE = re.compile(r"\[kernelchat notice: (.*?)\]\n")  # written by boot.py's Guard on stderr
MAX_OUTPUTS = 100  # rich outputs (displays) kept per cell


def clip(text: str | None, limit: int, what: str) -> str | None:
    """`text` if it fits in `limit` characters, else its head and tail around a marker."""
    if text is None or len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return (text[:head] + f"\n[kernelchat: {len(text) - head - tail:,} characters of the {what} cut]\n"
            + text[-tail:])


def take_notices(stderr: str) -> tuple[str, list[str]]:
    """The kernel's notices, taken out of its stderr."""
    notes = [m.group(1) for m in NOTICE.finditer(stderr)]
    return (NOTICE.sub("", stderr), notes) if notes else (stderr, notes)


def sentence(note: str) -> str:
    note = note.strip()
    return note[:1].upper() + note[1:] + ("" if note.endswith(".") else ".")


def as_text(value: object) -> str:
    """A message field as text, whatever the kernel sent (a str, a list of lines, anything)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


class CellBudget:
    """What one cell may still add to its result's rich outputs: at most MAX_OUTPUTS of them,
    and `text_chars` of their text together; the rest is counted and said."""

    def __init__(self, text_chars: int):
        self.text_left, self.kept, self.dropped = text_chars, 0, 0

    def admit(self) -> bool:
        """Room for one more rich output (count only)?"""
        if self.kept >= MAX_OUTPUTS:
            self.dropped += 1
            return False
        return True

    def take(self, outs: list) -> list:
        """The outputs that fit, their text cut to what is left of the budget."""
        kept = []
        for o in outs:
            if o.text is not None:
                if self.text_left < 200:
                    self.dropped += 1
                    continue
                o.text = clip(o.text, self.text_left, "output")
                self.text_left -= len(o.text)
            kept.append(o)
        self.kept += len(kept)
        return kept

    def note(self) -> str | None:
        if not self.dropped:
            return None
        return (f"The cell made {self.kept + self.dropped:,} displays; {self.kept} are kept in the result "
                f"({self.dropped:,} dropped: at most {MAX_OUTPUTS}, with text of at most the output limit).")
