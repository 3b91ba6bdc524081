"""The backends a Ray session can run, each named once: what samples (``ray.rollout_backend``) and what
computes gradients (``ray.gradient_backend``). ``auto`` is resolved once, when a run starts
(``ipg.driver.orchestration.rollout_choice.resolve``), into ``hf`` or ``vllm``; nothing after that sees it."""

from __future__ import annotations

from dataclasses import dataclass

from ipg.registry import Registry


@dataclass(frozen=True)
class RolloutBackend:
    summary: str
    actor_engine: bool  # run by each rollout actor (else: no rollout actor samples)
    needs_gradient: str | None = None  # the gradient backend it samples in


ROLLOUT_BACKENDS: Registry[RolloutBackend] = Registry("rollout backend")
ROLLOUT_BACKENDS.add(
    "hf",
    RolloutBackend(
        "the KV-cached HF loop in each rollout actor (the in-process run's samples exactly)", actor_engine=True
    ),
)
ROLLOUT_BACKENDS.add(
    "vllm", RolloutBackend("a vLLM engine in each rollout actor (install the vllm extra)", actor_engine=True)
)
ROLLOUT_BACKENDS.add(
    "auto",
    RolloutBackend(
        "vllm when it is installed and can run the model, else hf; resolved when the run starts", actor_engine=False
    ),
)
ROLLOUT_BACKENDS.add(
    "deepspeed",
    RolloutBackend(
        "the ZeRO-3 gradient groups sample (no process holds the model)", actor_engine=False, needs_gradient="deepspeed"
    ),
)

GRADIENT_BACKENDS: Registry[str] = Registry("gradient backend")
GRADIENT_BACKENDS.add("torch", "one torch process per gradient actor, holding the whole model")
GRADIENT_BACKENDS.add(
    "deepspeed", "DeepSpeed ZeRO-3 groups of ray.deepspeed.ranks actors, the parameters sharded across them"
)
