"""The DeepSpeed gradient backend: one rank of a ZeRO-3 gradient group (DeepSpeed is imported here only).

A group is R actors forming a torch.distributed group (gloo on CPU, nccl on GPU). ZeRO stage 3
partitions the frozen weights across the ranks (optionally offloaded to CPU memory); each forward or
backward through a block gathers its parameters collectively, so the ranks must make the same calls in
the same order. Each rank scores its own prompts of the shard (``rank::R``) with the lockstep
functions of ``ipg.attribution`` (``agree`` = all-reduce max of the call counts, padding with
zero-advantage dummies); the driver merges the R partial tables. The group can sample too
(ray.rollout_backend 'deepspeed': ``workers.sampling.Sampling`` on each rank's share, decoding in
lockstep), so no process of the run ever holds the whole model. Gradients are taken with respect to
activations only: no optimizer, no optimizer state.

The model is built through ``HfDeepSpeedConfig`` + ``from_pretrained`` (measured: building inside
``deepspeed.zero.Init`` directly fails on this stack).
"""

from __future__ import annotations

import datetime
import os
import socket

import torch

from ipg.workers.gradient import GradientWorker


def zero3_config(offload_params: bool = False) -> dict:
    # every parameter gathered only while its module runs, and released right after: DeepSpeed's defaults
    # keep up to 1e9 gathered parameters alive for reuse, which for a model under 1e9 parameters means
    # that a rank ends up holding all of it
    cfg = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_prefetch_bucket_size": 0,
            "stage3_max_live_parameters": 0,
            "stage3_max_reuse_distance": 0,
        },
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }
    if offload_params:
        cfg["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": True}
    return cfg


def skip_shm_comm_op() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op when the group forms. ZeRO-3 does not
    use it (its collectives are all-gathers and reduce-scatters over gloo), and the build needs a C++
    compiler, takes ~20 s, and waits forever on the torch-extensions lock file that a process killed
    mid-build leaves behind (measured: a CI run hung 88 min on such a lock). Not building it removes all
    three. A DeepSpeed without this hook is left as it is."""
    import importlib

    # by module name: the attribute deepspeed.comm.torch is the torch package (comm re-exports its imports)
    ds_torch = importlib.import_module("deepspeed.comm.torch")

    if hasattr(ds_torch, "build_shm_op"):
        ds_torch.build_shm_op = lambda: None


class DeepSpeedGradientRank(GradientWorker):
    """Constructed cheaply; ``join(master_addr, port)`` (called on all ranks at once) forms the group and
    loads the partitioned model. Then the GradientWorker methods run on this rank's share of each shard."""

    def __init__(
        self,
        model: str = "organism",
        *,
        rank: int = 0,
        world: int = 2,
        dtype: str = "float32",
        device: str = "cpu",
        trust_remote_code: bool = False,
        saes: dict[int, str] | None = None,
        threads: int | None = None,
        offload_params: bool = False,
        timeout_s: float = 900.0,
        backend: str = "deepspeed",
    ):
        if threads:
            torch.set_num_threads(threads)
        self.name, self.rank, self.world, self.dtype, self.device = model, rank, world, dtype, device
        self.trust_remote_code, self.offload_params, self.sae_paths = trust_remote_code, offload_params, saes
        self.timeout_s = timeout_s
        self.model = None

    def address(self) -> tuple[str, int]:
        """Rank 0: where the group meets (this node's address and a free port)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join(self, master_addr: str, master_port: int) -> dict:
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.integrations import HfDeepSpeedConfig

        from ipg.cluster.metrics import StageTimer
        from ipg.models import DTYPES, resolve_model_path
        from ipg.workers.rollout import load_saes, quiet_loading

        quiet_loading()
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world),
            LOCAL_RANK="0",
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        cuda = self.device.startswith("cuda")
        if not cuda:
            skip_shm_comm_op()
        deepspeed.init_distributed(
            dist_backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=self.timeout_s)
        )
        cfg = zero3_config(self.offload_params)
        self._hf_ds_config = HfDeepSpeedConfig(cfg)  # must stay alive while the model is built: ZeRO-3 partitioning
        path = resolve_model_path(self.name)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[self.dtype], trust_remote_code=self.trust_remote_code
        )
        model.requires_grad_(False)
        self.ds_engine = deepspeed.initialize(model=model, config=cfg)[0]
        self.model = self.ds_engine.module.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
        self.saes = load_saes(self.sae_paths)
        self.timer = StageTimer()
        self.lockstep = self.agree
        return self.memory()

    def memory(self) -> dict:
        """Parameters held by this rank vs the whole model (ZeRO-3 partitions)."""
        params = list(self.model.parameters())
        local = sum(p.ds_tensor.numel() for p in params)
        full = sum(p.ds_numel for p in params)
        size = params[0].ds_tensor.element_size()
        return {
            "rank": self.rank,
            "local_params": local,
            "full_params": full,
            "local_bytes": local * size,
            "full_bytes": full * size,
        }

    def agree(self, n: int) -> int:
        """The largest ``n`` over the group's ranks (all ranks call this in the same order)."""
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def part(self, items: list) -> list:
        """Every R-th item of a shard, from this rank's index on."""
        return items[self.rank :: self.world]

    def _rescore(self, samples, cfg=None):
        """Lockstep teacher-forced log-probs: one sample per call, padded to the group's largest count."""
        from ipg.generation import Sample, rescore

        out = []
        for i in range(self.agree(len(samples))):
            if i < len(samples):
                out.append(rescore(self.model, [samples[i]], batch_tokens=1)[0])
            else:
                rescore(self.model, [Sample("-", 0, [0], [0], "")], batch_tokens=1)
        return out
