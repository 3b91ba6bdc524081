"""Attribution on Ray: shard prompts, chain generate -> attribute -> merge refs, reduce exactly once.

The driver never holds trajectories: each shard's rollouts go from a rollout actor to a gradient actor
as an ObjectRef, and the partial table from there to the reducer. In-flight shards are bounded with
ray.wait. Scores equal in-process ``ipg.attribute`` (zero baseline) for any number of workers.
"""

from __future__ import annotations

from pathlib import Path

import ray

from cluster.ray_cluster import check_resources, spawn
from ipg.attribution import AttributionConfig, score_meta
from ipg.components import Site, check_site
from ipg.errors import InputError
from ipg.models import load_model
from ipg.signals import make_signal
from workers.gradient import GradientWorker
from workers.reducer import Reducer
from workers.rollout import RolloutWorker


def shard(examples: list[dict], shard_size: int) -> list[tuple[str, list[dict]]]:
    """Deterministic shards in input order; the id names the first and last example."""
    if shard_size < 1:
        raise InputError(f"ray.shard_size: must be >= 1, got {shard_size}")
    out = []
    for i in range(0, len(examples), shard_size):
        part = examples[i : i + shard_size]
        out.append((f"shard-{i // shard_size:05d}-{part[0]['id']}..{part[-1]['id']}", part))
    return out


def attribute_on_ray(model: str, examples: list[dict], cfg: AttributionConfig, *, signal: str = "accuracy",
                     signal_params: dict | None = None, out_dir: str | Path, n_rollout: int = 1, n_gradient: int = 1,
                     shard_size: int = 8, max_in_flight: int = 4, run_id: str = "", threads: int = 1,
                     cpus_per_actor: float = 1.0):
    """Run attribution on the connected Ray cluster; returns the ObjectRef of the final score table
    (also written to out_dir/scores.parquet by the reducer)."""
    if cfg.baseline != "zero":
        raise InputError("baseline: the Ray pipeline supports 'zero' for now ('mean' needs a global first pass)")
    local_model, _ = load_model(model)  # validates the model, layers and signal before any actor starts
    for layer in cfg.layers:
        check_site(local_model, Site(layer, cfg.kind))
    sig = make_signal(signal, **(signal_params or {}))
    sig.check(examples)
    meta = score_meta(local_model, sig.name, cfg, run_id)
    del local_model
    check_resources({"CPU": (n_rollout + n_gradient) * cpus_per_actor})
    rollout_actors = spawn(RolloutWorker, n_rollout, model, threads=threads, num_cpus=cpus_per_actor)
    gradient_actors = spawn(GradientWorker, n_gradient, model, threads=threads, num_cpus=cpus_per_actor)
    reducer = spawn(Reducer, 1, str(out_dir), meta, num_cpus=0)[0]
    in_flight = []
    for k, (sid, part) in enumerate(shard(examples, shard_size)):
        rollouts_ref = rollout_actors[k % n_rollout].generate.remote(sid, part, cfg, signal, signal_params)
        table_ref = gradient_actors[k % n_gradient].attribute.remote(sid, rollouts_ref, cfg, signal, None, signal_params)
        in_flight.append(reducer.merge.remote(sid, table_ref))
        if len(in_flight) >= max_in_flight:
            done, in_flight = ray.wait(in_flight, num_returns=1)
            ray.get(done)  # surface a failed shard here, naming it
    ray.get(in_flight)
    return reducer.finalize.remote()
