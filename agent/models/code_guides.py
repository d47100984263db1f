"""Grounded code, for any local engine: inside a ```python block, every number literal a small model
writes must be one that the conversation gave it (or a common constant), and the tokens of its
worked example are favoured.

Why: a 135M model copies numbers from the worked examples it was shown (`range(1, 101)` for "1 to
1000", `9` from an example's list) or invents them (`range(1, 11 + 1)` for "1 to 10"). Constrained
decoding removes that class of slip: at a digit, only continuations that stay a prefix of an allowed
number survive, and a literal may only end where it is a whole allowed number. And it drifts from
the example's shape to what the question's words suggest (`144 % 12` after `9875 / 16`, `reversed(s)`
after `s[::-1]`): a logit bonus for the example's (and the question's) tokens keeps it closer.
Prose is not touched.

`CodeGuide` decides, from the text generated so far, which token ids to favour and which to mask;
each engine applies that to its own scores (transformers_guides.py: torch; llamacpp_backend.py:
numpy). It needs a vocabulary whose digits are single tokens (SmolLM2, Qwen; not Llama 3, which
groups three): see `digits_are_single_tokens`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tools.text import PYTHON_FENCE_OPENING

# The literal being written: digits (and a decimal point) not glued to a name or an attribute.
_TRAILING_LITERAL = re.compile(r"(?<![\w.])\d[\d.]*$")
_AFTER_NAME = re.compile(r"[\w.]$")


def digits_are_single_tokens(tokenize: Callable[[str], list[int]]) -> bool:
    """Number literals are written one digit at a time by this tokenizer."""
    return all(len(tokenize(s)) == len(s) for s in ("1234", "98765"))


@dataclass
class Adjustment:
    """What to do to one step's scores: add `bonus` to `favoured`; then either keep only `only`
    (when not None) or mask `blocked`."""
    favoured: list[int] = field(default_factory=list)
    bonus: float = 0.0
    only: list[int] | None = None
    blocked: list[int] = field(default_factory=list)


class Vocabulary:
    """The pieces of text a vocabulary's tokens decode to, split as the guide needs them: tokens
    that may appear inside a literal (single digits and the decimal point), and every other token
    carrying a digit (that one would bypass the check, so it is always masked in code)."""

    def __init__(self, pieces: dict[int, str]):
        self.inner = {tid: p for tid, p in pieces.items() if len(p) == 1 and (p.isdigit() or p == ".")}
        self.digits = {tid: p for tid, p in self.inner.items() if p.isdigit()}
        self.other_digit_tokens = [tid for tid, p in pieces.items()
                                   if tid not in self.inner and any(c.isdigit() for c in p)]


class CodeGuide:
    """Inside an open ```python block: masks digit tokens that would write a number not in `allowed`
    (None: any number), and adds `bonus` to the `favoured` token ids. `decode` turns the generated
    token ids (after the prompt) into text, without special tokens."""

    def __init__(self, vocabulary: Vocabulary, decode: Callable[[list[int]], str], allowed: Iterable[str] | None,
                 favoured: Iterable[int] = (), bonus: float = 0.0) -> None:
        self.vocabulary, self.decode = vocabulary, decode
        self.favoured, self.bonus = sorted(set(favoured)), bonus
        self.allowed = set(allowed) if allowed is not None else None
        self.prefixes = {a[:i] for a in self.allowed or () for i in range(1, len(a) + 1)}

    def open_code(self, generated: list[int]) -> str | None:
        """The code written so far inside an open ```python block, or None outside one."""
        text = self.decode(generated)
        opening = None
        for opening in PYTHON_FENCE_OPENING.finditer(text):
            pass
        if opening is None:
            return None
        code = text[opening.end():]
        return None if "```" in code else code

    def adjust(self, generated: list[int]) -> Adjustment | None:
        """The adjustment for the next token after `generated`, or None (outside code: leave it)."""
        code = self.open_code(generated)
        if code is None:
            return None
        out = Adjustment(favoured=self.favoured, bonus=self.bonus) if self.favoured and self.bonus else Adjustment()
        if self.allowed is None:
            return out
        v = self.vocabulary
        literal = _TRAILING_LITERAL.search(code)
        if literal:
            run = literal.group(0)
            if run not in self.allowed:  # the literal must go on: only the digits that keep it allowed
                keep = [tid for tid, p in v.inner.items() if run + p in self.prefixes]
                out.only = keep or None  # nothing left (cannot happen by construction): leave the model free
                return out
            out.blocked = [tid for tid, p in v.inner.items() if run + p not in self.prefixes]
        elif not _AFTER_NAME.search(code):  # a new literal starts here (not `x1`, not `.2f`)
            out.blocked = [tid for tid, p in v.digits.items() if p not in self.prefixes]
        out.blocked = out.blocked + v.other_digit_tokens
        return out


__all__ = ["CodeGuide", "Vocabulary", "Adjustment", "digits_are_single_tokens"]
