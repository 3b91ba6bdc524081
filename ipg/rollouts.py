"""Rollouts: N sampled trajectories per prompt, scored by the signal, with their group advantages; the
model may have a site moved along the path (alpha < 1) while it samples."""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ipg.advantages import advantages
from ipg.attribution_config import AttributionConfig
from ipg.components import Site, edit
from ipg.errors import ExampleError, InputError
from ipg.generation import Sample, generate
from ipg.prompts import prompt_ids as encoded_prompt
from ipg.signals import Signal


@dataclass
class Rollout:
    """One prompt's group of trajectories, scored."""

    example: dict
    samples: list[Sample]
    rewards: list[float]
    advantages: list[float]


def _alpha_seed(seed: int, alpha: float) -> int:
    """Sampling seed at a path point: alpha = 1 uses the run seed; other points get their own draws."""
    if alpha == 1.0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/alpha/{alpha!r}".encode()).digest()[:7], "little")


def _interpolation(baseline: torch.Tensor, alpha: float):
    return lambda h: baseline.to(h.dtype) + alpha * (h - baseline.to(h.dtype))


def sample_rollouts(
    model,
    tokenizer,
    examples: list[dict],
    signal: Signal,
    cfg: AttributionConfig,
    *,
    site: Site | None = None,
    alpha: float = 1.0,
    baseline: torch.Tensor | None = None,
    saes: dict | None = None,
    skipped: dict[str, str] | None = None,
    engine=None,
    agree=None,
    cache: dict | None = None,
) -> list[Rollout]:
    """N trajectories per example from the model with the site on the path at ``alpha`` (alpha = 1:
    the unmodified model), scored by the signal, with per-group advantages.

    ``engine``: another sampler of the same weights (the vLLM backend) with ``generate(examples, params)``
    and ``interpolate(site, alpha, baseline, positions, saes)`` (a context manager); None: our HF loop.
    An example whose signal fails raises ExampleError (``cfg.on_error`` 'fail'), or ('skip') is left
    out and recorded in ``skipped`` (example id -> error). ``agree``: a ZeRO-3 rank's lockstep
    (``ipg.generation.generate``). ``cache``: a dict that keeps the unmodified model's samples by prompts and
    sampling parameters, so attributions of other signals or methods on the same prompts and seed score
    the same trajectories instead of sampling them again (sampling is seeded per example and sample)."""
    params = cfg.sampling(_alpha_seed(cfg.seed, alpha))
    ctx = nullcontext()
    if site is not None and alpha != 1.0:
        ctx = (
            engine.interpolate(site, alpha, baseline, cfg.positions, saes)
            if engine is not None
            else edit(model, site, _interpolation(baseline, alpha), positions=cfg.positions, saes=saes)
        )
    key = None
    if cache is not None and engine is None and agree is None and (site is None or alpha == 1.0):
        key = (params, tuple((ex["id"], tuple(encoded_prompt(tokenizer, ex))) for ex in examples))
    if key is not None and key in cache:
        groups = cache[key]
    else:
        with ctx:
            groups = (
                engine.generate(examples, params)
                if engine is not None
                else generate(model, tokenizer, examples, params, batch_size=cfg.generation_batch_size, agree=agree)
            )
        if key is not None:
            cache[key] = groups
    out = []
    for ex, samples in zip(examples, groups):
        try:
            rewards = _rewards(signal, ex, samples)
        except ExampleError as e:
            if cfg.on_error == "fail" or skipped is None:
                raise
            skipped[ex["id"]] = str(e)
            continue
        out.append(Rollout(ex, samples, rewards, advantages(rewards, cfg.advantage)))
    return out


def _rewards(signal: Signal, ex: dict, samples: list[Sample]) -> list[float]:
    try:
        rewards = [
            float(r) for r in signal([s.text for s in samples], [ex] * len(samples), [s.n_tokens for s in samples])
        ]
    except Exception as e:  # a user signal or reward model failing on one example: name it
        raise ExampleError(
            ex["id"], f"signal '{signal.name}' failed on example '{ex['id']}': {type(e).__name__}: {e}"
        ) from e
    for j, r in enumerate(rewards):
        if not np.isfinite(r):
            raise ExampleError(
                ex["id"],
                f"signal '{signal.name}': reward {r} for example '{ex['id']}' sample {j} is not finite; a signal must return finite floats",
            )
    return rewards


def prepare_examples(examples: list[dict]) -> list[dict]:
    """Examples with ids (derived from the position when absent) and non-empty prompts, or an error."""
    if not examples:
        raise InputError("examples: empty; attribution needs at least one example with a 'prompt'")
    examples = [{"id": str(ex.get("id", f"example-{i}")), **ex} for i, ex in enumerate(examples)]
    for ex in examples:
        if not isinstance(ex.get("prompt"), str) or not ex["prompt"]:
            raise InputError(f"example '{ex['id']}': field 'prompt' is missing or empty")
    return examples
