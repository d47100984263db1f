"""Worked examples for small models, picked per question.

A 135M model cannot follow rules, but it imitates a close example well: so for each question the
few examples of the bank (shots_bank.py: 150 common computations, written without sight of the
benchmark's questions) that share its rarest words go before it, the closest last. The constants
the bank's code needs beyond its questions' numbers are what grounded decoding allows besides the
conversation's own numbers.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from agent.smallmodel.shots_bank import BANK

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numbers_in(text: str) -> set[str]:
    """The number literals of a text as Python would write them: `2024-01-05` gives 2024, 1 and 5."""
    out: set[str] = set()
    for n in _NUMBER.findall(re.sub(r"(?<=\d)[,_](?=\d{3}\b)", "", text)):  # 1,000 and 1_000 are 1000
        whole, _, frac = n.partition(".")
        whole = whole.lstrip("0") or "0"
        out.add(f"{whole}.{frac}" if frac else whole)
        if frac and set(frac) == {"0"}:
            out.add(whole)  # 18.0 may be written 18
    return out


# Numbers the bank's code uses without its question giving them, in two examples or more: the
# constants such code legitimately needs (`+ 1`, `0.5`, `24`, `60`, `100`, ...).
_STRUCTURAL = Counter(n for q, code in BANK for n in numbers_in(code) - numbers_in(q))
CONSTANTS: frozenset[str] = frozenset({"0", "1", "2"} | {n for n, count in _STRUCTURAL.items() if count >= 2})

_STOP = frozenset("what is the a an of are there in to from and if how many does do be by for with as "
                  "it its this that which use python".split())


def _terms(text: str) -> list[str]:
    """Words (crudely stemmed: integers, integer), operators and placeholders for numbers, quoted
    strings and lists."""
    out = []
    for t in re.findall(r"[a-z]+|\*\*|[*/%+\-]|\d+|'[^']*'|\[", text.lower()):
        t = "#" if t.isdigit() else "'str'" if t.startswith("'") else t
        if t not in _STOP:
            out.append(re.sub(r"(?<=\w{3})(?:ing|ed|es|s)$", "", t))
    return out


_DF = Counter(t for q, _ in BANK for t in set(_terms(q)))
_IDF = {t: math.log((1 + len(BANK)) / (1 + n)) + 1 for t, n in _DF.items()}
_VECTORS = [{t: _IDF[t] for t in set(_terms(q))} for q, _ in BANK]


def _similarity(terms: set[str], vector: dict[str, float]) -> float:
    """Cosine of binary tf-idf vectors: shared rare words count, extra words cost."""
    query = {t: _IDF.get(t, 0.0) for t in terms}
    dot = sum(w * vector[t] for t, w in query.items() if t in vector)
    norm = math.sqrt(sum(w * w for w in query.values()) * sum(w * w for w in vector.values()))
    return dot / norm if norm else 0.0


def pick(question: str, k: int = 1, near: float = 0.6) -> list[tuple[str, str]]:
    """Up to k bank examples close to `question` (shared terms weighted by rarity, at least `near`
    times the best score), closest last, as (question, answer) turns with the code fenced.
    Only close ones: a 135M model copies the shape of loosely related examples too."""
    return [(q, f"```python\n{code}\n```") for q, code in pick_code(question, k, near)]


def pick_code(question: str, k: int = 1, near: float = 0.6, least: float = 0.0) -> list[tuple[str, str]]:
    """As `pick`, the (question, code) pairs themselves; none scoring under `least` (0 to 1)."""
    terms = set(_terms(question))
    scored = sorted(((_similarity(terms, v), i) for i, v in enumerate(_VECTORS)), key=lambda s: (-s[0], s[1]))[:k]
    best = scored[0][0] if scored else 0.0
    chosen = [BANK[i] for score, i in scored if score >= max(near * best, least)] if best > 0 else []
    return list(reversed(chosen))
