"""Ray's cost and scaling for attribution, measured side by side in one run (benchmark 3).

    .venv/bin/python bench/ray_pipeline.py [--prompts 64] [--cpus N] [--out bench/results/ray_pipeline.json]

1. Gradient stage (the part that dominates at scale): the same shard rollouts, sampled once, scored
   in-process on 1 thread (shard by shard, partials merged) vs by 1 and 2 Ray gradient actors of 1
   thread each, fed from the object store, merged by the reducer actor (Arrow partials, snapshots),
   finalized into the table. Ray overhead = Ray with 1 actor / in-process; scaling = 1 actor / 2 actors,
   with a gradient group handed a shard only when it is free (the pipeline's ``Dispatch``). The
   reducer is a fresh actor per run, as in the pipeline; it is timed both started and answering
   before the clock (like the gradient actors: the steady state a long run is in) and started inside
   it (~1 CPU-second of process start that, on 2 cores, the 2-actor setup cannot hide). The same
   shards scored by 2 plain processes (multiprocessing, no Ray) show what this machine allows.
2. End to end: one whole attribution in-process (all CPUs as torch threads) vs the pipeline (rollout
   actor -> gradient actors -> reducer) with 1 and 2 gradient workers; on a machine this small the
   rollout actor shares the cores with the gradient actors, so this is not the gradient scaling.

Every configuration computes the same table (checked here: max |difference| / max |score| is printed).
The restore figure comes from a real crash: the reducer process is killed (IPG_FAULTS) after merging a
shard and Ray restarts it from its last snapshot; the restarted reducer times its own restore.
"""

from __future__ import annotations

