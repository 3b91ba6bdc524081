"""Where an experiment's model lives: in this process, or in the Ray actors (the driver then holds none).

Both give the experiment the same methods: generation under steering (``generate``, ``generate_many``),
support rollouts, and ``workers.model_ops.WeightOps``' computations on the weights (the model's description,
activation statistics, control vectors, path baselines, component cards). In process they run on the model
loaded here. On Ray, generation and rollouts are split across the samplers (``RaySession``), and the rest runs
in the first gradient group (``GradientWorker`` is a ``WeightOps``); the driver loads the tokenizer and nothing
else, so a model that no single process can hold still runs.
"""

from __future__ import annotations

import numpy as np
import torch

from ipg.attribution import AttributionConfig, Rollout
from ipg.components import Site
from ipg.generation import Sample, SamplingParams
from ipg.workers.model_ops import ModelOps, Sequence, WeightOps


class LocalModel(WeightOps):
    """The model, its tokenizer and SAEs loaded in this process."""

    def __init__(self, model, tokenizer, saes: dict, batch_size: int, log=print):
        self.model, self.tokenizer, self.saes = model, tokenizer, saes
        self.ops, self.batch_size, self.log = ModelOps(model, tokenizer, saes), batch_size, log

    def generate(
        self, examples: list[dict], params: SamplingParams, steering: dict | None = None
    ) -> list[list[Sample]]:
        return self.ops.generate(examples, params, steering, self.batch_size)

    def generate_many(self, jobs: list, params: SamplingParams, positions: str, pack_tokens: int, done=None):
        return self.ops.generate_many(jobs, params, positions, self.batch_size, pack_tokens, log=self.log, done=done)

    def rollouts(self, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict) -> list[Rollout]:
        return self.ops.rollouts(examples, cfg, signal, signal_params)


class RayModel:
    """The same methods, computed in a Ray session's actors: each ``WeightOps`` method is called by name on the
    first gradient group's actors (``RaySession.on_weights``), its first rank's answer returned."""

    def __init__(self, session, batch_size: int):
        self.session, self.batch_size = session, batch_size

    def generate(
        self, examples: list[dict], params: SamplingParams, steering: dict | None = None
    ) -> list[list[Sample]]:
        return self.session.steered_generate(examples, params, steering)

    def generate_many(self, jobs: list, params: SamplingParams, positions: str, pack_tokens: int, done=None):
        out = self.session.steered_generate_many(jobs, params, positions, self.batch_size, pack_tokens)
        for k, samples in enumerate(out):
            if done is not None:
                done(k, samples)
        return out

    def rollouts(self, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict) -> list[Rollout]:
        return self.session.rollouts(examples, cfg, signal, signal_params)

    def describe(self, sites: list[Site]) -> dict:
        return self.session.on_weights(lambda actor: actor.describe.remote(sites), "describe")

    def activation_scores(self, sequences: list[Sequence], site: Site) -> np.ndarray:
        return self.session.on_weights(
            lambda actor: actor.activation_scores.remote(sequences, site), "activation scores"
        )

    def contrast_scores(self, sequences: list[Sequence], site: Site, words: tuple[str, ...]) -> np.ndarray:
        call = lambda actor: actor.contrast_scores.remote(sequences, site, words)  # noqa: E731
        return self.session.on_weights(call, "contrast scores")

    def control_vector(self, cots: list[list[int]], layer: int, seed: int) -> tuple[torch.Tensor, float]:
        return self.session.on_weights(lambda actor: actor.control_vector.remote(cots, layer, seed), "control vector")

    def site_baseline(self, rollouts: list[Rollout], site: Site, cfg: AttributionConfig) -> torch.Tensor:
        return self.session.on_weights(lambda actor: actor.site_baseline.remote(rollouts, site, cfg), "path baseline")

    def cards(self, site: Site, sequences: list[Sequence], components: list[int], k: int, rollouts: list[Rollout],
              cfg: AttributionConfig, baseline: torch.Tensor) -> tuple[dict, list[dict]]:  # fmt: skip
        return self.session.on_weights(
            lambda actor: actor.cards.remote(site, sequences, components, k, rollouts, cfg, baseline), "component cards"
        )
