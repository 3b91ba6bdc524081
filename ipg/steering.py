"""Control: scale selected components by gamma, or add a vector, on every forward pass of generation.

    with ipg.steering.scale(model, components, gamma=0.0):    # ablate
        samples = generate(model, tokenizer, examples)

gamma > 1 enhances, gamma < 1 suppresses, gamma = 0 ablates. SAE features are scaled in feature space and
written back with the SAE's error term kept (see components.edit).

Positions: ``"generated"`` (default) edits the decision positions, the states that predict generated
tokens, which are exactly the positions the components were attributed at; ``"all"`` also edits every
prompt position. The default keeps the prompt's own representation intact, so a steering effect is the
effect on reasoning, not on reading the question.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack, contextmanager

import torch

from ipg.components import ComponentId, Site, edit
from ipg.errors import InputError


def _by_site(components: list[ComponentId]) -> dict[Site, list[int]]:
    sites: dict[Site, list[int]] = defaultdict(list)
    for c in components:
        sites[c.site].append(c.index)
    return sites


@contextmanager
def scale(model, components: list[ComponentId], gamma: float, *, positions: str = "generated", saes: dict | None = None):
    """Multiply each selected component by ``gamma`` while the body runs (all hooks removed on exit)."""
    if not components:
        raise InputError("steering: no components selected; pass at least one ComponentId")
    if not gamma >= 0:
        raise InputError(f"steering.gamma: must be >= 0, got {gamma}")
    with ExitStack() as stack:
        for site, indices in _by_site(components).items():
            idx = torch.tensor(sorted(set(indices)))

            def fn(h, idx=idx):  # h: (B, T_sel, width)
                idx_d = idx.to(h.device)
                out = h.clone()
                out[..., idx_d] = h[..., idx_d] * gamma
                return out

            stack.enter_context(edit(model, site, fn, positions=positions, saes=saes))
        yield


@contextmanager
def add_vector(model, layer: int, vector: torch.Tensor, coefficient: float, *, positions: str = "generated"):
    """Add ``coefficient * vector`` (hidden,) to block ``layer``'s output while the body runs."""
    v = vector.detach()

    def fn(h):  # (B, T_sel, hidden)
        return h + coefficient * v.to(h.device, h.dtype)

    with edit(model, Site(layer, "residual"), fn, positions=positions):
        yield
