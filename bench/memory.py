"""Peak memory of attribution vs its micro-batch budget (``batch_tokens``: rows x padded length per
forward/backward), each budget in a fresh process, same prompts and settings; scores must not change.

    python bench/memory.py                                  # organism, 16 prompts, layers 1 2, q 4, N 5
    python bench/memory.py --budgets 512 2048 8192 32768 --out bench/results/memory.json

For each budget: peak RSS of the process (ru_maxrss), RSS after the model is loaded (before attributing),
the attribution's own increase (peak - loaded), seconds, and the largest score difference to the first
budget's scores relative to the largest |score|. Prints one JSON line with the ratios to the smallest budget.

``--zero3 R`` also starts a DeepSpeed ZeRO-3 gradient group of R ranks on a local Ray cluster (CPU, gloo)
and reports each rank's parameter bytes against the unsharded model's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from record import measured_on  # bench/record.py

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
from ipg.attribution import attribute
from ipg.models import load_model
from ipg.organism.card import splits
model, tok = load_model({model!r})
examples = splits()["support"][:{prompts}]
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
res = attribute(model, tok, examples, method="ipg", layers={layers}, q={q}, n_samples={n}, max_new_tokens={tokens}, seed=0,
                completeness=False, batch_tokens={budget})
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"loaded_kib": loaded, "peak_kib": peak, "seconds": seconds, "scores": res.table.column("score").to_pylist()}}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="organism")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--q", type=int, default=4)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--budgets", type=int, nargs="+", default=[512, 2048, 8192, 32768])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--zero3", type=int, default=0, metavar="RANKS", help="also measure a ZeRO-3 group of RANKS ranks")
    ap.add_argument("--out")
    args = ap.parse_args()

    rows, reference = [], None
    for budget in args.budgets:
        code = CHILD.format(
            root=str(ROOT),
            threads=args.threads,
            model=args.model,
            prompts=args.prompts,
            layers=list(args.layers),
            q=args.q,
            n=args.n,
            tokens=args.max_new_tokens,
            budget=budget,
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        scores = r.pop("scores")
        reference = reference or scores
        scale = max(abs(s) for s in reference) or 1.0
        rows.append(
            {
                "batch_tokens": budget,
                "peak_mib": round(r["peak_kib"] / 1024, 1),
                "loaded_mib": round(r["loaded_kib"] / 1024, 1),
                "attribution_mib": round((r["peak_kib"] - r["loaded_kib"]) / 1024, 1),
                "seconds": round(r["seconds"], 2),
                "max_score_diff_rel": max(abs(a - b) for a, b in zip(scores, reference)) / scale,
            }
        )
    base = rows[0]
    for r in rows:
        r["attribution_mib_vs_smallest"] = round(r["attribution_mib"] / max(base["attribution_mib"], 0.1), 2)
        r["seconds_vs_smallest"] = round(r["seconds"] / base["seconds"], 2)
    result = {
        "bench": "memory",
        **measured_on(),
        "model": args.model,
        "prompts": args.prompts,
        "layers": args.layers,
        "q": args.q,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "budgets": rows,
    }
    if args.zero3:
        result["zero3"] = zero3(args.model, args.zero3)
    line = json.dumps(result)
    print(line)
    if args.out:
        sys.path.insert(0, str(ROOT))
        from ipg.files import atomic_write_text

        atomic_write_text(args.out, line + "\n")
    return 0


def zero3(model: str, ranks: int) -> dict:
    """Per-rank parameter bytes of a ZeRO-3 group vs the unsharded model (what each rank holds at rest)."""
    sys.path.insert(0, str(ROOT))
    import ray

    from ipg.driver.config import DeepSpeedConfig, RayConfig
    from ipg.driver.orchestration.pipeline import RaySession

    cfg = RayConfig(
        enabled=True,
        gradient_backend="deepspeed",
        deepspeed=DeepSpeedConfig(ranks=ranks),
        cpus_per_actor=0.5,
        progress="off",
    )
    try:
        with RaySession(model, cfg, log=lambda m: None) as session:
            per_rank = session.info["zero3"]
    finally:
        ray.shutdown()
    full = per_rank[0]["full_bytes"]
    return {
        "ranks": ranks,
        "full_bytes": full,
        "per_rank_bytes": [m["local_bytes"] for m in per_rank],
        "max_rank_vs_full": round(max(m["local_bytes"] for m in per_rank) / full, 4),
    }


if __name__ == "__main__":
    sys.exit(main())
