"""Does the loop make the embedded 135M model useful? Accuracy on questions with exact answers,
without tools and with the python tool, and seconds per question.

    python bench/small_model_accuracy.py [--model hf:smollm2] [--limit N]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import Chat  # noqa: E402
from agent.backends import get_backend  # noqa: E402

QUESTIONS: list[tuple[str, str]] = [
    ("What is 2**100?", "1267650600228229401496703205376"),
    ("What is 12345 * 6789?", "83810205"),
    ("What is 17 factorial?", "355687428096000"),
    ("What is the sum of the integers from 1 to 1000?", "500500"),
    ("What is 7 to the power of 23?", "27368747340080916343"),
    ("What is 123456789 modulo 97?", str(123456789 % 97)),
    ("How many prime numbers are there below 1000?", "168"),
    ("What is the 30th Fibonacci number, if the first two are 1 and 1?", "832040"),
    ("What is the greatest common divisor of 462 and 1071?", "21"),
    ("What is the least common multiple of 21 and 6?", "42"),
    ("What is the square root of 15129?", "123"),
    ("What is 98765 minus 43210?", "55555"),
    ("How many days are there from 2024-01-01 to 2024-12-25?", "359"),
    ("What is the average of 3, 8, 15, 22 and 42?", "18"),
    ("What is the largest number in the list [17, 4, 99, 23, 56]?", "99"),
    ("How many times does the letter s appear in the word mississippi?", "4"),
    ("What is the sum of the digits of 2**50?", str(sum(map(int, str(2**50))))),
    ("What is 1000000007 times 3?", "3000000021"),
    ("What is 45 percent of 2480?", "1116"),
    ("What is the median of the numbers 7, 1, 9, 3, 5 and 11?", "6"),
    ("How many words are in the sentence 'the quick brown fox jumps over the lazy dog'?", "9"),
    ("What is the product of the integers from 1 to 10?", "3628800"),
    ("What is the string 'kernelchat' reversed?", "tahclenrek"),
    ("What is 2 to the power of 64, minus 1?", "18446744073709551615"),
]

NO_TOOLS_SYSTEM = "You are a helpful assistant. Answer the question with the exact result, briefly."


def correct(answer: str, expected: str) -> bool:
    """The expected value appears as a whole token (numbers compared without separators)."""
    answer = re.sub(r"\[stopped after \d+ steps[^\]]*\]", "", answer)  # the loop's marker is no answer
    flat = answer.replace(",", "").replace("_", "")
    if expected.isdigit():
        # Exact for integers of any size; 18.0 or 18.00 also count as 18.
        return any(tok == expected or ("." in tok and tok.rstrip("0").rstrip(".") == expected)
                   for tok in re.findall(r"\d+(?:\.\d+)?", flat))
    return expected.lower() in answer.lower()


def run(model: str, tools: bool, questions, verbose: bool = False) -> tuple[int, float, list[str]]:
    backend = get_backend(model)
    ok, seconds, rows = 0, 0.0, []
    for q, expected in questions:
        chat = Chat(backend=backend, use_python=tools, max_steps=4, system=None if tools else NO_TOOLS_SYSTEM,
                    timeout=30, progress=False)
        t0 = time.perf_counter()
        try:
            answer = chat(q + (" Use Python." if tools else ""))
        except Exception as e:  # noqa: BLE001 - a failure is a wrong answer, reported
            answer = f"[{type(e).__name__}: {e}]"
        finally:
            chat.close()
        dt = time.perf_counter() - t0
        seconds += dt
        good = correct(answer, expected)
        ok += good
        rows.append(f"{'✓' if good else '✗'} {dt:5.1f}s  {q[:60]:<60} -> {answer.strip()[:50]!r}")
        if verbose:
            print(rows[-1], flush=True)
    return ok, seconds, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="hf:smollm2")
    ap.add_argument("--limit", type=int, default=len(QUESTIONS))
    ap.add_argument("--only", choices=["tools", "no-tools"], default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    qs = QUESTIONS[: args.limit]
    results = {}
    modes = [("no tools", False), ("python tool", True)]
    if args.only:
        modes = [m for m in modes if m[1] == (args.only == "tools")]
    for label, tools in modes:
        if args.verbose:
            print(f"--- {label}", flush=True)
        ok, secs, rows = run(args.model, tools, qs, args.verbose)
        results[label] = (ok, secs)
    print(f"{args.model}: {len(qs)} questions with exact answers")
    print(f"{'':<14}{'accuracy':>12}{'s/question':>12}")
    for label, (ok, secs) in results.items():
        print(f"{label:<14}{ok:>5}/{len(qs):<3} {100 * ok / len(qs):3.0f}%{secs / len(qs):>10.1f}")


if __name__ == "__main__":
    main()
