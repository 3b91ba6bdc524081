"""RolloutWorker: an actor that samples shards with its engine, ``hf`` (our KV-cached generation) or
``vllm`` (workers.vllm_backend); the sampling methods themselves are ``workers.sampling.Sampling``'s."""

from __future__ import annotations

from ipg.cluster.metrics import StageTimer
from ipg.errors import InputError
from ipg.models import load_model
from ipg.sae import SAE
from ipg.workers.backends import ROLLOUT_BACKENDS
from ipg.workers.sampling import Sampling


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


def load_saes(saes: dict[int, str] | None) -> dict[int, SAE]:
    return {int(layer): SAE.load(path) for layer, path in (saes or {}).items()}


class RolloutWorker(Sampling):
    """Backends: ``hf`` (our KV-cached loop on a torch model) or ``vllm`` (a vLLM engine in this actor;
    ``vllm`` holds its options: tensor_parallel_size, max_model_len, gpu_memory_utilization, seed, ...)."""

    def __init__(self, model: str = "organism", *, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
                 saes: dict[int, str] | None = None, backend: str = "hf", threads: int | None = None,
                 vllm: dict | None = None):  # fmt: skip
        if threads:
            import torch

            torch.set_num_threads(threads)  # one actor per core: no oversubscription
        if not ROLLOUT_BACKENDS.get(backend, "ray.rollout_backend").actor_engine:
            raise InputError(f"ray.rollout_backend: '{backend}' is not run by a rollout actor; use 'hf' or 'vllm'")
        quiet_loading()
        self.backend, self.engine, self.model = backend, None, None
        if backend == "vllm":
            from ipg.workers.vllm_backend import VLLMEngine

            opts = {k: v for k, v in (vllm or {}).items() if v is not None}
            opts.setdefault("dtype", dtype)
            self.engine = VLLMEngine(model, trust_remote_code=trust_remote_code, gpu_share=_gpu_share(), **opts)
            self.tokenizer = self.engine.tokenizer
        else:
            self.model, self.tokenizer = load_model(
                model, dtype=dtype, device=device, trust_remote_code=trust_remote_code
            )
        self.saes = load_saes(saes)
        self.timer = StageTimer()

    def ready(self) -> bool:
        return True

    def engine_memory(self) -> str | None:
        """How the vLLM engine was sized (None for the hf backend)."""
        return self.engine.memory if self.engine is not None else None
