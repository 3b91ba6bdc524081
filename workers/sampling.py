"""Sampling in an actor that holds the weights: a shard's scored rollouts, the completeness points,
generation under steering. A rollout actor samples whole shards with its engine (HF loop or vLLM); a
rank of a ZeRO-3 group samples its share of a shard (``part``) in lockstep with the other ranks
(``lockstep``), and the ``merge_*`` functions join the ranks' shares. Sampling is seeded per (seed,
example id, sample index), so the samples do not depend on which actor or rank drew them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ipg.attribution import AttributionConfig, Rollout, sample_rollouts
from ipg.cluster.errors import ItemError
from ipg.cluster.metrics import StageTimer, metrics
from ipg.components import Site
from ipg.errors import ExampleError
from ipg.generation import Sample, SamplingParams
from ipg.signals import make_signal
from ipg.workers.faults import maybe_crash


@dataclass
class ShardRollouts:
    """What travels (as an ObjectRef) from the sampler to a gradient worker."""

    shard_id: str
    rollouts: list[Rollout]
    skipped: dict[str, str] = field(default_factory=dict)  # example id -> error (on_error 'skip')
    seconds: float = 0.0
    backend: str = "hf"  # which engine sampled them (not 'hf': the gradient worker measures the log-prob gap)

    @property
    def cost(self) -> int:
        """The gradient pass's work, roughly: tokens from the last prompt token on of every trajectory
        with a non-zero advantage (the rows it runs, per alpha and site)."""
        return sum(len(s.completion_ids) + 1 for r in self.rollouts for s, a in zip(r.samples, r.advantages) if a != 0)


class Sampling:
    """Mixed into an actor (``RolloutWorker``, ``GradientWorker``) whose ``__init__`` sets the attributes
    declared here. A ZeRO-3 rank overrides ``part`` and ``lockstep``."""

    model: Any  # the torch model (None where a vLLM engine samples)
    tokenizer: Any
    saes: dict  # layer -> ipg.sae.SAE
    engine: Any  # a workers.vllm_backend.VLLMEngine, or None: the HF loop
    backend: str  # which engine samples: 'hf' or 'vllm' (workers.backends)
    timer: StageTimer
    lockstep = None  # a ZeRO-3 rank: its all-reduce max (see workers/deepspeed_backend.py)

    def part(self, items: list) -> list:
        """This actor's share of a shard (a ZeRO-3 rank takes every R-th item)."""
        return items

    def _sample(self, examples: list[dict], sig, cfg: AttributionConfig, **path) -> list[Rollout]:
        """This actor's share of ``examples``, sampled with its engine (``path``: site, alpha, baseline, skipped)."""
        return sample_rollouts(self.model, self.tokenizer, self.part(examples), sig, cfg, saes=self.saes, engine=self.engine,
                               agree=self.lockstep, **path)  # fmt: skip

    def generate(
        self,
        shard_id: str,
        examples: list[dict],
        cfg: AttributionConfig,
        signal: str,
        signal_params: dict | None = None,
    ) -> ShardRollouts:
        """The shard's scored rollouts (this actor's share); a failing example raises ItemError
        (on_error 'fail') or is skipped and reported (on_error 'skip')."""
        maybe_crash("rollout", shard_id)
        sig = make_signal(signal, **(signal_params or {}))
        skipped: dict[str, str] = {}
        start = time.perf_counter()
        with self.timer("rollout"), item_errors(shard_id, "rollout"):
            rollouts = self._sample(examples, sig, cfg, skipped=skipped)
        m = metrics()
        if m is not None:
            m.count(
                "rollout",
                prompts=len(rollouts),
                trajectories=sum(len(r.samples) for r in rollouts),
                tokens=sum(s.n_tokens for r in rollouts for s in r.samples),
            )
            for _ in skipped:
                m.error("item", "rollout")
        return ShardRollouts(shard_id, rollouts, skipped, time.perf_counter() - start, self.backend)

    def generate_costed(self, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str,
                        signal_params: dict | None = None) -> tuple[ShardRollouts, int]:  # fmt: skip
        """``generate``, and its cost apart (call with ``num_returns=2``), so the driver can order the
        gradient work by size without fetching the rollouts."""
        out = self.generate(shard_id, examples, cfg, signal, signal_params)
        return out, out.cost

    def mean_reward(
        self,
        shard_id: str,
        examples: list[dict],
        cfg: AttributionConfig,
        signal: str,
        signal_params: dict | None,
        site: Site,
        alpha: float,
        baseline,
    ) -> tuple[float, int]:
        """Sum over the shard's prompts of the mean reward with ``site`` at ``alpha`` on the path, and the
        prompt count (completeness: J(0), J(alpha_min))."""
        sig = make_signal(signal, **(signal_params or {}))
        with self.timer("completeness"), item_errors(shard_id, "completeness"):
            rolls = self._sample(examples, sig, cfg, site=site, alpha=alpha, baseline=baseline, skipped={})
        return float(sum(np.mean(r.rewards) for r in rolls)), len(rolls)

    def steered_generate(
        self, examples: list[dict], params: SamplingParams, steering: dict | None = None
    ) -> list[list[Sample]]:
        """Generation under steering, for evaluation at engine speed. ``steering``: None, or
        {"scale": [component ids], "gamma", "positions"} or {"add": layer, "vector", "coefficient", "positions"}."""
        from ipg.workers.model_ops import ModelOps, steering_context

        if self.engine is None:
            with self.timer("evaluation"):
                return ModelOps(self.model, self.tokenizer, self.saes).generate(
                    self.part(examples), params, steering, agree=self.lockstep
                )
        with self.timer("evaluation"), steering_context(None, steering, self.saes, engine=self.engine):
            return self.engine.generate(examples, params)

    def steered_generate_many(
        self, jobs: list, params: SamplingParams, positions: str, batch_size: int, pack_tokens: int
    ) -> list[list[list[Sample]]]:
        """Many evaluations (``ipg.packing.Job``s) at once: the HF loop packs them into shared batches
        (``pack_tokens`` 0: one pass each), a vLLM engine runs them as one set of requests, each steered
        by its own variant."""
        from ipg.packing import Job
        from ipg.workers.model_ops import ModelOps, steering_context, with_positions

        with self.timer("evaluation"):
            if self.engine is None:
                mine = [Job(self.part(job.examples), job.steering) for job in jobs]
                return ModelOps(self.model, self.tokenizer, self.saes).generate_many(
                    mine, params, positions, batch_size, pack_tokens, agree=self.lockstep, log=print
                )
            if pack_tokens > 0:
                return self.engine.generate_packed(jobs, params, positions, self.saes)
            out = []
            for job in jobs:
                with steering_context(None, with_positions(job.steering, positions), self.saes, engine=self.engine):
                    out.append(self.engine.generate(job.examples, params))
            return out


