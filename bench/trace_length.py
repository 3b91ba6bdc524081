"""How the gradient pass grows with the generated length T: seconds and peak memory for T in {128, 512,
1024, 2048}, each in a fresh process, on a random-weight model with SmolLM2-135M's shape (30 blocks,
hidden 576, vocabulary 49,152), at a site in the upper quarter, at the default micro-batch budget.

    python bench/trace_length.py                                   # layer 22, q 4, 1 trajectory per T
    python bench/trace_length.py --lengths 128 512 1024 2048 4096 --out bench/results/trace_length.json

Variants, each at every T:
- default: the LM head's logits in chunks (``ipg.gradient_pass.LOGIT_CHUNK_BYTES``), blocks storing
  their activations;
- checkpointing: ``checkpoint: true`` (the blocks above the site recompute their activations in the
  backward pass);
- unchunked LM head: the default with positions x vocabulary logits held at once (what chunking buys).

The trajectory is a prompt of 32 random tokens and T random generated tokens with advantage 1 (a
random model's samples would stop anywhere; the gradient pass only needs the tokens). Memory is the
process's peak resident set during the pass above its resident set before it (the kernel's peak
counter is reset in between: /proc/self/clear_refs). The q rows of a trajectory share micro-batches of
at most 2,048 padded tokens (the CPU default), so below T ~ 2,000 memory follows the micro-batch, not T;
the per-token slope is fitted where one row fills a micro-batch. Prints per variant the exponent of seconds ~ T^k
(least squares on log-log) and the memory per token (least-squares slope of MiB against T).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from record import measured_on, run_options  # bench/record.py

ROOT = Path(__file__).resolve().parents[1]
BUDGET_GIB = 24  # these machines' memory: a 2048-token trajectory must attribute within it
BUDGET = 2048  # the CPU micro-batch budget (AttributionConfig.budget), in padded tokens
PROMPT = 32  # prompt tokens before the T generated ones

CHILD = r"""
import json, sys, time
sys.path[:0] = [{root!r}, {bench!r}]
import torch
torch.set_num_threads({threads})
import ipg.gradient_pass as gp
from ipg.attribution_config import AttributionConfig
from ipg.components import Site
from random_models import build

def rss_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

model, _ = build({shape!r})
if {unchunked}:
    gp.LOGIT_CHUNK_BYTES = 2 ** 62
vocab = model.config.vocab_size
g = torch.Generator().manual_seed({length})
prompt = torch.randint(3, vocab, ({prompt},), generator=g).tolist()
completion = torch.randint(3, vocab, ({length},), generator=g).tolist()
trajs = [gp._Trajectory(prompt + completion, len(prompt), 1.0)]
cfg = AttributionConfig(method="ipg", layers=({layer},), q={q}, checkpoint={checkpoint}, completeness=False)
rows = [gp._Row(0, 0, a, w) for a, w in cfg.alphas]
site = Site({layer}, "residual")
open("/proc/self/clear_refs", "w").write("5")  # the peak counter restarts at the current resident set
before = rss_kib("VmRSS")
t = time.perf_counter()
scores = gp.site_scores(model, [site], trajs, rows, 1, {{site: torch.zeros(model.config.hidden_size)}}, cfg)[site]
seconds = time.perf_counter() - t
print(json.dumps({{"before_kib": before, "peak_kib": rss_kib("VmHWM"), "seconds": seconds, "scores": scores[0].tolist()}}))
"""

VARIANTS = {
    "default": dict(checkpoint=False, unchunked=False),
    "checkpointing": dict(checkpoint=True, unchunked=False),
    "unchunked LM head": dict(checkpoint=False, unchunked=True),
}


def run_one(args, length: int, variant: str) -> dict:
    code = CHILD.format(
        root=str(ROOT),
        bench=str(ROOT / "bench"),
        threads=args.threads,
        shape=args.shape,
        length=length,
        layer=args.layer,
        q=args.q,
        prompt=PROMPT,
        **VARIANTS[variant],
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"T {length} {variant}: the child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="smollm2-135m", help="a shape of bench/random_models.py")
    ap.add_argument("--layer", type=int, default=22)
    ap.add_argument("--q", type=int, default=4)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    run_options(ap)
    args = ap.parse_args()

    rows, summary = [], []
    for variant in args.variants:
        reference = {}
        for length in args.lengths:
            r = run_one(args, length, variant)
            scores = np.array(r.pop("scores"))
            if variant == args.variants[0]:
                reference[length] = scores
            ref = reference.get(length, scores)
            mib = (r["peak_kib"] - r["before_kib"]) / 1024
            width = length + PROMPT
            rows_per_batch = max(1, min(args.q, BUDGET // width))  # micro-batches: rows x width <= the budget
            row = {
                "variant": variant,
                "T": length,
                "seconds": round(r["seconds"], 2),
                "peak_mib": round(r["peak_kib"] / 1024, 1),
                "attribution_mib": round(mib, 1),
                "mib_per_token": round(mib / length, 3),
                "rows_per_micro_batch": rows_per_batch,
                "mib_per_micro_batch_token": round(mib / (rows_per_batch * width), 3),
                "max_rel_diff_vs_first_variant": float(np.abs(scores - ref).max() / np.abs(ref).max()),
            }
            rows.append(row)
            print(
                f"  {variant:18s} T {length:5d}: {row['seconds']:8.2f} s  +{mib:8.1f} MiB ({row['mib_per_token']:.3f} MiB/token, "
                f"{rows_per_batch} rows/micro-batch: {row['mib_per_micro_batch_token']:.3f} MiB/micro-batch token)  "
                f"peak {row['peak_mib']:8.1f} MiB  max|diff| vs {args.variants[0]} {row['max_rel_diff_vs_first_variant']:.1e}",
                flush=True,
            )
        mine = [r for r in rows if r["variant"] == variant]
        T = np.array([r["T"] for r in mine], dtype=float)
        exponent = float(np.polyfit(np.log(T), np.log([r["seconds"] for r in mine]), 1)[0])
        long = [r for r in mine if r["rows_per_micro_batch"] == 1]  # one row per micro-batch: memory grows with T alone
        per_token = (
            float(np.polyfit([r["T"] for r in long], [r["attribution_mib"] for r in long], 1)[0])
            if len(long) > 1
            else float("nan")
        )
        fits = max(r["peak_mib"] for r in mine) < BUDGET_GIB * 1024
        summary.append(
            {
                "variant": variant,
                "time_exponent": round(exponent, 3),
                "mib_per_token_slope": round(per_token, 3),
                "longest_within_24_gib": fits,
            }
        )
        print(
            f"{variant}: seconds ~ T^{exponent:.2f}; memory {per_token:.3f} MiB per generated token once a row fills a "
            f"micro-batch (T + {PROMPT} >= {BUDGET // 2}); T {int(T.max())} "
            f"{'within' if fits else 'ABOVE'} {BUDGET_GIB} GiB",
            flush=True,
        )
    result = {
        "bench": "trace_length",
        **measured_on(),
        "shape": args.shape,
        "layer": args.layer,
        "q": args.q,
        "prompt_tokens": PROMPT,
        "batch_tokens": BUDGET,
        "trajectories": 1,
        "threads": args.threads,
        "rows": rows,
        "fits": summary,
    }
    if args.out:
        sys.path.insert(0, str(ROOT))
        from ipg.files import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
