"""The per-component path: component i alone moves from its baseline to its value, the others stay.

IPG integrates along the whole-vector path, where every component of the site scales together,
h(alpha) = h' + alpha (h - h'). Residual sites are read through RMSNorm, which is scale invariant. So
with a zero baseline the surrogate jumps right after alpha = 0, and the smallest-alpha term of the
Riemann sum dominates the score.

The per-component path moves only coordinate i:

    h^(i)(beta) = h with h_i replaced by h'_i + beta (h_i - h'_i), at every path position.

The objective is the same surrogate IPG differentiates: f(h) = (1/N) sum_n A_n log pi(tau_n | h), with
the trajectories sampled once from the unmodified model. Integrated along this path, the gradient gives,
exactly by the fundamental theorem of calculus,

    CP_i = (h_i - h'_i) int_0^1 df/dh_i(h^(i)(beta)) dbeta = f(h) - f(h with h_i := h'_i).

This is the effect on the surrogate of setting component i alone to its baseline. No quadrature is
needed: it takes one teacher-forced forward pass per (trajectory, component) and no backward pass.

Plain PG, the gradient times (h - h') at beta = 1, is its first-order term. Expanding f around beta = 1
gives CP_i = PG_i - 1/2 f''(1) + ..., and [f(1) - f(1 - eps)] / eps -> PG_i as eps -> 0. PG is the
linear ("attribution patching") estimate of the same single-component ablation. The two differ where f
curves along the coordinate's own axis. That happens most for coordinates that dominate the RMSNorm's
scale, the massive activations. Both share the whole-vector path's endpoint at beta = 1, but not its
singularity near 0.

Relation to the expected reward: J(h) - J(h_i := h'_i) = E_pi[(R - b)(1 - rho)] exactly (importance
weights rho = pi_ablated / pi on the same trajectories), while CP_i uses log(1/rho) for (1 - rho). The
two agree to first order in the log-ratio, as the policy-gradient surrogate does.

Cost: k candidates x N trajectories forward passes from the site up, so scores are computed for the top-k
candidates of a cheaper score (PG), not for every component. As a method (``attribute(method=
"component")``) it is two passes: PG over all the prompts, whose top ``candidates`` per site are then
re-scored prompt by prompt; its score table holds the candidates' rows only.
"""

from __future__ import annotations

import numpy as np
import torch

from ipg.attribution_config import AttributionConfig
from ipg.components import Site, head_groups
from ipg.gradient_pass import TrajectoryAtSite
from ipg.rollouts import Rollout
from ipg.scores import PartialScores, select


def component_candidates(pg_table, sites: list[Site], k: int) -> dict[Site, list[int]]:
    """Each site's top ``k`` components by PG score (all of them when the site has fewer)."""
    out = {}
    for site in sites:
        n = sum(
            1
            for layer, kind in zip(pg_table.column("layer").to_pylist(), pg_table.column("kind").to_pylist())
            if layer == site.layer and kind == site.kind
        )
        out[site] = [c.index for c in select(pg_table, min(k, n), layer=site.layer, kind=site.kind)]
    return out


def component_partial(
    model,
    rollouts: list[Rollout],
    sites: list[Site],
    candidates: dict[Site, list[int]],
    cfg: AttributionConfig,
    baselines: dict[Site, torch.Tensor],
    saes: dict | None = None,
) -> PartialScores:
    """The per-prompt component-path scores of each site's candidates, as mergeable partial sums."""
    partial = PartialScores()
    for site in sites:
        per_prompt = component_path_scores(model, rollouts, site, candidates[site], cfg, baselines[site], saes)
        for p, r in enumerate(rollouts):
            partial.add_prompt(site, per_prompt[p], len(r.samples), indices=candidates[site])
    return partial


def component_path_scores(
    model,
    rollouts: list[Rollout],
    site: Site,
    candidates: list[int],
    cfg: AttributionConfig,
    baseline: torch.Tensor,
    saes: dict | None = None,
) -> np.ndarray:
    """(n_prompts, len(candidates)): CP_i per prompt, the mean over its samples of A_n times the drop in
    log pi(tau_n) when candidate i alone is set to its baseline at the path positions."""
    return group_path_scores(model, rollouts, site, [[c] for c in candidates], cfg, baseline, saes)


def head_scores(
    model, rollouts: list[Rollout], layer: int, cfg: AttributionConfig, baseline: torch.Tensor
) -> np.ndarray:
    """(n_prompts, n_heads): the per-component path of whole attention heads, each head's coordinates of
    the ``attn`` site set to their baseline together (a head is the unit attention computes)."""
    return group_path_scores(model, rollouts, Site(layer, "attn"), head_groups(model, layer), cfg, baseline)


def group_path_scores(
    model,
    rollouts: list[Rollout],
    site: Site,
    groups: list[list[int]],
    cfg: AttributionConfig,
    baseline: torch.Tensor,
    saes: dict | None = None,
) -> np.ndarray:
    """(n_prompts, len(groups)): as ``component_path_scores``, with group g's components set to their
    baselines together: f(h) - f(h with the group := h'), the group's joint ablation on the surrogate."""
    out = np.zeros((len(rollouts), len(groups)), dtype=np.float64)
    if not groups:
        return out
    budget = cfg.budget(next(model.parameters()).device)
    for p, r in enumerate(rollouts):
        for s, adv in zip(r.samples, r.advantages):
            if adv == 0.0:
                continue  # zero advantage: no contribution
            traj = TrajectoryAtSite.capture(model, site, s, cfg, saes)
            h, T = traj.h, len(traj.ids)
            on_path = traj.on_path.nonzero().squeeze(1)
            b = baseline.to(device=h.device, dtype=h.dtype)
            per_row = max(2, budget // max(T, 1))  # rows per forward: the unedited one and candidates
            base_logp = None
            for start in range(0, len(groups), per_row - 1):
                chunk = groups[start : start + per_row - 1]
                x = h[None].expand(len(chunk) + 1, *h.shape).clone()
                for j, group in enumerate(chunk):
                    idx = torch.tensor(group, device=h.device)
                    x[j + 1, on_path[:, None], idx[None, :]] = b[idx]  # (path positions, group)
                with torch.no_grad(), traj.rows(model, site, x, cfg, saes) as rows:
                    logp = rows.double().cpu()
                base_logp = logp[0] if base_logp is None else base_logp
                out[p, start : start + len(chunk)] += adv * (base_logp - logp[1:]).numpy() / len(r.samples)
    return out
