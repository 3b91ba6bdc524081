"""Where packed evaluation spends its time: the torch operators of one packed generation, by self CPU time.

Packs ``--jobs`` evaluations of the organism's first ``--prompts`` eval prompts (random residual selections of p = 8 at layer
2, gammas 0 and 1.5 in turn, as a run's random baseline packs them) with the run's defaults
(evaluation.batch_size 128, pack_tokens 65,536, 128 new tokens, greedy), once unprofiled for the wall
time and once under ``torch.profiler``, and prints the operators that take the most self time.

    python bench/packing_profile.py --threads 2 [--jobs 6 --prompts 200]

(The profiler keeps every operator call: 6 evaluations of 200 prompts hold about a hundred thousand; 24 of
500 outgrew 12 GiB.)
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=200, help="eval prompts per evaluation (the make-run config's 200)")
    ap.add_argument("--rows", type=int, default=15, help="operators to print")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ipg.baselines import random_components
    from ipg.components import Site
    from ipg.generation import SamplingParams
    from ipg.models import load_model
    from ipg.organism.card import splits
    from ipg.packing import Job, generate_packed
    from ipg.prompts import format_examples

    model, tokenizer = load_model("organism")
    examples = format_examples(tokenizer, splits()["eval"][: args.prompts])
    site = Site(2, "residual")
    width = model.config.hidden_size
    jobs = [
        Job(examples, {"scale": random_components(width, site, 8, seed=0, draw=k // 2), "gamma": (0.0, 1.5)[k % 2]})
        for k in range(args.jobs)
    ]
    params = SamplingParams(n=1, greedy=True, max_new_tokens=128)

    def run() -> float:
        start = time.perf_counter()
        generate_packed(model, tokenizer, jobs, params, batch_size=128, pack_tokens=65536)
        return time.perf_counter() - start

    wall = run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        profiled = run()
    print(
        f"{args.jobs} evaluations x {len(examples)} prompts packed: {wall:.1f} s ({profiled:.1f} s profiled); "
        f"{args.threads} threads"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
