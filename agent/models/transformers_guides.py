"""The grounded-code guide (code_guides.py) as a transformers logits processor."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import torch
from transformers import LogitsProcessor

from agent.models.code_guides import CodeGuide, Vocabulary, digits_are_single_tokens


@lru_cache(maxsize=4)
def vocabulary(tokenizer) -> Vocabulary:
    return Vocabulary({tid: tokenizer.convert_tokens_to_string([tok]) for tok, tid in tokenizer.get_vocab().items()})


class GroundedCode(LogitsProcessor):
    """CodeGuide over a transformers tokenizer; `n_prompt`: the prompt's length in input_ids."""

    def __init__(self, tokenizer, n_prompt: int, allowed: Iterable[str] | None,
                 favoured: Iterable[int] = (), bonus: float = 0.0) -> None:
        self.n_prompt = n_prompt
        self.guide = CodeGuide(vocabulary(tokenizer), lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                               allowed, favoured, bonus)

    @staticmethod
    def usable(tokenizer) -> bool:
        return digits_are_single_tokens(lambda s: tokenizer(s, add_special_tokens=False)["input_ids"])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        change = self.guide.adjust(input_ids[0, self.n_prompt:].tolist())
        if change is None:
            return scores
        if change.favoured:
            scores = scores.clone()
            scores[:, change.favoured] += change.bonus
        if change.only is not None:
            keep = torch.full_like(scores, float("-inf"))
            keep[:, change.only] = scores[:, change.only]
            return keep
        if change.blocked:
            scores = scores.clone() if not change.favoured else scores
            scores[:, change.blocked] = float("-inf")
        return scores
