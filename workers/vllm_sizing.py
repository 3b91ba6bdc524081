"""How much memory a vLLM engine may take, decided before the engine starts.

On a GPU, vLLM sizes its KV cache itself from ``gpu_memory_utilization`` (the share of the device it may
use, weights included); the default here is 0.9 of the share of the GPU the actor holds (a rollout actor
given 0.5 GPU by Ray gets 0.45), so an engine and a gradient actor can share one device.

On a CPU the same setting means a share of the NUMA node's memory, from which vLLM subtracts what its
process already holds. With a 4 MB model any share works; with real weights a small share leaves the KV
cache a negative budget and the engine fails to start. So on CPU the KV cache is sized explicitly here
(vLLM's ``kv_cache_memory_bytes``) from what the run needs:

    bytes per token = 2 (K and V) x layers x KV heads x head size x bytes per value   (per tensor-parallel rank)
    wanted          = bytes per token x max_model_len x max_num_seqs

capped at half of the memory the node has free after the weights and a fixed engine overhead (other actors
share the node) and at 4 GiB (vLLM's former CPU default; sequences beyond what fits wait their turn), and
never below one sequence of ``max_model_len`` tokens, the least vLLM accepts. A run sets ``max_model_len``
to its longest prompt plus its new tokens, so the cache holds what the run generates and little more. When even
that does not fit, the error names ``ray.vllm.max_model_len`` and ``ray.vllm.kv_cache_gib``. ``ray.vllm.kv_cache_gib``
sets the size outright. The estimate covers standard multi-head and grouped-query attention; for other
attention layouts (MLA, hybrid state-space layers) set ``ray.vllm.kv_cache_gib``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ipg.errors import InputError

GiB = 1 << 30
BLOCK = 16  # vLLM's KV block: context lengths are rounded up to it
DEFAULT_CONTEXT = 2048  # a config that states no context length
CPU_MAX_NUM_SEQS = 64  # sequences in flight at once on CPU; more adds memory, little throughput
CPU_OVERHEAD = 1 * GiB  # the engine process besides weights and KV cache: torch, vLLM buffers, activations
CPU_SHARE = 0.5  # of the node's free memory after weights and overhead; the rest is left to other actors
CPU_CEILING = 4 * GiB  # the most taken unasked (vLLM's own former CPU default); more sequences than fit wait
GPU_UTILIZATION = 0.9  # vLLM's own default, of the GPU share the actor holds

_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "fp8": 1, "float8_e4m3fn": 1}


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs to know about a checkpoint."""

    layers: int
    kv_heads: int
    head_dim: int
    context: int | None  # the model's own maximum context, when its config states one
    value_bytes: int  # bytes per weight and per cached K/V value in the engine's dtype
    weights_bytes: int

    def kv_bytes_per_token(self, tensor_parallel_size: int = 1) -> int:
        heads = max(1, math.ceil(self.kv_heads / tensor_parallel_size))  # fewer KV heads than ranks: replicated
        return 2 * self.layers * heads * self.head_dim * self.value_bytes


def whole_blocks(n: int) -> int:
    """``n`` tokens rounded up to whole KV blocks."""
    return -(-n // BLOCK) * BLOCK


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def value_bytes(dtype: str | None, config) -> int:
    name = str(dtype or "auto").replace("torch.", "")
    if name == "auto":
        name = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32").replace(
            "torch.", ""
        )
    if name not in _BYTES:
        raise InputError(f"ray.vllm.dtype: '{dtype}' is not a dtype vLLM runs; use float32, bfloat16 or float16")
    return _BYTES[name]


def _weights_bytes(path: Path, per_value: int) -> int:
    """Weights in the engine's dtype: the element count from safetensors headers (no tensor is read), else
    the checkpoint files' size."""
    total, seen = 0, False
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, meta in header.items():
            if name != "__metadata__":
                total += math.prod(meta["shape"]) * per_value
                seen = True
    if seen:
        return total
    return sum(f.stat().st_size for f in path.glob("*.bin")) or sum(
        f.stat().st_size for f in path.rglob("*") if f.is_file()
    )


