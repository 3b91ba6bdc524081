"""The naive IPG reference: the formula of docs/method.md, computed the plainest way.

One (trajectory, alpha) row at a time, each a full forward of the whole model with a hook that swaps
the site's activations on the path positions for a leaf ``h' + alpha (h - h')``, logits of every
position, and one backward. No captured prefix, no batching, no shared work between alphas, sites or
rows. It exists to pin the optimised gradient pass (``ipg.attribution.site_scores``) to the formula
in tests, and as the "before" of bench/attribution.py. Never use it for real runs: it costs roughly
q x the optimised pass on small models.
"""

from __future__ import annotations

import numpy as np
import torch

from ipg.components import PROJECTIONS, Site, check_site, decoder_layers, projection


def _on_path(prompt_len: int, total: int, positions: str) -> torch.Tensor:
    """The path positions, written out here rather than taken from the code under test."""
    mask = torch.zeros(total, dtype=torch.bool)
    if positions == "all":
        mask[:] = True
    else:
        mask[prompt_len - 1 : total - 1] = True
    return mask


def _hook(model, site: Site, saes, state: dict):
    """Install the swap on the site; ``state`` supplies alpha/baseline/mask and receives h and the leaf."""
    block = decoder_layers(model)[site.layer]

    def swapped(h):  # h: (1, T, width) detached activations of the site
        leaf = (state["b"] + state["alpha"] * (h - state["b"])).detach().requires_grad_(True)
        state["h"], state["leaf"] = h, leaf
        return torch.where(state["mask"][None, :, None], leaf, h)

    if site.kind in PROJECTIONS:
        return projection(model, site).register_forward_pre_hook(
            lambda m, args: (swapped(args[0].detach()),) + tuple(args[1:])
        )
    sae = saes[site.layer] if site.kind == "sae" else None

    def hook(module, args, output):
        z = output[0] if isinstance(output, tuple) else output
        if sae is None:
            new = swapped(z.detach())
        else:
            f = sae.encode(z.detach())
            new = z.detach() + sae.decode_delta(swapped(f) - f).to(z.dtype)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    return block.register_forward_hook(hook)


def reference_scores(
    model,
    rollouts_by_alpha: list[tuple[float, float, list]],
    site: Site,
    baseline: torch.Tensor,
    positions: str = "generated",
    policy_temperature: float = 1.0,
    saes: dict | None = None,
) -> np.ndarray:
    """Per-prompt IPG scores (n_prompts, width) of one site; ``rollouts_by_alpha`` as in
    ``ipg.attribution.rows_for``: ``[(alpha, weight, rollouts)]`` with the same prompts in each."""
    width = check_site(model, site, saes)
    device = next(model.parameters()).device
    n_prompts = len(rollouts_by_alpha[0][2])
    out = np.zeros((n_prompts, width), dtype=np.float64)
    state = {"b": baseline.to(device)}
    handle = _hook(model, site, saes, state)
    try:
        for alpha, weight, rollouts in rollouts_by_alpha:
            for p, r in enumerate(rollouts):
                for sample, adv in zip(r.samples, r.advantages):
                    ids = sample.prompt_ids + sample.completion_ids
                    lp = len(sample.prompt_ids)
                    state["alpha"], state["mask"] = alpha, _on_path(lp, len(ids), positions).to(device)
                    with torch.enable_grad():
                        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0]
                        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
                        logp = torch.log_softmax(logits / policy_temperature, dim=-1)
                        targets = torch.tensor(ids[lp:], device=device)
                        objective = adv * logp[lp - 1 : len(ids) - 1].gather(-1, targets[:, None]).sum()
                        objective.backward()
                    delta = (state["h"][0] - state["b"]) * state["mask"][:, None]
                    out[p] += weight / len(r.samples) * (delta * state["leaf"].grad[0]).sum(0).double().cpu().numpy()
    finally:
        handle.remove()
    return out
