"""Who samples in a Ray session. ``RolloutActors``: the rollout actors (hf or vLLM engines), each
sampling whole shards. ``RankGroups`` (ray.rollout_backend 'deepspeed'): the ZeRO-3 gradient groups
themselves, every rank sampling its share of a shard in lockstep, the shares joined by a task; no
process then holds the whole model. Both have the sampling methods of ``workers.sampling.Sampling``,
each with a leading ``k`` (the shard or part number that picks the actor or group), returning refs to
what one rollout actor's method would return."""

from __future__ import annotations

import ray

from ipg.attribution import AttributionConfig
from ipg.components import Site
from ipg.generation import SamplingParams
from ipg.workers.sampling import merge_rewards, merge_shards, merge_shards_costed, merge_steered, merge_steered_many

_on_driver_node = dict(num_cpus=0)
_merge_shards = ray.remote(**_on_driver_node)(merge_shards)
_merge_shards_costed = ray.remote(**_on_driver_node)(merge_shards_costed)
_merge_rewards = ray.remote(**_on_driver_node)(merge_rewards)
_merge_steered = ray.remote(**_on_driver_node)(merge_steered)
_merge_steered_many = ray.remote(**_on_driver_node)(merge_steered_many)


class RolloutActors:
    def __init__(self, group):
        self.group = group

    def __len__(self) -> int:
        return len(self.group)

    def generate(
        self, k: int, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict
    ):
        return self.group.pick(k).generate.remote(shard_id, examples, cfg, signal, signal_params)

    def generate_costed(
        self, k: int, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict
    ):
        """(rollouts ref, cost ref)."""
        return (
            self.group.pick(k)
            .generate_costed.options(num_returns=2)
            .remote(shard_id, examples, cfg, signal, signal_params)
        )

    def mean_reward(self, k: int, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str,
                    signal_params: dict, site: Site, alpha: float, baseline):  # fmt: skip
        return self.group.pick(k).mean_reward.remote(
            shard_id, examples, cfg, signal, signal_params, site, alpha, baseline
        )

    def steered_generate(self, k: int, examples: list[dict], params: SamplingParams, steering: dict | None):
        return self.group.pick(k).steered_generate.remote(examples, params, steering)

    def steered_generate_many(
        self, k: int, jobs: list, params: SamplingParams, positions: str, batch_size: int, pack_tokens: int
    ):
        return self.group.pick(k).steered_generate_many.remote(jobs, params, positions, batch_size, pack_tokens)


class RankGroups:
    """Every rank of group k runs the method on its share, in the same order on every rank (the group's
    lockstep needs it); a task joins the shares."""

    def __init__(self, groups: list[list]):
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def _ranks(self, k: int) -> list:
        return self.groups[k % len(self.groups)]

    def generate(
        self, k: int, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict
    ):
        parts = [r.generate.remote(shard_id, examples, cfg, signal, signal_params) for r in self._ranks(k)]
        return _merge_shards.remote([ex["id"] for ex in examples], *parts)

    def generate_costed(
        self, k: int, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict
    ):
        """(rollouts ref, cost ref): the cost is the merged shard's."""
        parts = [r.generate.remote(shard_id, examples, cfg, signal, signal_params) for r in self._ranks(k)]
        return _merge_shards_costed.options(num_returns=2).remote([ex["id"] for ex in examples], *parts)

    def mean_reward(self, k: int, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str,
                    signal_params: dict, site: Site, alpha: float, baseline):  # fmt: skip
        parts = [
            r.mean_reward.remote(shard_id, examples, cfg, signal, signal_params, site, alpha, baseline)
            for r in self._ranks(k)
        ]
        return _merge_rewards.remote(*parts)

    def steered_generate(self, k: int, examples: list[dict], params: SamplingParams, steering: dict | None):
        parts = [r.steered_generate.remote(examples, params, steering) for r in self._ranks(k)]
        return _merge_steered.remote([ex["id"] for ex in examples], *parts)

    def steered_generate_many(
        self, k: int, jobs: list, params: SamplingParams, positions: str, batch_size: int, pack_tokens: int
    ):
        parts = [
            r.steered_generate_many.remote(jobs, params, positions, batch_size, pack_tokens) for r in self._ranks(k)
        ]
        return _merge_steered_many.remote([[ex["id"] for ex in job.examples] for job in jobs], *parts)
