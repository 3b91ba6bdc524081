"""Write the step-by-step word problems (ipg.word_problems) as support.jsonl and eval.jsonl here.

    python deploy/data/word-problems/make.py [--level easy] [--support 128] [--eval 128]

Deterministic: the same arguments rewrite the same files. The level shipped here was chosen by measuring
the model's greedy accuracy, trace lengths and cut-offs (docs/results/smollm2-135m-instruct-reasoning.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ipg.data import write_jsonl
from ipg.word_problems import LEVELS, splits

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level", choices=sorted(LEVELS), default="easy")
    p.add_argument("--support", type=int, default=128)
    p.add_argument("--eval", type=int, default=128)
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)
    for split, rows in splits(args.level, args.support, args.eval).items():
        path = write_jsonl(args.out / f"{split}.jsonl", rows)
        print(f"wrote {len(rows)} {args.level} problems to {path}")


if __name__ == "__main__":
    main()
