"""The ``ray`` section of the run config: where and how a run uses Ray (actors, resources, placement,
the vLLM engines, the DeepSpeed ZeRO-3 groups). Validated on construction; errors name the key."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipg.errors import InputError
from ipg.workers.backends import GRADIENT_BACKENDS, ROLLOUT_BACKENDS


@dataclass(frozen=True)
class VLLMConfig:
    """The vLLM engine of each rollout actor (ray.rollout_backend: vllm)."""

    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # None: the run's longest prompt plus its new tokens
    max_num_seqs: int | None = None  # sequences in flight; None: 64 on CPU, vLLM's default on GPU
    kv_cache_gib: float | None = None  # None: sized from the above and the weights on CPU; vLLM's share on GPU
    gpu_memory_utilization: float | None = None  # GPU: None is 0.9 of the actor's GPU share (vLLM's meaning on CPU)
    dtype: str | None = None  # None: model.dtype
    seed: int = 0
    enforce_eager: bool = True  # steering hooks need eager mode
    enable_prefix_caching: bool = False  # cached prompt states would bypass steering hooks

    def __post_init__(self):
        if self.tensor_parallel_size < 1:
            raise InputError(f"tensor_parallel_size: must be >= 1, got {self.tensor_parallel_size}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise InputError(f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise InputError(f"max_model_len: must be >= 16 tokens, got {self.max_model_len}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise InputError(f"max_num_seqs: must be >= 1, got {self.max_num_seqs}")
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise InputError(f"kv_cache_gib: must be > 0 GiB, got {self.kv_cache_gib}")
        if self.kv_cache_gib is not None and self.gpu_memory_utilization is not None:
            raise InputError("kv_cache_gib: set either it or gpu_memory_utilization, not both")


@dataclass(frozen=True)
class DeepSpeedConfig:
    """A DeepSpeed ZeRO-3 gradient group (ray.gradient_backend: deepspeed): ``ranks`` actors, one per
    device, parameters partitioned across them; each gradient worker of ray.gradient_workers is a group."""

    ranks: int = 2
    offload_params: bool = False  # ZeRO-3 parameter offload to CPU memory (GPU ranks)
    # forming the group and any one collective (a gather of a block's weights) may take this long; past it
    # the run fails with an error naming this field instead of waiting on a rank that is gone
    timeout_s: float = 900.0

    def __post_init__(self):
        if self.ranks < 1:
            raise InputError(f"ranks: must be >= 1, got {self.ranks}")
        if not self.timeout_s > 0:
            raise InputError(f"timeout_s: must be > 0 seconds, got {self.timeout_s}")


@dataclass(frozen=True)
class RayConfig:
    """Where and how attribution runs on Ray (``--ray`` / ``--address`` / ``--ray.key=value``)."""

    enabled: bool | None = None  # None: on when an address is set (ray.address or RAY_ADDRESS)
    address: str | None = None  # None: RAY_ADDRESS, else a local cluster on 127.0.0.1
    rollout_workers: int = 1
    gradient_workers: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    threads_per_actor: int = 1  # torch threads in each actor (OMP/MKL pinned to it too)
    shard_size: int = 8  # prompts per shard: the unit of work, retry and resume
    max_in_flight: int = (
        4  # rollout look-ahead: shards generated ahead of the gradient workers (merges pending: this + workers)
    )
    snapshot_every: int = 4  # reducer snapshot every K merged shards (and at the end)
    # a shard whose work is lost (an actor, worker or node died) is done again whole, with backoff, up to
    # this many attempts in all; a per-example error is never retried
    max_shard_attempts: int = 4
    placement_strategy: str = "PACK"
    # how long a run waits for its actors' resources, which other jobs on a shared cluster may hold
    placement_timeout_s: float = 120.0
    # custom resources each rollout / gradient actor asks for, so it lands on the nodes that declare them
    # (KubeRay worker groups: rayStartParams.resources, e.g. '{"ipg_rollout": 1000}'); empty: any node
    rollout_resources: dict[str, float] = field(default_factory=dict)
    gradient_resources: dict[str, float] = field(default_factory=dict)
    # one of workers.backends.ROLLOUT_BACKENDS: hf | vllm (rollout actors), auto (vllm when installed and able
    # to run the model, else hf; resolved when the run starts), deepspeed (the ZeRO-3 gradient groups sample)
    rollout_backend: str = "hf"
    gradient_backend: str = "torch"  # workers.backends.GRADIENT_BACKENDS: torch | deepspeed
    progress: str = "auto"  # auto (bar on a terminal, lines in a job log) | bar | lines | off
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self):
        for name in (
            "rollout_workers",
            "gradient_workers",
            "threads_per_actor",
            "shard_size",
            "max_in_flight",
            "snapshot_every",
            "max_shard_attempts",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.placement_timeout_s > 0:
            raise InputError(f"placement_timeout_s: must be > 0 seconds, got {self.placement_timeout_s}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise InputError("cpus_per_actor / gpus_per_actor: must be >= 0")
        rollout = ROLLOUT_BACKENDS.get(self.rollout_backend, "rollout_backend")
        GRADIENT_BACKENDS.get(self.gradient_backend, "gradient_backend")
        if rollout.needs_gradient and self.gradient_backend != rollout.needs_gradient:
            raise InputError(
                f"rollout_backend: '{self.rollout_backend}' samples in the ZeRO-3 gradient groups; set gradient_backend: "
                f"{rollout.needs_gradient} too, or use rollout_backend 'hf' or 'vllm'"
            )
        if self.progress not in ("auto", "bar", "lines", "off"):
            raise InputError(f"progress: '{self.progress}'; use auto, bar, lines or off")
        for name in ("rollout_resources", "gradient_resources"):
            for k, v in getattr(self, name).items():
                if k in ("CPU", "GPU", "memory", "object_store_memory"):
                    raise InputError(
                        f"{name}.{k}: set CPUs and GPUs with cpus_per_actor / gpus_per_actor; "
                        "this map is for custom resources such as ipg_rollout"
                    )
                if not v > 0:
                    raise InputError(f"{name}.{k}: must be > 0, got {v}")

    def gpus_needed(self) -> float:
        ranks = self.deepspeed.ranks if self.gradient_backend == "deepspeed" else 1
        rollout = 0 if ROLLOUT_BACKENDS[self.rollout_backend].needs_gradient else self.rollout_workers  # ranks sample
        return (rollout + self.gradient_workers * ranks) * self.gpus_per_actor

    def active(self) -> bool:
        import os

        return self.enabled if self.enabled is not None else bool(self.address or os.environ.get("RAY_ADDRESS"))