import argparse
import itertools
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

    from ipg.attribution import AttributionConfig, attribute
    from ipg.cluster.ray_cluster import connect
    from ipg.driver.config import RayConfig
    from ipg.driver.orchestration.pipeline import RaySession, shard
    from ipg.files import atomic_write_json
    from ipg.models import load_model
    from ipg.organism.card import splits

    examples = splits()["support"][: args.prompts]
    settings = dict(
        method="ipg", layers=(1, 2), n_samples=5, q=10, max_new_tokens=128, seed=0, completeness=False
    )  # the paper's IPG
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
    stage = gradient_stage(model, tok, examples, settings, args, tmp, ref)
    threads = 1
    for n_grad in (1, 2):
        n_actors = 1 + n_grad
        cfg = RayConfig(
            enabled=True,
            rollout_workers=1,
            gradient_workers=n_grad,
            cpus_per_actor=args.cpus / n_actors,
            threads_per_actor=max(1, args.cpus // n_actors) if threads else 1,
            shard_size=8,
            progress="off",
        )
        times = []
        with RaySession("organism", cfg, log=lambda m: None) as session:  # actors started and ready: not timed
            for k in range(args.repeat):
                start = time.perf_counter()
                res = session.attribute(examples, AttributionConfig(**settings), out_dir=tmp / f"g{n_grad}-{k}")
                times.append(time.perf_counter() - start)
        got = np.array(res.table.column("score").to_pylist())
        t = res.diagnostics["timings"]
        rows.append(
            {
                "setup": f"ray: 1 rollout + {n_grad} gradient worker(s), {cfg.threads_per_actor} thread(s) each",
                "seconds": min(times),
                "max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max()),
                "rollout_worker_seconds": t["rollout_worker_seconds"],
                "gradient_worker_seconds": t["gradient_worker_seconds"],
            }
        )

    # reducer restore: crash the reducer after the 5th shard (snapshot every 4: 4 restored, 1 re-sent)
    shards = [sid for sid, _ in shard(examples, 8)]
    os.environ["IPG_FAULTS"], os.environ["IPG_FAULTS_DIR"] = f"reducer@{shards[4]}", str(tmp)
    cfg = RayConfig(
        enabled=True, cpus_per_actor=args.cpus / 2, threads_per_actor=max(1, args.cpus // 2), progress="off"
    )
    with RaySession("organism", cfg, log=lambda m: None) as session:
        start = time.perf_counter()
        res = session.attribute(examples, AttributionConfig(**settings), out_dir=tmp / "restore")
        seconds = time.perf_counter() - start
    got = np.array(res.table.column("score").to_pylist())
    restore = res.diagnostics["timings"]["reducer_restore_seconds"]
    rows.append(
        {
            "setup": "ray: 1 + 1, reducer killed after shard 5 of 8",
            "seconds": seconds,
            "max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max()),
        }
    )

    # the same restore in a fresh, idle process (what a restart costs without 2 busy cores around it)
    from ipg.workers.reducer import Reducer

    snap = tmp / "snap"
    r = Reducer(snap, {}, run_key="bench")
    r.partial, r.ledger = res_partial(res), {sid: {} for sid in shards[:4]}
    r.snapshot()
    code = (
        "import sys, time; sys.path.insert(0, %r); from ipg.workers.reducer import Reducer; "
        "r = Reducer(%r, {}, run_key='bench'); print(r.restore_seconds)"
    ) % (str(Path(__file__).resolve().parents[1]), str(snap))
    idle = min(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    )

    print(f"gradient stage: {stage['shards']} shards of 8 prompts (rollouts sampled once), 1 thread per process")
    for r in stage["rows"]:
        print(f"  {r['setup']:60s} {r['seconds']:8.2f} s  max |diff|/max|score| {r['max_rel_diff']:.1e}")
    print(
        f"  Ray overhead (1 actor / in-process): {stage['overhead']:.2f}x; 1 -> 2 gradient actors: {stage['scaling']:.2f}x "
        f"(reducer started in the clock: {stage['overhead_reducer_in_clock']:.2f}x, {stage['scaling_reducer_in_clock']:.2f}x); "
        f"2 plain processes vs 1: {stage['scaling_plain_processes']:.2f}x"
    )
    base = rows[0]["seconds"]
    print(
        f"organism, {args.prompts} prompts x 5 samples, layers 1-2, q 10; {args.cpus} CPUs ({platform.processor() or platform.machine()})"
    )
    print(f"{'setup':62s} {'seconds':>8s} {'vs in-process':>14s} {'max |diff|/max|score|':>22s}")
    for r in rows:
        print(f"{r['setup']:62s} {r['seconds']:8.1f} {base / r['seconds']:13.2f}x {r.get('max_rel_diff', 0.0):22.1e}")
    for r in rows[1:3]:
        print(
            f"  {r['setup'][:40]}: worker seconds rollout {r['rollout_worker_seconds']:.1f}, gradient {r['gradient_worker_seconds']:.1f}"
        )
    print(
        f"reducer restore from its snapshot ({res.table.num_rows} components): {1000 * restore:.1f} ms in the crashed run "
        f"(restarted process, cores busy); {1000 * idle:.1f} ms in a fresh idle process"
    )
    atomic_write_json(
        args.out,
        {
            "prompts": args.prompts,
            "cpus": args.cpus,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
            "gradient_stage": stage,
            "rows": rows,
            "reducer_restore_seconds": restore,
            "reducer_restore_seconds_idle": idle,
        },
    )


def gradient_stage(model, tok, examples, settings, args, tmp: Path, ref: np.ndarray) -> dict:
    """The gradient stage alone: in-process on 1 thread vs 1 and 2 Ray gradient actors (1 thread each)."""
    import ray

    from ipg.attribution import AttributionConfig, sample_rollouts, score_meta, shard_scores
    from ipg.cluster.ray_cluster import ActorGroup, ActorSpec
    from ipg.components import Site
    from ipg.driver.config import RayConfig
    from ipg.driver.orchestration.attribution_unit import run_shards
    from ipg.driver.orchestration.dispatch import Dispatch, shard
    from ipg.scores import PartialScores
    from ipg.signals import make_signal
    from ipg.workers.gradient import GradientWorker
    from ipg.workers.reducer import Reducer
    from ipg.workers.sampling import ShardRollouts

    cfg, sig = AttributionConfig(**settings), make_signal("accuracy")
    sites = [Site(layer, cfg.kind) for layer in cfg.layers]
    zeros = {s: torch.zeros(model.config.hidden_size) for s in sites}
    shards = [
        ShardRollouts(sid, sample_rollouts(model, tok, part, sig, cfg), {}, 0.0, "hf")
        for sid, part in shard(examples, 8)
    ]
    by_id = {sh.shard_id: ray.put(sh) for sh in shards}  # in the object store, as a rollout actor's results would be
    meta = score_meta(model, sig.name, cfg)
    # 3 idle actors (0.5 CPU each so both groups fit at once; each runs 1 thread): rounds interleave the setups,
    # so drift in the machine's speed hits all of them alike
    groups = {
        n: ActorGroup(GradientWorker, n, ActorSpec(num_cpus=0.5, threads=1), "organism", threads=1) for n in (1, 2)
    }
    ray.get([a.ready.remote() for g in groups.values() for a in g.actors])

    def in_process():
        merged = PartialScores()
        for sh in shards:
            merged = merged.merge(shard_scores(model, tok, sh.rollouts, sig, cfg, sites, zeros).partial)
        return merged.table(meta)

    def reducer_for(n, k):
        return ActorGroup(Reducer, 1, ActorSpec(num_cpus=0), str(tmp / f"stage-{n}-{k}"), meta, run_key="bench").pick(0)

    def on_ray(n, reducer=None):
        group, k = groups[n], next(runs)
        reducer = reducer or reducer_for(n, k)
        # the pipeline's scheduling: a group gets a shard when it is free; merges bounded in flight
        plan, in_flight = Dispatch(list(by_id), n, RayConfig().max_in_flight, set(by_id)), {}
        run_shards(
            plan,
            None,
            lambda sid, g: group.pick(g).attribute.remote(sid, by_id[sid], cfg, "accuracy"),
            reducer,
            RayConfig().max_in_flight + n,
            in_flight,
            lambda ref: (ray.get(ref), in_flight.pop(ref)),  # a failure fails the benchmark
            costs={sh.shard_id: sh.cost for sh in shards},
        )
        table = ray.get(reducer.finalize.remote())
        ray.kill(reducer, no_restart=True)
        return table

    def ready_reducer(n):  # started and answering before the clock, as the gradient actors are
        reducer = reducer_for(n, next(runs))
        ray.get(reducer.status.remote())
        return reducer

    def plain_processes():
        merged = PartialScores()
        costliest_first = sorted(shards, key=lambda sh: -sh.cost)  # the order Dispatch hands them out in
        for part in pool.imap_unordered(_pool_score, [(sh.rollouts, settings) for sh in costliest_first], chunksize=1):
            merged = merged.merge(part)
        return merged.table(meta)

    runs = itertools.count()  # a fresh output directory per Ray run
    setups = {
        "in-process, 1 thread": (None, in_process),
        "2 plain processes (multiprocessing, no Ray), 1 thread each": (None, plain_processes),
    }
    for n in (1, 2):
        setups[f"ray: {n} gradient actor(s), 1 thread each; reducer up"] = (
            lambda n=n: ready_reducer(n),
            lambda r, n=n: on_ray(n, r),
        )
    for n in (1, 2):
        setups[f"ray: {n} gradient actor(s), 1 thread each; reducer started in the clock"] = (
            None,
            lambda n=n: on_ray(n),
        )
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(2, initializer=_pool_init)
    pool.map(_pool_score, [(shards[0].rollouts[:1], settings)] * 2)  # both loaded and warm
    times, tables = {name: [] for name in setups}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(max(3, args.repeat)):
        for name, (prepare, fn) in setups.items():
            state = prepare() if prepare else None
            start = time.perf_counter()
            tables[name] = fn(state) if prepare else fn()
            times[name].append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    pool.close()
    pool.join()
    for g in groups.values():
        g.kill()
    rows = [
        {
            "setup": name,
            "seconds": min(times[name]),
            "all_seconds": times[name],
            "max_rel_diff": float(
                np.abs(np.array(tables[name].column("score").to_pylist()) - ref).max() / np.abs(ref).max()
            ),
        }
        for name in setups
    ]
    t = {name: min(times[name]) for name in setups}
    names = list(setups)
    return {
        "shards": len(shards),
        "rows": rows,
        "overhead": t[names[2]] / t[names[0]],
        "scaling": t[names[2]] / t[names[3]],
        "overhead_reducer_in_clock": t[names[4]] / t[names[0]],
        "scaling_reducer_in_clock": t[names[4]] / t[names[5]],
        "scaling_plain_processes": t[names[0]] / t[names[1]],
    }


_POOL = {}


def _pool_init():
    from ipg.models import load_model

    torch.set_num_threads(1)
    _POOL["model"] = load_model("organism")


def _pool_score(job):
    from ipg.attribution import AttributionConfig, shard_scores
    from ipg.components import Site
    from ipg.signals import make_signal

    rollouts, settings = job
    cfg = AttributionConfig(**settings)
    sites = [Site(layer, cfg.kind) for layer in cfg.layers]
    model, tok = _POOL["model"]
    return shard_scores(
        model,
        tok,
        rollouts,
        make_signal("accuracy"),
        cfg,
        sites,
        {s: torch.zeros(model.config.hidden_size) for s in sites},
    ).partial


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
