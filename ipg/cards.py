"""Component cards: what a selected component responds to, and where in the reasoning its score lands.

A card has two parts, both read from the support trajectories:

- **Top-activating contexts.** The decision positions where the component's activation is largest, each
  shown with a few tokens either side.
- **Where the contribution lands.** The score of component i is a sum over positions t of
  (h_{t,i} - h'_{t,i}) times the path-averaged gradient. Cards keep these per-position terms before the
  sum, for a few prompts. They are grouped by the line of the chain of thought that the position's token
  belongs to, and by relative position in the trace (fifths of the completion).

Component-level tools show what a unit responds to, and sentence-level tools show which step matters.
A card joins the two for one component.

The terms follow the run's own method and path: the schedule's alpha points with their weights (one
point at alpha = 1 for PG), the run's baseline, advantages from each prompt's group, and the factor 1/N.
Summed over positions they give that prompt's score for the component.
"""

from __future__ import annotations

import numpy as np
import torch

from ipg.attribution import AttributionConfig, Rollout, _positions_mask, from_site, policy_logprobs
from ipg.components import Site, capture_sites, site_activations


def top_contexts(model, tokenizer, site: Site, sequences: list[tuple[list[int], int]], components: list[int], *,
                 k: int = 3, window: int = 6, saes: dict | None = None) -> dict[int, list[dict]]:
    """Per component, the ``k`` decision positions with the largest activation: the text before, the
    token, the text after, and the value."""
    best: dict[int, list[tuple[float, int, int]]] = {c: [] for c in components}
    for n, (ids, prompt_len, h) in enumerate(site_activations(model, site, sequences, saes=saes)):
        for c in components:
            values = h[prompt_len - 1 : len(ids) - 1, c]
            for j in torch.topk(values, min(4 * k, len(values))).indices.tolist():  # spare ones for duplicates
                best[c].append((float(values[j]), n, prompt_len - 1 + j))
    out = {}
    for c, found in best.items():
        rows, seen = [], set()
        for value, n, t in sorted(found, reverse=True):
            ids = sequences[n][0]
            row = {"before": tokenizer.decode(ids[max(0, t - window) : t]), "token": tokenizer.decode(ids[t : t + 1]),
                   "after": tokenizer.decode(ids[t + 1 : t + 1 + window]), "value": value}
            key = (row["before"], row["token"], row["after"])
            if key not in seen:  # samples of one prompt often share a context: show distinct ones
                seen.add(key)
                rows.append(row)
            if len(rows) == k:
                break
        out[c] = rows
    return out


def _lines_of(tokenizer, completion_ids: list[int]) -> list[int]:
    """The line (0-based, by newlines in the decoded tokens) each completion token belongs to."""
    lines, line = [], 0
    for tok in completion_ids:
        lines.append(line)
        line += tokenizer.decode([tok]).count("\n")
    return lines


def position_terms(model, tokenizer, rollouts: list[Rollout], site: Site, components: list[int], cfg: AttributionConfig,
                   baseline: torch.Tensor, *, saes: dict | None = None) -> list[dict]:
    """Per-position score terms of ``components`` on the rollouts' trajectories (zero-advantage ones add
    nothing and are left out): one record per (component, trajectory, generated token)."""
    sae = (saes or {}).get(site.layer) if site.kind == "sae" else None
    device = next(model.parameters()).device
    alphas = cfg.alphas
    out = []
    for r in rollouts:
        for s, adv in zip(r.samples, r.advantages):
            if adv == 0.0 or not s.completion_ids:
                continue
            ids_list = s.prompt_ids + s.completion_ids
            T, L = len(ids_list), len(s.prompt_ids)
            acts = {key: v[0] for key, v in capture_sites(model, [site], [ids_list], saes)[site].items()}
            h = acts["h"]
            b = baseline.to(device=h.device, dtype=h.dtype)
            R = len(alphas)
            alpha = torch.tensor([a for a, _ in alphas], device=device, dtype=h.dtype)[:, None, None]
            on_path = _positions_mask(L, T, T, cfg.positions).to(device)
            hR = h[None].expand(R, *h.shape)
            leaf = (b + alpha * (hR - b)).detach().requires_grad_(True)
            x = torch.where(on_path[None, :, None], leaf, hR)

            def padded(key, R=R):
                return acts[key][None].expand(R, *acts[key].shape) if key in acts else None

            ids = torch.tensor([ids_list] * R, device=device)
            targets = _positions_mask(L, T, T, "generated").to(device)[None].expand(R, T)
            weights = torch.tensor([w for _, w in alphas], device=device, dtype=torch.float32)
            with torch.enable_grad(), from_site(model, site, sae, x, hR, padded, cfg):
                logp = policy_logprobs(model, ids, targets, cfg)
                (adv * logp.float()).sum().backward()
            g = (leaf.grad.float() * weights[:, None, None]).sum(0)  # (T, width): the schedule's weighted sum
            terms = ((h.float() - b.float()) * g)[:, components] * on_path[:, None] / len(r.samples)  # (T, k)
            lines = _lines_of(tokenizer, s.completion_ids)
            n_gen = len(s.completion_ids)
            for t in range(L - 1, T - 1):  # decision position t predicts completion token t + 1 - L
                step = t + 1 - L
                for j, c in enumerate(components):
                    out.append({"component": c, "example_id": str(r.example["id"]), "sample": s.sample_index,
                                "step": step, "line": lines[step], "fifth": min(4, 5 * step // n_gen),
                                "term": float(terms[t, j])})
    return out
