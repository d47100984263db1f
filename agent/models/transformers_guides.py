"""Grounded code: inside a ```python block, every number literal a small model writes must be one
that the conversation gave it (or a common constant), and the tokens of its worked example are
favoured.

Why: a 135M model copies numbers from the worked examples it was shown (`range(1, 101)` for "1 to
1000", `9` from an example's list) or invents them (`range(1, 11 + 1)` for "1 to 10"). Constrained
decoding removes that class of slip: at a digit, only continuations that stay a prefix of an allowed
number survive, and a literal may only end where it is a whole allowed number. And it drifts from
the example's shape to what the question's words suggest (`144 % 12` after `9875 / 16`, `reversed(s)`
after `s[::-1]`): a logit bonus for the example's (and the question's) tokens keeps it closer.
Prose is not touched.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

import torch
from transformers import LogitsProcessor

from tools.text import PYTHON_FENCE_OPENING

# The literal being written: digits (and a decimal point) not glued to a name or an attribute.
_TRAILING_LITERAL = re.compile(r"(?<![\w.])\d[\d.]*$")
_AFTER_NAME = re.compile(r"[\w.]$")


@lru_cache(maxsize=4)
def _digit_tokens(tokenizer) -> tuple[dict[int, str], list[int]]:
    """Tokens that may appear inside a literal (single digits and the decimal point), and any other
    token carrying a digit: that one would bypass the check, so it is always masked in code."""
    pieces = {tid: tokenizer.convert_tokens_to_string([tok]) for tok, tid in tokenizer.get_vocab().items()}
    inner = {tid: p for tid, p in pieces.items() if len(p) == 1 and (p.isdigit() or p == ".")}
    return inner, [tid for tid, p in pieces.items() if tid not in inner and any(c.isdigit() for c in p)]


class GroundedCode(LogitsProcessor):
    """Inside an open ```python block: masks digit tokens that would write a number not in `allowed`
    (None: any number), and adds `bonus` to the logits of the `favoured` token ids.
    Grounding numbers needs a tokenizer whose digits are single tokens (SmolLM2, Qwen; not Llama 3,
    which groups three): check `usable`."""

    def __init__(self, tokenizer, n_prompt: int, allowed: Iterable[str] | None,
                 favoured: Iterable[int] = (), bonus: float = 0.0) -> None:
        self.tokenizer, self.n_prompt = tokenizer, n_prompt
        self.favoured, self.bonus = sorted(set(favoured)), bonus
        self.allowed = set(allowed) if allowed is not None else None
        self.prefixes = {a[:i] for a in self.allowed or () for i in range(1, len(a) + 1)}
        self.inner, self.other_digit_tokens = _digit_tokens(tokenizer)
        self.digits = {tid: p for tid, p in self.inner.items() if p.isdigit()}

    @staticmethod
    def usable(tokenizer) -> bool:
        """Digits are single tokens, so number literals are written one digit at a time."""
        return all(len(tokenizer(s, add_special_tokens=False)["input_ids"]) == len(s) for s in ("1234", "98765"))

    def _open_code(self, ids: list[int]) -> str | None:
        """The code written so far inside an open ```python block, or None outside one."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        opening = None
        for opening in PYTHON_FENCE_OPENING.finditer(text):
            pass
        if opening is None:
            return None
        code = text[opening.end():]
        return None if "```" in code else code

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        code = self._open_code(input_ids[0, self.n_prompt:].tolist())
        if code is None:
            return scores
        if self.favoured and self.bonus:
            scores = scores.clone()
            scores[:, self.favoured] += self.bonus
        if self.allowed is None:
            return scores
        block = torch.zeros_like(scores[0], dtype=torch.bool)
        if self.other_digit_tokens:
            block[self.other_digit_tokens] = True
        literal = _TRAILING_LITERAL.search(code)
        if literal:
            run = literal.group(0)
            if run not in self.allowed:  # the literal must go on: only the digits that keep it allowed
                keep = [tid for tid, p in self.inner.items() if run + p in self.prefixes]
                block[:] = True
                block[keep] = False
            else:
                block[[tid for tid, p in self.inner.items() if run + p not in self.prefixes]] = True
        elif not _AFTER_NAME.search(code):  # a new literal starts here (not `x1`, not `.2f`)
            block[[tid for tid, p in self.digits.items() if p not in self.prefixes]] = True
        if block.all():  # nothing left (cannot happen by construction): leave the model free
            return scores
        return scores.masked_fill(block.unsqueeze(0), float("-inf"))
