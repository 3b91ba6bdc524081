"""The shared prompt prefix of the gradient pass.

With positions 'generated' the path starts at the last prompt token (L-1), so positions 0..L-2 hold
the same activations in every block for every alpha and every sample of a prompt (causal attention:
they never see the path). Their keys/values are computed once per prompt by one no-grad forward; each
(trajectory, alpha) row's forward/backward then runs positions L-1.. only. Transformers is imported
here, not by ``ipg.attribution``'s importers that never run a gradient pass.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class PrefixLayer(DynamicLayer):
    """One block's keys/values of the rows' prompt prefixes, (R or 1, heads, P, head_dim). ``update``
    returns them with the new states appended and stores nothing, so the cache can serve any number
    of forwards (a checkpointed block's recomputation included)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        k = self.keys.to(key_states.dtype).expand(key_states.shape[0], -1, -1, -1)
        v = self.values.to(value_states.dtype).expand(value_states.shape[0], -1, -1, -1)
        return torch.cat([k, key_states], dim=-2), torch.cat([v, value_states], dim=-2)


def plain_attention(model) -> bool:
    """Whether every block of the model caches plain full-attention keys/values (no sliding window,
    no linear attention): the case a stored prefix is exact for."""
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # a config the cache cannot read: do not share
        return False
    return len(layers) > 0 and all(type(layer) is DynamicLayer for layer in layers)


class SharedPrefixes:
    """Prefix keys/values per prompt, computed on first use. ``enabled`` False (positions 'all', ZeRO-3
    ranks whose forwards must match call for call, or a model that is not ``plain_attention``): every
    row runs its whole sequence (``length`` is 0)."""

    def __init__(self, model, enabled: bool):
        self.model = model
        self.enabled = enabled and plain_attention(model)
        self.store: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def length(self, traj) -> int:
        """Positions of ``traj`` (ids, prompt_len) before its first path position that are shared."""
        return traj.prompt_len - 1 if self.enabled else 0

    def _states(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if prefix not in self.store:
            device = next(self.model.parameters()).device
            with torch.no_grad():  # in the model's dtype even under autocast: the captured activations are, too
                cache = self.model.model(
                    input_ids=torch.tensor([prefix], device=device), use_cache=True
                ).past_key_values
            self.store[prefix] = [(layer.keys, layer.values) for layer in cache.layers]
        return self.store[prefix]

    def cache(self, trajs: list) -> Cache | None:
        """A cache holding each row's prompt prefix (rows of one prefix length), or None (length 0)."""
        n = self.length(trajs[0])
        if n == 0:
            return None
        prefixes = [tuple(t.ids[:n]) for t in trajs]
        if len(set(prefixes)) == 1:  # one prompt: its states broadcast over the rows
            layers = self._states(prefixes[0])
        else:
            per_row = [self._states(p) for p in prefixes]
            layers = [
                (torch.cat([r[i][0] for r in per_row]), torch.cat([r[i][1] for r in per_row]))
                for i in range(len(per_row[0]))
            ]
        return Cache(layers=[PrefixLayer(k, v) for k, v in layers])