def merge_shards(ids: list, *parts: ShardRollouts) -> ShardRollouts:
    """One shard's rollouts from its ranks' shares (``generate``), in the order of the examples' ``ids``:
    what one rollout actor would have returned."""
    order = {i: k for k, i in enumerate(ids)}
    return ShardRollouts(
        parts[0].shard_id,
        sorted((r for p in parts for r in p.rollouts), key=lambda r: order[r.example["id"]]),
        {k: v for p in parts for k, v in p.skipped.items()},
        max(p.seconds for p in parts),
        parts[0].backend,
    )


def merge_shards_costed(ids: list, *parts: ShardRollouts) -> tuple[ShardRollouts, int]:
    """``merge_shards`` and the merged shard's cost (``generate_costed``)."""
    merged = merge_shards(ids, *parts)
    return merged, merged.cost


def merge_rewards(*parts: tuple[float, int]) -> tuple[float, int]:
    """The ranks' ``mean_reward`` sums and counts, added."""
    return float(sum(p[0] for p in parts)), sum(p[1] for p in parts)


def merge_steered(ids: list, *parts: list[list[Sample]]) -> list[list[Sample]]:
    """The ranks' ``steered_generate`` groups, in the order of the examples' ``ids``."""
    order = {i: k for k, i in enumerate(ids)}
    return sorted((g for p in parts for g in p), key=lambda g: order[g[0].example_id])


def merge_steered_many(ids: list[list], *parts: list[list[list[Sample]]]) -> list[list[list[Sample]]]:
    """The ranks' ``steered_generate_many`` answers, evaluation by evaluation (``ids``: one list per evaluation)."""
    return [merge_steered(job_ids, *(p[k] for p in parts)) for k, job_ids in enumerate(ids)]


class item_errors:
    """ExampleError -> ItemError naming the shard (counted as an item error); anything else is counted
    as fatal and re-raised."""

    def __init__(self, shard_id: str, stage: str):
        self.shard_id, self.stage = shard_id, stage

    def __enter__(self):
        return self

    def __exit__(self, tp, exc, tb):
        if exc is None:
            return False
        m = metrics()
        if isinstance(exc, ExampleError):
            if m is not None:
                m.error("item", self.stage)
            raise ItemError(self.shard_id, exc.example_id, exc.message) from exc
        if m is not None:
            m.error("fatal", self.stage)
        return False
