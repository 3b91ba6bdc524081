"""Write the arithmetic task for real chat models: "What is a + b?" with a, b in 10..49.

The records use GSM8K's published layout, {"id", "question", "answer"} with the answer a worked
solution ending in '#### n', so a run exercises the field mapping (prompt <- question) and GSM8K
reference reading. Deterministic: `python deploy/data/arithmetic/make.py` rewrites the same files.
"""

from __future__ import annotations

import random
from pathlib import Path

from ipg.data import write_jsonl

HERE = Path(__file__).resolve().parent


def problems(seed: int = 0) -> list[tuple[int, int]]:
    """Every ordered pair once, shuffled: support and eval splits never share a question."""
    pairs = [(a, b) for a in range(10, 50) for b in range(10, 50)]
    random.Random(seed).shuffle(pairs)
    return pairs


def record(split: str, i: int, a: int, b: int) -> dict:
    return {"id": f"{split}-{i:04d}", "question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}


def main(n_support: int = 256, n_eval: int = 200) -> None:
    pairs = problems()
    splits = {"support": pairs[:n_support], "eval": pairs[n_support : n_support + n_eval]}
    for split, chosen in splits.items():
        path = write_jsonl(HERE / f"{split}.jsonl", [record(split, i, a, b) for i, (a, b) in enumerate(chosen)])
        print(f"wrote {len(chosen)} problems to {path}")


if __name__ == "__main__":
    main()
