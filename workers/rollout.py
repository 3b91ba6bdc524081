"""RolloutWorker: samples N trajectories per prompt for a shard and scores them with the signal.

Engine ``hf`` (our KV-cached generation) or ``vllm`` (workers.vllm_backend), behind the same methods. Sampling is
seeded per (seed, example id, sample index), so a shard's rollouts do not depend on the sharding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from cluster.errors import ItemError
from cluster.metrics import StageTimer, metrics
from ipg.attribution import AttributionConfig, Rollout, sample_rollouts
from ipg.components import Site
from ipg.errors import ExampleError, InputError
from ipg.generation import Sample, SamplingParams
from ipg.models import load_model
from ipg.sae import TopKSAE
from ipg.signals import make_signal
from workers.faults import maybe_crash


@dataclass
class ShardRollouts:
    """What travels (as an ObjectRef) from a rollout worker to a gradient worker."""

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


def quiet_loading() -> None:
    """No per-actor "Loading weights" bars in the driver's log."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def _gpu_share() -> float | None:
    """The share of a GPU Ray gave this actor (0.5 when two actors share one), None outside Ray."""
    try:
        import ray

        return ray.get_runtime_context().get_assigned_resources().get("GPU") if ray.is_initialized() else None
    except AssertionError:  # Ray answers only inside a worker process
        return None


def load_saes(saes: dict[int, str] | None) -> dict[int, TopKSAE]:
    return {int(layer): TopKSAE.load(path) for layer, path in (saes or {}).items()}


class RolloutWorker:
    """Backends: ``hf`` (our KV-cached loop on a torch model) or ``vllm`` (a vLLM engine in this actor;
    ``vllm`` holds its options: tensor_parallel_size, max_model_len, gpu_memory_utilization, seed, ...)."""

    def __init__(self, model: str = "organism", *, dtype: str = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, saes: dict[int, str] | None = None, backend: str = "hf",
                 threads: int | None = None, vllm: dict | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)  # one actor per core: no oversubscription
        if backend not in ("hf", "vllm"):
            raise InputError(f"ray.rollout_backend: '{backend}'; use 'hf' or 'vllm'")
        quiet_loading()
        self.backend, self.engine, self.model = backend, None, None
        if backend == "vllm":
            from workers.vllm_backend import VLLMEngine

            opts = {k: v for k, v in (vllm or {}).items() if v is not None}
            opts.setdefault("dtype", dtype)
            self.engine = VLLMEngine(model, trust_remote_code=trust_remote_code, gpu_share=_gpu_share(), **opts)
            self.tokenizer = self.engine.tokenizer
        else:
            self.model, self.tokenizer = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        self.saes = load_saes(saes)
        self.timer = StageTimer()

    def ready(self) -> bool:
        return True

    def engine_memory(self) -> str | None:
        """How the vLLM engine was sized (None for the hf backend)."""
        return self.engine.memory if self.engine is not None else None

    def generate(self, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str,
                 signal_params: dict | None = None) -> ShardRollouts:
        """The shard's scored rollouts; a failing example raises ItemError (on_error 'fail') or is
        skipped and reported (on_error 'skip')."""
        maybe_crash("rollout", shard_id)
        sig = make_signal(signal, **(signal_params or {}))
        skipped: dict[str, str] = {}
        start = time.perf_counter()
        with self.timer("rollout"), _item_errors(shard_id, "rollout"):
            rollouts = sample_rollouts(self.model, self.tokenizer, examples, sig, cfg, saes=self.saes, skipped=skipped,
                                       engine=self.engine)
        m = metrics()
        if m is not None:
            m.count("rollout", prompts=len(rollouts), trajectories=sum(len(r.samples) for r in rollouts),
                    tokens=sum(s.n_tokens for r in rollouts for s in r.samples))
            for _ in skipped:
                m.error("item", "rollout")
        return ShardRollouts(shard_id, rollouts, skipped, time.perf_counter() - start, self.backend)

    def generate_costed(self, *args, **kwargs) -> tuple[ShardRollouts, int]:
        """``generate``, and its cost apart (call with ``num_returns=2``), so the driver can order the
        gradient work by size without fetching the rollouts."""
        out = self.generate(*args, **kwargs)
        return out, out.cost

    def mean_reward(self, shard_id: str, examples: list[dict], cfg: AttributionConfig, signal: str,
                    signal_params: dict | None, site: Site, alpha: float, baseline) -> tuple[float, int]:
        """Sum over the shard's prompts of the mean reward with ``site`` at ``alpha`` on the path, and the
        prompt count (completeness: J(0), J(alpha_min))."""
        sig = make_signal(signal, **(signal_params or {}))
        with self.timer("completeness"), _item_errors(shard_id, "completeness"):
            rolls = sample_rollouts(self.model, self.tokenizer, examples, sig, cfg, site=site, alpha=alpha,
                                    baseline=baseline, saes=self.saes, skipped={}, engine=self.engine)
        return float(sum(np.mean(r.rewards) for r in rolls)), len(rolls)

    def steered_generate(self, examples: list[dict], params: SamplingParams, steering: dict | None = None) -> list[list[Sample]]:
        """Generation under steering, for evaluation at engine speed. ``steering``: None, or
        {"scale": [component ids], "gamma", "positions"} or {"add": layer, "vector", "coefficient", "positions"}."""
        from workers.model_ops import ModelOps, steering_context

        if self.engine is None:
            with self.timer("evaluate"):
                return ModelOps(self.model, self.tokenizer, self.saes).generate(examples, params, steering)
        with self.timer("evaluate"), steering_context(None, steering, self.saes, engine=self.engine):
            return self.engine.generate(examples, params)


class _item_errors:
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
