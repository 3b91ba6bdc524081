"""RolloutWorker: samples N trajectories per prompt for a shard and scores them with the signal.

Backend ``hf`` (our KV-cached generation); the vLLM backend comes behind the same method. Sampling is
seeded per (seed, example id, sample index), so a shard's rollouts do not depend on the sharding.
"""

from __future__ import annotations

from ipg.attribution import AttributionConfig, Rollout, sample_rollouts
from ipg.models import load_model
from ipg.signals import make_signal


class RolloutWorker:
    def __init__(self, model: str = "organism", *, dtype: str = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, backend: str = "hf", threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)  # one actor per core: no oversubscription
        if backend != "hf":
            raise NotImplementedError(f"rollout backend '{backend}' is not available yet; use 'hf'")
        self.model, self.tokenizer = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)

    def generate(self, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str,
                 signal_params: dict | None = None) -> list[Rollout]:
        """The shard's scored rollouts (``shard_id`` names the shard in errors and logs)."""
        sig = make_signal(signal, **(signal_params or {}))
        sig.check(examples)
        return sample_rollouts(self.model, self.tokenizer, examples, sig, cfg)