def model_shape(path: str, dtype: str | None, trust_remote_code: bool = False) -> ModelShape:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    layers = getattr(text, "num_hidden_layers", None)
    if not heads or not layers:
        raise InputError(
            f"ray.vllm.kv_cache_gib: cannot size the KV cache of '{path}' (its config names no attention "
            "heads or layers); set ray.vllm.kv_cache_gib"
        )
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    per_value = value_bytes(dtype, text)
    return ModelShape(
        layers=int(layers),
        kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        context=getattr(text, "max_position_embeddings", None),
        value_bytes=per_value,
        weights_bytes=_weights_bytes(Path(path), per_value),
    )


def free_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class EnginePlan:
    """Engine arguments decided here, and the line the log prints about them."""

    args: dict
    summary: str


def whole_prefills(context: int, tensor_parallel_size: int = 1) -> dict:
    """CPU engines prefill each prompt in one step. A prefill split over steps (chunked prefill, vLLM's
    default once a step's prompts pass its token budget) makes vLLM rewind the split request's random
    generator with ``Generator.set_offset``, which CPU generators do not implement: the engine dies
    ("CPU Generator does not use offset") on the first seeded request that gets split. With chunking off,
    a prompt that does not fit a step waits for the next one; the budget must then hold the longest."""
    return dict(enable_chunked_prefill=False, max_num_batched_tokens=max(4096 * tensor_parallel_size, context))


def check_settings(
    shape: ModelShape,
    *,
    max_model_len: int | None = None,
    kv_cache_gib: float | None = None,
    tensor_parallel_size: int = 1,
) -> None:
    """What can be refused without knowing the node: a context past the model's, a KV cache smaller than
    one sequence (the driver checks these before any actor starts)."""
    if max_model_len is not None and shape.context and max_model_len > shape.context:
        raise InputError(
            f"ray.vllm.max_model_len: {max_model_len} tokens exceeds the model's context of {shape.context}; "
            f"lower it to at most {shape.context}"
        )
    if kv_cache_gib is not None:
        per_token = shape.kv_bytes_per_token(tensor_parallel_size)
        kv = int(kv_cache_gib * GiB)
        context = max_model_len or BLOCK  # unset: the context shrinks to what the cache holds
        if kv < per_token * context:
            raise InputError(
                f"ray.vllm.kv_cache_gib: {kv_cache_gib:g} GiB holds {kv // per_token} tokens, less than one "
                f"sequence of ray.vllm.max_model_len={context} ({_gib(per_token * context)}); raise it or lower "
                "ray.vllm.max_model_len"
            )


def preflight(path: str, vllm: dict, *, gpu: bool, dtype: str | None, trust_remote_code: bool = False) -> None:
    """The node-independent checks of ``check_settings`` for the engines a session will start (CPU only:
    on GPU vLLM sizes the cache itself)."""
    if gpu or os.environ.get("VLLM_CPU_KVCACHE_SPACE") or vllm.get("gpu_memory_utilization") is not None:
        return
    check_settings(
        model_shape(path, vllm.get("dtype") or dtype, trust_remote_code),
        max_model_len=vllm.get("max_model_len"),
        kv_cache_gib=vllm.get("kv_cache_gib"),
        tensor_parallel_size=vllm.get("tensor_parallel_size") or 1,
    )


