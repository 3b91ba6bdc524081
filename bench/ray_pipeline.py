"""Wall time of one attribution in-process vs on a local Ray cluster with 1 and 2 gradient workers
(same prompts, same settings, one run, side by side), and how long a reducer restore takes.

    .venv/bin/python bench/ray_pipeline.py [--prompts 64] [--cpus N] [--out bench/results/ray_pipeline.json]

Every configuration computes the same table (checked here: max |difference| / max |score| is printed).
The restore figure comes from a real crash: the reducer process is killed (IPG_FAULTS) after merging a
shard and Ray restarts it from its last snapshot; the restarted reducer times its own restore.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="bench/results/ray_pipeline.json")
    ap.add_argument("--repeat", type=int, default=2, help="runs per setup; the fastest is reported")
    args = ap.parse_args()

    from cluster.ray_cluster import connect
    from driver.config import RayConfig
    from driver.pipeline import RaySession, shard
    from ipg.attribution import AttributionConfig, attribute
    from ipg.files import atomic_write_json
    from ipg.models import load_model
    from ipg.organism.card import splits

    examples = splits()["support"][: args.prompts]
    settings = dict(layers=(1, 2), n_samples=5, q=10, max_new_tokens=128, seed=0, completeness=False)  # ipg run's default
    rows = []

    torch.set_num_threads(args.cpus)
    model, tok = load_model("organism")
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        reference = attribute(model, tok, examples, signal="accuracy", **settings).table
        times.append(time.perf_counter() - start)
    rows.append({"setup": f"in-process ({args.cpus} torch threads)", "seconds": min(times)})
    ref = np.array(reference.column("score").to_pylist())

    connect(num_cpus=args.cpus)
    tmp = Path(tempfile.mkdtemp(prefix="ipg-bench-"))
    threads = 1
    for n_grad in (1, 2):
        n_actors = 1 + n_grad
        cfg = RayConfig(enabled=True, rollout_workers=1, gradient_workers=n_grad, cpus_per_actor=args.cpus / n_actors,
                        threads_per_actor=max(1, args.cpus // n_actors) if threads else 1, shard_size=8, progress="off")
        times = []
        with RaySession("organism", cfg, log=lambda m: None) as session:  # actors started and ready: not timed
            for k in range(args.repeat):
                start = time.perf_counter()
                res = session.attribute(examples, AttributionConfig(**settings), out_dir=tmp / f"g{n_grad}-{k}")
                times.append(time.perf_counter() - start)
        got = np.array(res.table.column("score").to_pylist())
        t = res.diagnostics["timings"]
        rows.append({"setup": f"ray: 1 rollout + {n_grad} gradient worker(s), {cfg.threads_per_actor} thread(s) each",
                     "seconds": min(times), "max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max()),
                     "rollout_worker_seconds": t["rollout_worker_seconds"], "gradient_worker_seconds": t["gradient_worker_seconds"]})

    # reducer restore: crash the reducer after the 5th shard (snapshot every 4: 4 restored, 1 re-sent)
    shards = [sid for sid, _ in shard(examples, 8)]
    os.environ["IPG_FAULTS"], os.environ["IPG_FAULTS_DIR"] = f"reducer@{shards[4]}", str(tmp)
    cfg = RayConfig(enabled=True, cpus_per_actor=args.cpus / 2, threads_per_actor=max(1, args.cpus // 2), progress="off")
    with RaySession("organism", cfg, log=lambda m: None) as session:
        start = time.perf_counter()
        res = session.attribute(examples, AttributionConfig(**settings), out_dir=tmp / "restore")
        seconds = time.perf_counter() - start
    got = np.array(res.table.column("score").to_pylist())
    restore = res.diagnostics["timings"]["reducer_restore_seconds"]
    rows.append({"setup": "ray: 1 + 1, reducer killed after shard 5 of 8", "seconds": seconds,
                 "max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max())})

    # the same restore in a fresh, idle process (what a restart costs without 2 busy cores around it)
    from workers.reducer import Reducer

    snap = tmp / "snap"
    r = Reducer(snap, {}, run_key="bench")
    r.partial, r.ledger = res_partial(res), {sid: {} for sid in shards[:4]}
    r.snapshot()
    code = ("import sys, time; sys.path.insert(0, %r); from workers.reducer import Reducer; "
            "r = Reducer(%r, {}, run_key='bench'); print(r.restore_seconds)") % (str(Path(__file__).resolve().parents[1]), str(snap))
    idle = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) for _ in range(3))

    base = rows[0]["seconds"]
    print(f"organism, {args.prompts} prompts x 5 samples, layers 1-2, q 10; {args.cpus} CPUs ({platform.processor() or platform.machine()})")
    print(f"{'setup':62s} {'seconds':>8s} {'vs in-process':>14s} {'max |diff|/max|score|':>22s}")
    for r in rows:
        print(f"{r['setup']:62s} {r['seconds']:8.1f} {base / r['seconds']:13.2f}x {r.get('max_rel_diff', 0.0):22.1e}")
    for r in rows[1:3]:
        print(f"  {r['setup'][:40]}: worker seconds rollout {r['rollout_worker_seconds']:.1f}, gradient {r['gradient_worker_seconds']:.1f}")
    print(f"reducer restore from its snapshot ({res.table.num_rows} components): {1000 * restore:.1f} ms in the crashed run "
          f"(restarted process, cores busy); {1000 * idle:.1f} ms in a fresh idle process")
    atomic_write_json(args.out, {"prompts": args.prompts, "cpus": args.cpus, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                                                             for k, v in settings.items()},
                                 "rows": rows, "reducer_restore_seconds": restore,
                                 "reducer_restore_seconds_idle": idle})


def res_partial(res):
    """The merged sums behind a result table (score = total / n), rebuilt for a snapshot of that size."""
    from ipg.components import Site
    from ipg.scores import PartialScores, SiteSums

    rows = res.table.to_pydict()
    out = PartialScores()
    for layer in sorted(set(rows["layer"])):
        idx = [i for i, l_ in enumerate(rows["layer"]) if l_ == layer]
        idx.sort(key=lambda i: rows["index"][i])
        n = rows["n_prompts"][idx[0]]
        total = np.array([rows["score"][i] * n for i in idx])
        out.sites[Site(layer, rows["kind"][idx[0]])] = SiteSums(total, total * total, n, rows["n_trajectories"][idx[0]])
    return out


if __name__ == "__main__":
    main()
