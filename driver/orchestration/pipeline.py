"""Attribution on Ray, the entry point: ``attribute_on_ray`` for one attribution, ``RaySession`` to run
many on the same actors.

Modules: ``driver.orchestration.ray_session`` (the actors), ``driver.orchestration.attribution_unit`` (one resumable attribution:
shard, generate, attribute, merge exactly once), ``driver.orchestration.unit_records`` (its record and diagnostics),
``driver.orchestration.dispatch`` (sharding and work order, no Ray), ``driver.orchestration.progress``, ``driver.orchestration.ray_errors``.
"""

from __future__ import annotations

from pathlib import Path

from ipg.attribution import Attribution, AttributionConfig
from ipg.driver.config import ModelConfig, RayConfig
from ipg.driver.orchestration.dispatch import Dispatch, shard
from ipg.driver.orchestration.ray_session import RaySession
from ipg.driver.orchestration.rollout_choice import resolve
from ipg.driver.orchestration.unit_records import RESULT_RECORD
from ipg.models import load_tokenizer
from ipg.prompts import longest_prompt

__all__ = ["Attribution", "Dispatch", "RESULT_RECORD", "RaySession", "attribute_on_ray", "shard"]


def attribute_on_ray(
    model: str | ModelConfig,
    examples: list[dict],
    cfg: AttributionConfig | None = None,
    *,
    signal: str = "accuracy",
    signal_params: dict | None = None,
    out_dir: str | Path,
    ray_cfg: RayConfig | None = None,
    run_id: str = "",
    resume: bool = False,
    log=print,
    **settings,
) -> Attribution:
    """One attribution on Ray (connects, or starts a local cluster): the same table as
    ``ipg.attribute`` with the same settings. ``settings`` are AttributionConfig fields when ``cfg`` is None."""
    cfg = cfg or AttributionConfig(**{k: tuple(v) if k == "layers" else v for k, v in settings.items()})
    max_tokens = None
    model = model if isinstance(model, ModelConfig) else ModelConfig(name=model, saes={})
    ray_cfg = resolve(ray_cfg or RayConfig(), model, log)  # 'auto' decided once, here
    if ray_cfg.rollout_backend == "vllm":  # the engines' context: the longest prompt and its new tokens
        name = model.name
        tokenizer = None if all("prompt_ids" in ex for ex in examples) else load_tokenizer(name)
        max_tokens = longest_prompt(tokenizer, examples) + cfg.max_new_tokens
    with RaySession(
        model, ray_cfg, log, signals=[signal], max_tokens=max_tokens, run=run_id or Path(out_dir).name
    ) as session:
        return session.attribute(
            examples, cfg, signal=signal, signal_params=signal_params, out_dir=out_dir, run_id=run_id, resume=resume
        )