def cpu_plan(
    shape: ModelShape,
    *,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    kv_cache_gib: float | None = None,
    tensor_parallel_size: int = 1,
    available: int | None = None,
) -> EnginePlan:
    """KV cache size, context length and batch for a CPU engine (see the module's docstring)."""
    check_settings(
        shape, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib, tensor_parallel_size=tensor_parallel_size
    )
    tp = tensor_parallel_size
    available = free_memory() if available is None else available
    per_token = shape.kv_bytes_per_token(tp)
    seqs = max_num_seqs or CPU_MAX_NUM_SEQS
    free = available - shape.weights_bytes - tp * CPU_OVERHEAD  # all ranks of a CPU engine share the node
    room = free / tp  # per rank
    context = max_model_len or shape.context or DEFAULT_CONTEXT
    where = (
        f"this node has {_gib(available)} free; the weights take {_gib(shape.weights_bytes)} and each engine "
        f"process about {_gib(CPU_OVERHEAD)} besides"
    )
    if kv_cache_gib is not None:
        kv = int(kv_cache_gib * GiB)
        if kv * tp > free:
            raise InputError(
                f"ray.vllm.kv_cache_gib: {kv_cache_gib:g} GiB per rank does not fit: {where}; lower it to at "
                f"most {max(free / tp, 0) / GiB:.2f}"
            )
        if max_model_len is None:
            context = min(context, kv // per_token // BLOCK * BLOCK)
    else:
        fits = int(max(room, 0) // per_token // BLOCK * BLOCK)  # tokens one rank can cache
        if max_model_len is None and fits < context:
            context = fits  # the model's whole context does not fit: as much of it as does
        if fits < context or context < BLOCK:
            raise InputError(
                f"ray.vllm.max_model_len: one sequence of {context} tokens needs {_gib(per_token * context)} of "
                f"KV cache ({per_token / 1024:.1f} KiB per token), but {where}; lower ray.vllm.max_model_len, "
                "set ray.vllm.kv_cache_gib, or free memory on the node"
            )
        kv = max(min(per_token * context * seqs, int(room * CPU_SHARE), CPU_CEILING), per_token * context)
    args = dict(kv_cache_memory_bytes=kv, max_model_len=context, max_num_seqs=seqs, **whole_prefills(context, tp))
    summary = (
        f"vllm on CPU: KV cache {_gib(kv)} per rank ({kv // per_token} tokens at {per_token / 1024:.1f} KiB; "
        f"up to {seqs} sequences of {context}), weights {_gib(shape.weights_bytes)}, {_gib(available)} free"
    )
    return EnginePlan(args, summary)


def gpu_plan(
    *,
    gpu_memory_utilization: float | None = None,
    gpu_share: float | None = None,
    kv_cache_gib: float | None = None,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
) -> EnginePlan:
    """On a GPU vLLM measures the device itself; only the share it may take is decided here."""
    args = dict(max_model_len=max_model_len, max_num_seqs=max_num_seqs)
    if kv_cache_gib is not None:
        args["kv_cache_memory_bytes"] = int(kv_cache_gib * GiB)
        return EnginePlan(args, f"vllm on GPU: KV cache {kv_cache_gib:g} GiB (ray.vllm.kv_cache_gib)")
    share = gpu_share if gpu_share and 0 < gpu_share < 1 else 1.0
    util = gpu_memory_utilization if gpu_memory_utilization is not None else round(GPU_UTILIZATION * share, 4)
    args["gpu_memory_utilization"] = util
    return EnginePlan(args, f"vllm on GPU: up to {util:g} of the device's memory (weights and KV cache)")


def plan(
    path: str,
    *,
    dtype: str | None,
    cuda: bool,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    kv_cache_gib: float | None = None,
    gpu_memory_utilization: float | None = None,
    gpu_share: float | None = None,
    trust_remote_code: bool = False,
) -> EnginePlan:
    """The engine's memory arguments on this machine."""
    if kv_cache_gib is not None and gpu_memory_utilization is not None:
        raise InputError(
            "ray.vllm.kv_cache_gib: set either it or ray.vllm.gpu_memory_utilization, not both (the KV cache "
            "size overrides the share)"
        )
    if cuda:
        return gpu_plan(
            gpu_memory_utilization=gpu_memory_utilization,
            gpu_share=gpu_share,
            kv_cache_gib=kv_cache_gib,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
        )
    shape = model_shape(path, dtype, trust_remote_code)
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE") or gpu_memory_utilization is not None:
        # sized the vLLM way (the legacy variable wins inside vLLM): passed through as given
        context = max_model_len or shape.context or DEFAULT_CONTEXT
        args = dict(
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            **whole_prefills(context, tensor_parallel_size),
        )
        return EnginePlan(
            {k: v for k, v in args.items() if v is not None},
            "vllm on CPU: memory as set by VLLM_CPU_KVCACHE_SPACE / ray.vllm.gpu_memory_utilization",
        )
    return cpu_plan(
        shape,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        kv_cache_gib=kv_cache_gib,
        tensor_parallel_size=tensor_parallel_size,
    )
