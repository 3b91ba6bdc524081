"""GradientWorker: the partial IPG score table of a shard, computed with ipg.attribution.shard_scores.

Backend ``torch``; the DeepSpeed ZeRO-3 backend comes behind the same methods. Returns the partial in
its lossless Arrow form (float64 sums, counts) with the shard's statistics in its metadata: that is
what travels to the reducer, and what the reducer's ledger keeps per shard.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import torch

from cluster.metrics import StageTimer, metrics
from ipg.attribution import AttributionConfig, activation_sums, shard_scores
from ipg.components import Site, check_site
from ipg.models import load_model
from ipg.scores import partial_to_arrow
from ipg.signals import make_signal
from workers.faults import maybe_crash
from workers.rollout import ShardRollouts, _item_errors, load_saes, quiet_loading

STATS_KEY = b"ipg.shard"


class GradientWorker:
    def __init__(self, model: str = "organism", *, dtype: str = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, saes: dict[int, str] | None = None, backend: str = "torch",
                 threads: int | None = None):
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

    def describe(self, sites: list[Site]) -> dict:
        """The model's fingerprint and each site's width; a bad layer index or kind raises InputError."""
        from ipg.models import model_fingerprint

        return {"model": model_fingerprint(self.model), "widths": {str(s): check_site(self.model, s, self.saes) for s in sites}}

    def activation_sums(self, shard_id: str, shard: ShardRollouts, cfg: AttributionConfig) -> dict[str, tuple]:
        """Per site (str): float64 sum and count of activations on the path positions (mean baseline)."""
        out = {}
        with self.timer("baseline"):
            for layer in cfg.layers:
                site = Site(layer, cfg.kind)
                total, count = activation_sums(self.model, shard.rollouts, site, cfg, self.saes)
                out[str(site)] = (total.numpy(), count)
        return out

    def attribute(self, shard_id: str, shard: ShardRollouts, cfg: AttributionConfig, signal: str,
                  baselines: dict[Site, torch.Tensor] | None = None, signal_params: dict | None = None) -> pa.Table:
        """The shard's partial table; ``baselines`` None means the zero baseline (needs no global pass)."""
        maybe_crash("gradient", shard_id)
        sig = make_signal(signal, **(signal_params or {}))
        sites = [Site(layer, cfg.kind) for layer in cfg.layers]
        if baselines is None:
            baselines = {s: torch.zeros(check_site(self.model, s, self.saes)) for s in sites}
        start = time.perf_counter()
        if shard.rollouts:
            with self.timer("gradient"), _item_errors(shard_id, "gradient"):
                res = shard_scores(self.model, self.tokenizer, shard.rollouts, sig, cfg, sites, baselines, self.saes)
            partial, rollouts, skipped, paths = res.partial, res.rollouts, {**shard.skipped, **res.skipped}, res.paths
        else:  # every example of the shard was skipped
            from ipg.scores import PartialScores

            partial, rollouts, skipped, paths = PartialScores(), [], dict(shard.skipped), {}
        n_traj = sum(len(r.samples) for r in rollouts)
        stats = {
            "prompts": len(rollouts), "trajectories": n_traj,
            "tokens": sum(s.n_tokens for r in rollouts for s in r.samples),
            "reward_sum": float(sum(np.mean(r.rewards) for r in rollouts)),
            "mixed": sum(len(set(r.rewards)) > 1 for r in rollouts),
            "skipped": skipped, "example_ids": [r.example["id"] for r in rollouts],
            "rollout_seconds": shard.seconds, "gradient_seconds": time.perf_counter() - start,
            "created_at": time.time(),
        }
        if shard.backend != "hf" and rollouts:  # another engine sampled: how do its log-probs score here?
            from ipg.generation import logprob_gap, rescore

            samples = [s for r in rollouts for s in r.samples]
            with self.timer("rescore"):
                stats["logprob_gap"] = logprob_gap(samples, rescore(self.model, samples, batch_tokens=cfg.batch_tokens))
            m = metrics()
            if m is not None:
                m.logprob_gap.set(stats["logprob_gap"]["max_abs"])
        if cfg.resample and cfg.method == "ipg" and paths:  # J along the path, per site: sums over prompts
            stats["J_path"] = {str(site): [[a, float(sum(np.mean(r.rewards) for r in rolls))] for a, _, rolls in path]
                               for site, path in paths.items()}
        m = metrics()
        if m is not None:
            m.count("gradient", prompts=len(rollouts), trajectories=n_traj,
                    tokens=sum(len(s.prompt_ids) + s.n_tokens for r in rollouts for s in r.samples))
        return partial_to_arrow(partial, {STATS_KEY: json.dumps(stats).encode()})
