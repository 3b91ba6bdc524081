"""GradientWorker: the partial score table of a shard, computed with ipg.attribution.shard_scores.

Backend ``torch``, or one rank of a DeepSpeed ZeRO-3 group (workers.deepspeed_backend) behind the same
methods. Returns the partial in
its lossless Arrow form (float64 sums, counts) with the shard's statistics in its metadata: that is
what travels to the reducer, and what the reducer's ledger keeps per shard.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import torch

from ipg.attribution import AttributionConfig, activation_sums, shard_scores
from ipg.cluster.metrics import StageTimer, metrics
from ipg.components import Site, check_site
from ipg.models import load_model
from ipg.scores import STATS_KEY, partial_to_arrow
from ipg.signals import make_signal
from ipg.workers.faults import maybe_crash
from ipg.workers.model_ops import WeightOps
from ipg.workers.rollout import load_saes, quiet_loading
from ipg.workers.sampling import Sampling, ShardRollouts, item_errors


class GradientWorker(Sampling, WeightOps):
    """Holds the weights, so it can sample too (with the HF loop): a ZeRO-3 group samples that way
    (ray.rollout_backend 'deepspeed'), since no rollout actor could hold the model. Under Ray the driver holds
    no weights: the experiment's statistics, control vector, path baseline and cards run here (``WeightOps``'
    methods, on every rank of a ZeRO-3 group alike, in lockstep)."""

    engine, backend = None, "hf"

    def __init__(self, model: str = "organism", *, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
                 saes: dict[int, str] | None = None, backend: str = "torch", threads: int | None = None):  # fmt: skip
        if threads:
            torch.set_num_threads(threads)  # one actor per core: no oversubscription
        if backend != "torch":
            raise NotImplementedError(f"gradient backend '{backend}' is not available yet; use 'torch'")
        quiet_loading()
        self.model, self.tokenizer = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        self.saes = load_saes(saes)
        self.timer = StageTimer()

    def ready(self) -> bool:
        return True

    def _rescore(self, samples, cfg):
        from ipg.generation import rescore

        return rescore(self.model, samples, batch_tokens=cfg.budget(next(self.model.parameters()).device))

    def activation_sums(self, shard_id: str, shard: ShardRollouts, cfg: AttributionConfig) -> dict[str, tuple]:
        """Per site (str): float64 sum and count of activations on the path positions (mean baseline)."""
        out = {}
        with self.timer("mean_baseline"):
            for layer in cfg.layers:
                site = Site(layer, cfg.kind)
                total, count = activation_sums(
                    self.model, self.part(shard.rollouts), site, cfg, self.saes, agree=self.lockstep
                )
                out[str(site)] = (total.numpy(), count)
        return out

    def attribute(
        self,
        shard_id: str,
        shard: ShardRollouts,
        cfg: AttributionConfig,
        signal: str,
        baselines: dict[Site, torch.Tensor] | None = None,
        signal_params: dict | None = None,
        candidates: dict[Site, list[int]] | None = None,
    ) -> pa.Table:
        """The shard's partial table; ``baselines`` None means the zero baseline (needs no global pass);
        ``candidates``: method 'component''s components per site."""
        maybe_crash("gradient", shard_id)
        sig = make_signal(signal, **(signal_params or {}))
        sites = [Site(layer, cfg.kind) for layer in cfg.layers]
        if baselines is None:
            baselines = {s: torch.zeros(check_site(self.model, s, self.saes)) for s in sites}
        start = time.perf_counter()
        mine = self.part(shard.rollouts)
        if mine or self.lockstep:  # a rank with no prompts still makes the group's calls
            with self.timer("gradient"), item_errors(shard_id, "gradient"):
                res = shard_scores(
                    self.model,
                    self.tokenizer,
                    mine,
                    sig,
                    cfg,
                    sites,
                    baselines,
                    self.saes,
                    agree=self.lockstep,
                    candidates=candidates,
                )
            partial, rollouts, skipped, paths = res.partial, res.rollouts, {**shard.skipped, **res.skipped}, res.paths
        else:  # every example of the shard was skipped
            from ipg.scores import PartialScores

            partial, rollouts, skipped, paths = PartialScores(), [], dict(shard.skipped), {}
        n_traj = sum(len(r.samples) for r in rollouts)
        stats = {
            "prompts": len(rollouts),
            "trajectories": n_traj,
            "tokens": sum(s.n_tokens for r in rollouts for s in r.samples),
            "reward_sum": float(sum(np.mean(r.rewards) for r in rollouts)),
            "mixed": sum(len(set(r.rewards)) > 1 for r in rollouts),
            "skipped": skipped,
            "example_ids": [r.example["id"] for r in rollouts],
            "rollout_seconds": shard.seconds,
            "gradient_seconds": time.perf_counter() - start,
            "created_at": time.time(),
        }
        if shard.backend != "hf" and (
            rollouts or self.lockstep
        ):  # another engine sampled: how do its log-probs score here?
            from ipg.generation import logprob_gap

            samples = [s for r in rollouts for s in r.samples]
            with self.timer("rescore"):
                stats["logprob_gap"] = logprob_gap(samples, self._rescore(samples, cfg))
            m = metrics()
            if m is not None:
                m.logprob_gap.set(stats["logprob_gap"]["max_abs"])
        if cfg.resamples and paths:  # J along the path, per site: sums over prompts
            stats["J_path"] = {
                str(site): [[a, float(sum(np.mean(r.rewards) for r in rolls))] for a, _, rolls in path]
                for site, path in paths.items()
            }
        m = metrics()
        if m is not None:
            m.count(
                "gradient",
                prompts=len(rollouts),
                trajectories=n_traj,
                tokens=sum(len(s.prompt_ids) + s.n_tokens for r in rollouts for s in r.samples),
            )
        return partial_to_arrow(partial, {STATS_KEY: json.dumps(stats).encode()})


def merge_rank_tables(*tables: pa.Table) -> pa.Table:
    """One partial table from a gradient group's per-rank tables: sums added, statistics combined."""
    from ipg.scores import PartialScores, partial_from_arrow

    partial, stats = PartialScores(), {}
    for t in tables:
        partial = partial.merge(partial_from_arrow(t))
        s = json.loads((t.schema.metadata or {}).get(STATS_KEY, b"{}"))
        for k, v in s.items():
            if k in ("skipped",):
                stats[k] = {**stats.get(k, {}), **v}
            elif k == "example_ids":
                stats[k] = stats.get(k, []) + v
            elif k in ("created_at", "rollout_seconds"):
                stats[k] = max(stats.get(k, 0.0), v)
            elif k == "logprob_gap":
                g = stats.get(k, {"sum_abs": 0.0, "max_abs": 0.0, "n_tokens": 0})
                stats[k] = {
                    "sum_abs": g["sum_abs"] + v["sum_abs"],
                    "max_abs": max(g["max_abs"], v["max_abs"]),
                    "n_tokens": g["n_tokens"] + v["n_tokens"],
                }
            elif k == "J_path":
                prev = stats.get(k, {})
                stats[k] = {
                    site: [[a, x + dict(prev.get(site, [])).get(a, 0.0)] for a, x in path] for site, path in v.items()
                }
            else:
                stats[k] = stats.get(k, 0) + v
    return partial_to_arrow(partial, {STATS_KEY: json.dumps(stats).encode()})
