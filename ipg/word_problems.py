"""Step-by-step word problems for real chat models, in GSM8K's layout.

Each problem takes two or three operations ("She buys 3 bags of 6 apples and gives away 4...") and
ends with "Think step by step.", so an instruct model writes a trace of steps before its answer. The
records are {"id", "question", "answer"}, the answer a worked solution ending in '#### n', as GSM8K
publishes them; a run maps prompt <- question and reads the reference after '####'.

Difficulty levels (chosen by measurement, docs/results/smollm2-135m-instruct-reasoning.md):
  easy    two operations on numbers 2..12
  medium  two operations on numbers up to 50
  hard    three operations on numbers up to 50
Deterministic: `python deploy/data/word-problems/make.py` writes the support and eval files (they never
share a question); ``fresh`` draws further problems outside them (the named SAEs train on those).
"""

from __future__ import annotations

import random

NAMES = [
    ("Sam", "he"),
    ("Mia", "she"),
    ("Leo", "he"),
    ("Ava", "she"),
    ("Tom", "he"),
    ("Zoe", "she"),
    ("Ben", "he"),
    ("Lily", "she"),
]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "cards", "books", "shells"]
LEVELS = {"easy": (2, 12, 2), "medium": (5, 50, 2), "hard": (5, 50, 3)}  # low, high, operations


def _two_step(rng: random.Random, lo: int, hi: int) -> tuple[str, list[str], int]:
    (name, he), item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    if kind == 0:  # a + b - c
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        c = rng.randint(1, a + b - 1)
        q = (
            f"{name} has {a} {item}. {he.capitalize()} buys {b} more and then gives {c} to a friend. "
            f"How many {item} does {name} have now?"
        )
        return q, [f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}"], a + b - c
    if kind == 1:  # a * b - c
        a, b = rng.randint(2, max(3, hi // 5)), rng.randint(lo, hi)
        c = rng.randint(1, a * b - 1)
        q = (
            f"{name} buys {a} bags of {item}. Each bag has {b} {item}. {he.capitalize()} gives away {c} of them. "
            f"How many {item} does {name} have left?"
        )
        return q, [f"{a} * {b} = {a * b}", f"{a * b} - {c} = {a * b - c}"], a * b - c
    if kind == 2:  # total - a - b
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        total = a + b + rng.randint(lo, hi)
        q = (
            f"{name} reads {a} pages on Monday and {b} pages on Tuesday. The book has {total} pages. "
            f"How many pages does {name} still have to read?"
        )
        return q, [f"{a} + {b} = {a + b}", f"{total} - {a + b} = {total - a - b}"], total - a - b
    a, b = rng.randint(2, max(3, hi // 5)), rng.randint(lo, hi)  # a * b + c
    c = rng.randint(lo, hi)
    q = (
        f"{name} has {a} boxes with {b} {item} in each box and {c} loose {item}. "
        f"How many {item} does {name} have in all?"
    )
    return q, [f"{a} * {b} = {a * b}", f"{a * b} + {c} = {a * b + c}"], a * b + c


def _three_step(rng: random.Random, lo: int, hi: int) -> tuple[str, list[str], int]:
    (name, he), item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(lo, hi), rng.randint(2, max(3, hi // 5)), rng.randint(lo, hi)
    d = rng.randint(1, a + b * c - 1)
    q = (
        f"{name} has {a} {item}. {he.capitalize()} buys {b} bags with {c} {item} in each bag, then gives away {d}. "
        f"How many {item} does {name} have now?"
    )
    steps = [f"{b} * {c} = {b * c}", f"{a} + {b * c} = {a + b * c}", f"{a + b * c} - {d} = {a + b * c - d}"]
    return q, steps, a + b * c - d


def problems(level: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct problems of the level, in a fixed order."""
    lo, hi, operations = LEVELS[level]
    rng, seen, out = random.Random(f"{level}/{seed}"), set(), []
    while len(out) < n:
        q, steps, answer = (_two_step if operations == 2 else _three_step)(rng, lo, hi)
        if q in seen:
            continue
        seen.add(q)
        out.append({"question": f"{q} Think step by step.", "answer": "\n".join(steps) + f"\n#### {answer}"})
    return out


def splits(level: str, n_support: int, n_eval: int) -> dict[str, list[dict]]:
    """The support and eval records, ids included."""
    chosen = problems(level, n_support + n_eval)
    return {
        split: [{"id": f"{split}-{i:04d}", **r} for i, r in enumerate(part)]
        for split, part in (("support", chosen[:n_support]), ("eval", chosen[n_support:]))
    }


def fresh(level: str, n: int, seed: int, exclude: int = 1024) -> list[dict]:
    """``n`` problems of the level drawn with another seed, none among the first ``exclude`` of the
    split files' sequence (which the support and eval files are cut from)."""
    held = {r["question"] for r in problems(level, exclude)}
    return [r for r in problems(level, n + exclude, seed=seed + 1) if r["question"] not in held][:n]
