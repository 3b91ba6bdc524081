"""Packed evaluation against one generation pass per evaluation: a whole run of a config, once per mode, in
one process on the same machine, each stage against its counted-token bound (``bench/end_to_end.py``).

    python bench/packing.py                                   # the organism's `make run` (deploy/configs/organism.yaml)
    python bench/packing.py --config deploy/configs/smollm2-135m-instruct.yaml --out bench/results/packing-smollm2.json

Modes:
- ``one_pass_full``: one pass per evaluation, finished rows kept computing until their batch ends (how
  evaluation ran before packing);
- ``one_pass``: one pass per evaluation, finished rows leaving the batch (``ipg.generation.LEAVE_SHARE``);
- ``packed``: the config's ``evaluation.pack_tokens`` (what ``ipg run`` does).

Every mode must write the same eval.parquet (asserted). A stage's bound counts the block-tokens it ran, so
rows leaving the batch lower the evaluation bound as well as its time: the ratio to the bound says how
close each mode runs to this machine's throughput on the work it did, the seconds say what it cost.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path

from record import measured_on, run_options  # bench/record.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODES = ("one_pass_full", "one_pass", "packed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "deploy" / "configs" / "organism.yaml"))
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as ipg run's --key=value"
    )
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    run_options(ap)
    args = ap.parse_args()

    import pyarrow.parquet as pq
    from end_to_end import measure, print_stages

    import ipg.generation
    from ipg.files import atomic_write_json

    results, tables = {}, {}
    for mode in args.modes:
        ipg.generation.LEAVE_SHARE = 0 if mode == "one_pass_full" else 8
        overrides = args.set + (["evaluation.pack_tokens=0"] if mode != "packed" else [])
        print(f"\n== {mode}", flush=True)
        start = time.perf_counter()
        results[mode] = measure(args.config, overrides, args.threads, log=lambda m: print(m, flush=True))
        tables[mode] = pq.read_table(io.BytesIO(results[mode].pop("eval_parquet")))
        print_stages(results[mode], args.threads)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    ipg.generation.LEAVE_SHARE = 8
    first = args.modes[0]
    same = {mode: tables[mode].equals(tables[first]) for mode in args.modes}

    def stage(mode, name):
        return next(r for r in results[mode]["rows"] if r["stage"] == name)

    print(f"\nvs {first} ({args.threads} threads, {platform.machine()}):")
    print(
        f"  {'mode':14s} {'evaluation s':>12s} {'speed-up':>8s} {'vs bound':>8s} {'wall s':>8s} {'speed-up':>8s} "
        f"{'wall vs bounds':>14s} {'eval.parquet':>12s}"
    )
    comparison = {}
    for mode in args.modes:
        ev, wall = stage(mode, "evaluation"), results[mode]["stages"]["wall"]
        comparison[mode] = {
            "evaluation_seconds": ev["seconds"],
            "evaluation_speedup": round(stage(first, "evaluation")["seconds"] / ev["seconds"], 2),
            "evaluation_vs_bound": ev["ratio"],
            "wall_seconds": wall,
            "wall_speedup": round(results[first]["stages"]["wall"] / wall, 2),
            "wall_over_bounds": results[mode]["wall_over_bounds"],
            "eval_parquet_equal": same[mode],
        }
        c = comparison[mode]
        print(
            f"  {mode:14s} {c['evaluation_seconds']:12.1f} {c['evaluation_speedup']:8.2f} {c['evaluation_vs_bound']:8.2f} "
            f"{wall:8.1f} {c['wall_speedup']:8.2f} {c['wall_over_bounds']:14.2f} {'same' if same[mode] else 'DIFFERS':>12s}"
        )
    if args.out:
        atomic_write_json(
            args.out,
            {
                "bench": "packing",
                **measured_on(),
                "threads": args.threads,
                "config": os.path.relpath(args.config, ROOT),
                "overrides": args.set,
                "comparison": comparison,
                "runs": results,
            },
        )
    if not all(same.values()):
        print("error: eval.parquet differs between modes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
