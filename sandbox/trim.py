"""Bounds on what one cell's result may carry to the model, and the kernel's notices.

Streams are capped where they are produced (boot.py) and again on the host (capture.py); the
other fields of a result (the last expression's value, the error and its traceback, rich text,
the number of displays) are capped here, keeping the head and the tail like the streams."""

from __future__ import annotations

import json
import queue
import re
from typing import Callable

NOTICE = re.compile(r"\[kernelchat notice: (.*?)\]\n")  # written by boot.py's Guard on stderr
MAX_OUTPUTS = 100  # rich outputs (displays) kept per cell
MAX_IMAGE_CHARS = 32 * 2**20  # base64 of the images one result keeps (they go to the conversation too)


def clip(text: str | None, limit: int, what: str) -> str | None:
    """`text` if it fits in `limit` characters, else its head and tail around a marker."""
    if text is None or len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return (text[:head] + f"\n[kernelchat: {len(text) - head - tail:,} characters of the {what} cut]\n"
            + text[-tail:])


def receive(get: Callable[..., dict], timeout: float) -> dict | None:
    """One message from a jupyter_client channel (`get` is e.g. `client.get_iopub_msg`); None for
    one that cannot be decoded: code in the kernel holds the session key and can send any bytes
    (not JSON, nested past the recursion limit, missing frames). queue.Empty when none came."""
    try:
        return get(timeout=timeout)
    except queue.Empty:
        raise
    except Exception:  # noqa: BLE001 - whatever decoding a hostile message raises: drop it
        return None


def parent_id(msg: dict) -> object:
    """The id of the request a message answers; None unless the message has the shape of one
    (a dict with a str msg_type and a dict content), so `_handle` can index those safely."""
    head = msg.get("parent_header") if isinstance(msg, dict) else None
    if not (isinstance(head, dict) and isinstance(msg.get("msg_type"), str) and isinstance(msg.get("content"), dict)):
        return None
    return head.get("msg_id")


def count(content: dict) -> int | None:
    """A message's execution_count when it is a whole number, else None."""
    n = content.get("execution_count")
    return n if type(n) is int else None


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
        self.image_left, self.files_only = MAX_IMAGE_CHARS, 0

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
            if o.data is not None:
                if len(o.data) > self.image_left:  # over the images' budget: the file in outputs/ only
                    o.data = None
                    self.files_only += 1
                    if o.path is None:
                        self.dropped += 1
                        continue
                else:
                    self.image_left -= len(o.data)
            kept.append(o)
        self.kept += len(kept)
        return kept

    def note(self) -> str | None:
        files = (f"{self.files_only:,} figures are kept as files in outputs/ only (a result holds at most "
                 f"{MAX_IMAGE_CHARS // 2**20} MB of images)." if self.files_only else "")
        if not self.dropped:
            return files or None
        return (files + " " if files else "") + (f"The cell made {self.kept + self.dropped:,} displays; {self.kept} are kept in the result "
                f"({self.dropped:,} dropped: at most {MAX_OUTPUTS}, with text of at most the output limit).")
