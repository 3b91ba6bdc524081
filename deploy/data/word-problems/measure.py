"""Measure the model on each difficulty level: what the shipped level was chosen by.

    python deploy/data/word-problems/measure.py [--model smollm2-135m-instruct] [--n 24] [--max-new-tokens 192]

For each level, greedy decoding on the first N eval problems of that level (chat template, answers read
with hash, boxed, answer_is, last_number): accuracy with its exact (Clopper-Pearson) 95% interval, the length distribution of the
traces (generated tokens: quartiles and max), the share cut off at the token limit, lines per trace, and
how many traces contain each candidate reflection word. Prints a Markdown table and the word counts;
--json writes every figure.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

WORDS = (
    "check",
    "verify",
    "let me",
    "wait",
    "let's",
    "double",
    "again",
    "actually",
    "mistake",
    "however",
    "first",
    "next",
    "then",
    "so,",
    "therefore",
    "step",
)


def measure(model_name: str, n: int, max_new_tokens: int, levels: list[str], threads: int) -> dict:
    import torch
    from scipy.stats import binomtest

    from ipg.answers import Extractor
    from ipg.evaluation import score_items
    from ipg.generation import SamplingParams, generate
    from ipg.models import load_model
    from ipg.prompts import format_examples
    from ipg.word_problems import splits

    torch.set_num_threads(threads)
    model, tokenizer = load_model(model_name)
    extractor = Extractor(("hash", "boxed", "answer_is", "last_number"))
    out = {}
    for level in levels:
        rows = splits(level, 128, n)["eval"]
        examples = format_examples(
            tokenizer,
            [{"id": r["id"], "prompt": r["question"], "answer": r["answer"].split("#### ")[-1]} for r in rows],
            max_new_tokens=max_new_tokens,
        )
        samples = generate(
            model, tokenizer, examples, SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens), batch_size=n
        )
        items = score_items(examples, samples, (), extractor)
        texts = [g[0].text for g in samples]
        lengths = np.array([it.length for it in items])
        correct = sum(it.correct for it in items)
        ci = binomtest(correct, len(items)).proportion_ci(0.95)  # exact: a bootstrap of 0/24 would say [0, 0]
        acc = {"correct": correct, "estimate": correct / len(items), "low": ci.low, "high": ci.high}
        out[level] = {
            "n": n,
            "accuracy": acc,
            "answered": float(np.mean([it.answered for it in items])),
            "tokens": {
                "mean": float(lengths.mean()),
                "q25": float(np.quantile(lengths, 0.25)),
                "median": float(np.median(lengths)),
                "q75": float(np.quantile(lengths, 0.75)),
                "max": int(lengths.max()),
            },
            "cut_off": float(np.mean([not it.finished for it in items])),
            "lines": float(np.mean([len([x for x in t.split("\n") if x.strip()]) for t in texts])),
            "words": {w: int(sum(w in t.lower() for t in texts)) for w in WORDS},
        }
        print(f"{level}: done", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--levels", nargs="+", default=["easy", "medium", "hard"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write every figure to this file")
    args = p.parse_args(argv)
    res = measure(args.model, args.n, args.max_new_tokens, args.levels, args.threads)
    print(
        f"| level | accuracy (95% CI) | answered | tokens mean | quartiles | max | cut off at {args.max_new_tokens} | lines |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for level, r in res.items():
        a, t = r["accuracy"], r["tokens"]
        print(
            f"| {level} | {a['correct']}/{r['n']}: {100 * a['estimate']:.1f}% "
            f"[{100 * a['low']:.1f}, {100 * a['high']:.1f}] | {100 * r['answered']:.0f}% | "
            f"{t['mean']:.1f} | {t['q25']:.0f} / {t['median']:.0f} / {t['q75']:.0f} | {t['max']} | {100 * r['cut_off']:.1f}% | "
            f"{r['lines']:.1f} |"
        )
    total = sum(r["n"] for r in res.values())
    counts = {w: sum(r["words"][w] for r in res.values()) for w in WORDS}
    print(f"\ntraces containing each word, of {total}: " + ", ".join(f"{w!r} {c}" for w, c in counts.items()))
    if args.json:
        from ipg.files import atomic_write_json

        atomic_write_json(args.json, res)


if __name__ == "__main__":
    main()
