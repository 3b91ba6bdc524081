"""GradientWorker: the partial IPG score table of a shard, computed with ipg.attribution.shard_scores.

Backend ``torch``; the DeepSpeed ZeRO-3 backend comes behind the same method. Returns the partial in its
lossless Arrow form (float64 sums, counts), which is what travels to the reducer.
"""

from __future__ import annotations

import pyarrow as pa
import torch

from ipg.attribution import AttributionConfig, Rollout, shard_scores
from ipg.components import Site, check_site
from ipg.models import load_model
from ipg.sae import TopKSAE
from ipg.scores import partial_to_arrow
from ipg.signals import make_signal


class GradientWorker:
    def __init__(self, model: str = "organism", *, dtype: str = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, saes: dict[int, str] | None = None, backend: str = "torch",
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)  # one actor per core: no oversubscription
        if backend != "torch":
            raise NotImplementedError(f"gradient backend '{backend}' is not available yet; use 'torch'")
        self.model, self.tokenizer = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        self.saes = {layer: TopKSAE.load(path) for layer, path in (saes or {}).items()}

    def attribute(self, shard_id: str, rollouts: list[Rollout], cfg: AttributionConfig, signal: str,
                  baselines: dict[Site, torch.Tensor] | None = None, signal_params: dict | None = None) -> pa.Table:
        """The shard's partial table; ``baselines`` None means the zero baseline (needs no global pass)."""
        sig = make_signal(signal, **(signal_params or {}))
        sites = [Site(layer, cfg.kind) for layer in cfg.layers]
        if baselines is None:
            baselines = {s: torch.zeros(check_site(self.model, s, self.saes)) for s in sites}
        partial, _, _ = shard_scores(self.model, self.tokenizer, rollouts, sig, cfg, sites, baselines, self.saes)
        return partial_to_arrow(partial)
