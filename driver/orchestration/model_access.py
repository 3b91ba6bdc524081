"""Where an experiment's model lives: in this process, or in the Ray actors (the driver then holds none).

Both give the experiment the same methods, those of ``workers.model_ops.ModelOps`` (generation under
steering, support rollouts, activation statistics, control vectors, path baselines, component cards, the
model's description). In process they run on the model loaded here. On Ray, generation and rollouts are split
across the samplers (``RaySession``), and the rest runs in the first gradient group (``GradientWorker``'s
methods of the same names); the driver loads the tokenizer and nothing else, so a model that no single
process can hold still runs.
"""

from __future__ import annotations

import numpy as np
import torch

from ipg.attribution import AttributionConfig, Rollout
from ipg.components import Site
from ipg.generation import Sample, SamplingParams
from ipg.workers.model_ops import ModelOps, Sequence


class LocalModel:
    """The model, its tokenizer and SAEs loaded in this process."""

    def __init__(self, model, tokenizer, saes: dict, batch_size: int, log=print):
        self.ops, self.batch_size, self.log = ModelOps(model, tokenizer, saes), batch_size, log

    def generate(self, examples: list[dict], params: SamplingParams, steering: dict | None = None) -> list[list[Sample]]:
        return self.ops.generate(examples, params, steering, self.batch_size)

    def generate_many(self, jobs: list, params: SamplingParams, positions: str, pack_tokens: int, done=None):
        return self.ops.generate_many(jobs, params, positions, self.batch_size, pack_tokens, log=self.log, done=done)

    def rollouts(self, examples: list[dict], cfg: AttributionConfig, signal: str, signal_params: dict) -> list[Rollout]:
        return self.ops.rollouts(examples, cfg, signal, signal_params)

    def describe(self, sites: list[Site]) -> dict:
        return self.ops.describe(sites)

    def activation_scores(self, sequences: list[Sequence], site: Site) -> np.ndarray:
        return self.ops.activation_scores(sequences, site)

    def contrast_scores(self, sequences: list[Sequence], site: Site, words: tuple[str, ...]) -> np.ndarray:
        return self.ops.contrast_scores(sequences, site, words)

    def control_vector(self, cots: list[list[int]], layer: int, seed: int) -> tuple[torch.Tensor, float]:
        return self.ops.control_vector(cots, layer, seed)

    def site_baseline(self, rollouts: list[Rollout], site: Site, cfg: AttributionConfig) -> torch.Tensor:
        return self.ops.site_baseline(rollouts, site, cfg)

    def cards(self, site: Site, sequences: list[Sequence], components: list[int], k: int, rollouts: list[Rollout],
              cfg: AttributionConfig, baseline: torch.Tensor) -> tuple[dict, list[dict]]:
        return self.ops.cards(site, sequences, components, k, rollouts, cfg, baseline)


class RayModel:
    """The same methods, computed in a Ray session's actors."""

    def __init__(self, session, batch_size: int):
        self.session, self.batch_size = session, batch_size

    def generate(self, examples: list[dict], params: SamplingParams, steering: dict | None = None) -> list[list[Sample]]:
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
        return self.session.on_weights(lambda a: a.describe.remote(sites), "describe")

    def activation_scores(self, sequences: list[Sequence], site: Site) -> np.ndarray:
        return self.session.on_weights(lambda a: a.activation_scores.remote(sequences, site), "activation_scores")

    def contrast_scores(self, sequences: list[Sequence], site: Site, words: tuple[str, ...]) -> np.ndarray:
        return self.session.on_weights(lambda a: a.contrast_scores.remote(sequences, site, words), "contrast_scores")

    def control_vector(self, cots: list[list[int]], layer: int, seed: int) -> tuple[torch.Tensor, float]:
        return self.session.on_weights(lambda a: a.control_vector.remote(cots, layer, seed), "control_vector")

    def site_baseline(self, rollouts: list[Rollout], site: Site, cfg: AttributionConfig) -> torch.Tensor:
        return self.session.on_weights(lambda a: a.site_baseline.remote(rollouts, site, cfg), "site_baseline")

    def cards(self, site: Site, sequences: list[Sequence], components: list[int], k: int, rollouts: list[Rollout],
              cfg: AttributionConfig, baseline: torch.Tensor) -> tuple[dict, list[dict]]:
        return self.session.on_weights(lambda a: a.cards.remote(site, sequences, components, k, rollouts, cfg, baseline), "cards")
