"""Who samples in a Ray session. ``RolloutActors``: the rollout actors (hf or vLLM engines), each
sampling whole shards. ``RankGroups`` (ray.rollout_backend 'deepspeed'): the ZeRO-3 gradient groups
themselves, every rank sampling its share of a shard in lockstep, the shares joined by a task; no
process then holds the whole model. Both answer ``call(k, method, *args)`` with what one rollout
actor's ``method`` would return (refs), for shard or part number ``k``."""

from __future__ import annotations

import ray

from ipg.workers.sampling import merge_rank_samples

_merge = ray.remote(num_cpus=0)(merge_rank_samples)


class RolloutActors:
    def __init__(self, group):
        self.group = group

    def __len__(self) -> int:
        return len(self.group)

    def call(self, k: int, method: str, *args, num_returns: int = 1):
        return getattr(self.group.pick(k), method).options(num_returns=num_returns).remote(*args)


class RankGroups:
    def __init__(self, groups: list[list]):
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def call(self, k: int, method: str, *args, num_returns: int = 1):
        """Every rank of group k runs ``method`` on its share (``generate`` for ``generate_costed``: the
        cost is the merged shards'), in the same order on every rank, which the group's lockstep needs."""
        ranks = self.groups[k % len(self.groups)]
        if method == "steered_generate_many":
            ids = [[ex["id"] for ex in job.examples] for job in args[0]]
        else:
            ids = [ex["id"] for ex in (args[0] if method == "steered_generate" else args[1])]
        parts = [getattr(r, "generate" if method == "generate_costed" else method).remote(*args) for r in ranks]
        return _merge.options(num_returns=num_returns).remote(method, ids, *parts)
