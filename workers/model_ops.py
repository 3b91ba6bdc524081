"""What an experiment computes with the model's weights besides attribution, in one place.

``ModelOps`` wraps a loaded model (with its tokenizer and SAEs) and answers the experiment's questions:
steered greedy generation, support rollouts, the activation statistics of the baselines, the control
vector, the path baseline and the component cards. ``ipg run`` without Ray calls it on the model it
loaded; on Ray the driver loads no weights and the same methods run in the actors that hold them
(``driver.orchestration.model_access``), so both runs compute the same numbers with the same code.

Every argument and result is plain data (token ids, numpy arrays, tensors, dataclasses of them), so it
can travel through Ray's object store.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from ipg.attribution import AttributionConfig, Rollout, prepare_examples, sample_rollouts, site_baselines
from ipg.baselines import activation_scores, contrast_scores, control_vector
from ipg.cards import position_terms, top_contexts
from ipg.components import ComponentId, Site, check_site
from ipg.errors import InputError
from ipg.generation import Sample, SamplingParams, generate
from ipg.interventions import DEFAULT as DEFAULT_INTERVENTION
from ipg.models import model_fingerprint
from ipg.packing import Job, generate_packed
from ipg.signals import make_signal
from ipg.steering import add_vector, scale

Sequence = tuple[list[int], int]  # (prompt + completion token ids, prompt length)


def steering_context(model, steering: dict | None, saes: dict | None = None, engine=None):
    """A context that applies ``steering`` (None, {"scale": components, "gamma", "positions"} or {"add":
    layer, "vector", "coefficient", "positions"}) to a torch model, or to ``engine`` (a vLLM engine with the
    same ``scale`` and ``add``) when one is given."""
    if not steering:
        return nullcontext()
    if "scale" in steering:
        comps = [ComponentId.parse(c) if isinstance(c, str) else c for c in steering["scale"]]
        how = {"intervention": steering.get("intervention", DEFAULT_INTERVENTION), "centre": steering.get("centre")}
        if engine is not None:
            if how["intervention"] != DEFAULT_INTERVENTION:
                raise InputError(
                    f"intervention: '{how['intervention']}' runs in vLLM only with packed evaluation; set "
                    "evaluation.pack_tokens above 0 (the default) or ray.rollout_backend: hf"
                )
            return engine.scale(comps, steering["gamma"], steering["positions"], saes)
        return scale(model, comps, steering["gamma"], positions=steering["positions"], saes=saes, **how)
    if engine is not None:
        return engine.add(steering["add"], steering["vector"], steering["coefficient"], steering["positions"])
    return add_vector(
        model, steering["add"], steering["vector"], steering["coefficient"], positions=steering["positions"]
    )


def with_positions(steering: dict | None, positions: str) -> dict | None:
    return {**steering, "positions": positions} if steering else None


class WeightOps:
    """The computations on the weights that need no sampling: the model's description, activation statistics,
    the control vector, the path baseline, the component cards. Mixed into whatever holds ``model``,
    ``tokenizer`` and ``saes``: ``ModelOps``, the experiment's in-process model, and a gradient actor."""

    model: Any
    tokenizer: Any
    saes: dict

    def describe(self, sites: list[Site]) -> dict:
        """The model's fingerprint and the width of each site; a bad layer index or kind raises InputError."""
        return {
            "model": model_fingerprint(self.model),
            "widths": {str(s): check_site(self.model, s, self.saes) for s in sites},
        }

    def activation_scores(self, sequences: list[Sequence], site: Site) -> np.ndarray:
        return activation_scores(self.model, sequences, site, self.saes)

    def contrast_scores(self, sequences: list[Sequence], site: Site, words: tuple[str, ...]) -> np.ndarray:
        return contrast_scores(self.model, self.tokenizer, sequences, site, words, self.saes)

    def control_vector(self, cots: list[list[int]], layer: int, seed: int) -> tuple[torch.Tensor, float]:
        return control_vector(self.model, self.tokenizer, cots, layer, seed)

    def site_baseline(self, rollouts: list[Rollout], site: Site, cfg: AttributionConfig) -> torch.Tensor:
        """The path's baseline at ``site`` (zeros, or the mean activation over the rollouts)."""
        return site_baselines(self.model, rollouts, [site], cfg, self.saes)[site]

    def cards(
        self,
        site: Site,
        sequences: list[Sequence],
        components: list[int],
        k: int,
        rollouts: list[Rollout],
        cfg: AttributionConfig,
        baseline: torch.Tensor,
    ) -> tuple[dict, list[dict]]:
        """Top-activating contexts of ``components``, and their per-position score terms on ``rollouts``
        along the run's path."""
        contexts = top_contexts(self.model, self.tokenizer, site, sequences, components, k=k, saes=self.saes)
        terms = position_terms(self.model, self.tokenizer, rollouts, site, components, cfg, baseline, saes=self.saes)
        return contexts, terms


class ModelOps(WeightOps):
    """``WeightOps`` and generation: steered greedy generation, packed evaluations, support rollouts."""

    def __init__(self, model, tokenizer, saes: dict | None = None):
        self.model, self.tokenizer, self.saes = model, tokenizer, saes or {}

    def generate(
        self,
        examples: list[dict],
        params: SamplingParams,
        steering: dict | None = None,
        batch_size: int = 64,
        agree=None,
    ) -> list[list[Sample]]:
        with steering_context(self.model, steering, self.saes):
            return generate(self.model, self.tokenizer, examples, params, batch_size=batch_size, agree=agree)

    def generate_many(
        self,
        jobs: list[Job],
        params: SamplingParams,
        positions: str,
        batch_size: int,
        pack_tokens: int,
        agree=None,
        log=None,
        done=None,
    ) -> list[list[list[Sample]]]:
        """Every evaluation's samples: packed into shared batches under ``pack_tokens`` (``ipg.packing``), or
        with ``pack_tokens`` 0 one pass per evaluation. ``done(k, samples)``: told as each one completes."""
        if pack_tokens > 0:
            return generate_packed(
                self.model,
                self.tokenizer,
                jobs,
                params,
                batch_size=batch_size,
                pack_tokens=pack_tokens,
                positions=positions,
                saes=self.saes,
                agree=agree,
                log=log,
                done=done,
            )
        out = []
        for k, job in enumerate(jobs):
            out.append(self.generate(job.examples, params, with_positions(job.steering, positions), batch_size, agree))
            if done is not None:
                done(k, out[-1])
        return out

    def rollouts(self, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict) -> list[Rollout]:
        """The support rollouts of an attribution (sampling is seeded per example and sample: the
        trajectories the attribution scored)."""
        return sample_rollouts(
            self.model,
            self.tokenizer,
            prepare_examples(examples),
            make_signal(signal, **signal_params),
            cfg,
            saes=self.saes,
            skipped={},
        )
