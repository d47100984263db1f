r"""Python string literals that small models write inside JSON tool calls (tooljson.py repairs them).

Qwen2.5-Coder 0.5B / 1.5B put code in a call as a Python triple-quoted string (three double or three
single quotes): `{"name": "python", "arguments": {"code": '''<newline>import math<newline>...'''}}`.

The choice made here (for code, where it matters): the string's value is its text as written, except
that `\\`, `\"` and `\'` are one character each, as in Python (so a quote can be escaped, and a
backslash doubled just before the closing quotes still lets them close). Other backslashes stay as
written: `print("a\nb")` in the block is that code, not a line break inside it (Python would turn
`\n` into a newline and break the code). One newline right after the opening quotes is dropped
(Python keeps it: for code it is noise). As in Python, the first unescaped run of the same three
quotes closes the string.
"""

from __future__ import annotations

import re

__all__ = ["TRIPLE_QUOTES", "triple_quoted"]

TRIPLE_QUOTES = ('"""', "'''")
# The next escape of a backslash or a quote, or the closing quotes: one regex search per piece, so
# reading a string is one pass over it (a find per kind would re-read the text after each escape).
_PIECE = {q: re.compile(r"\\([\\\"'])|" + q) for q in TRIPLE_QUOTES}


def triple_quoted(text: str, start: int) -> tuple[str, int, bool]:
    """The triple-quoted string that opens at `start` (text[start:start + 3] is one of TRIPLE_QUOTES):
    (its value, the index after it, whether it was closed). Left open, it runs to the end of `text`."""
    quotes = text[start:start + 3]
    piece = _PIECE[quotes]
    i = start + 3
    if text.startswith("\r\n", i):
        i += 2
    elif text.startswith("\n", i):
        i += 1
    out: list[str] = []
    while m := piece.search(text, i):
        out.append(text[i:m.start()])
        i = m.end()
        if m.group(1) is None:  # the closing quotes
            return "".join(out), i, True
        out.append(m.group(1))
    out.append(text[i:])
    return "".join(out), len(text), False
