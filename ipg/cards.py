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

import torch

from ipg.attribution import AttributionConfig, Rollout, TrajectoryAtSite
from ipg.components import Site, site_activations


def top_contexts(
    model,
    tokenizer,
    site: Site,
    sequences: list[tuple[list[int], int]],
    components: list[int],
    *,
    k: int = 3,
    window: int = 6,
    saes: dict | None = None,
) -> dict[int, list[dict]]:
    """Per component, the ``k`` decision positions with the largest activation: the text before, the
    token, the text after, the value, and ``tokens``: each token of that window with the component's
    activation at its position (``[text, value]``), the chosen one at index ``focus``."""
    best: dict[int, list[tuple[float, int, int, list[float]]]] = {c: [] for c in components}
    for n, (ids, prompt_len, h) in enumerate(site_activations(model, site, sequences, saes=saes)):
        for c in components:
            values = h[prompt_len - 1 : len(ids) - 1, c]
            for j in torch.topk(values, min(4 * k, len(values))).indices.tolist():  # spare ones for duplicates
                t = prompt_len - 1 + j
                best[c].append((float(values[j]), n, t, h[max(0, t - window) : t + 1 + window, c].tolist()))
    out = {}
    for c, found in best.items():
        rows, seen = [], set()
        for value, n, t, around in sorted(found, key=lambda f: f[:3], reverse=True):
            ids = sequences[n][0]
            start = max(0, t - window)
            row = {
                "before": tokenizer.decode(ids[start:t]),
                "token": tokenizer.decode(ids[t : t + 1]),
                "after": tokenizer.decode(ids[t + 1 : t + 1 + window]),
                "value": value,
                "tokens": [[tokenizer.decode([i]), v] for i, v in zip(ids[start : t + 1 + window], around)],
                "focus": t - start,
            }
            key = (row["before"], row["token"], row["after"])
            if key not in seen:  # samples of one prompt often share a context: show distinct ones
                seen.add(key)
                rows.append(row)
            if len(rows) == k:
                break
        out[c] = rows
    return out


def _lines_of(token_texts: list[str]) -> list[int]:
    """The line (0-based, by newlines in the decoded tokens) each completion token belongs to."""
    lines, line = [], 0
    for text in token_texts:
        lines.append(line)
        line += text.count("\n")
    return lines


def position_terms(
    model,
    tokenizer,
    rollouts: list[Rollout],
    site: Site,
    components: list[int],
    cfg: AttributionConfig,
    baseline: torch.Tensor,
    *,
    saes: dict | None = None,
) -> list[dict]:
    """Per-position score terms of ``components`` on the rollouts' trajectories (zero-advantage ones add
    nothing and are left out): one record per (component, trajectory, generated token)."""
    device = next(model.parameters()).device
    alphas = cfg.alphas
    weights = torch.tensor([w for _, w in alphas], device=device, dtype=torch.float32)
    out = []
    for r in rollouts:
        for s, adv in zip(r.samples, r.advantages):
            if adv == 0.0 or not s.completion_ids:
                continue
            traj = TrajectoryAtSite.capture(model, site, s, cfg, saes)
            h, T, L = traj.h, len(traj.ids), len(s.prompt_ids)
            b = baseline.to(device=h.device, dtype=h.dtype)
            alpha = torch.tensor([a for a, _ in alphas], device=device, dtype=h.dtype)[:, None, None]
            hR = h[None].expand(len(alphas), *h.shape)
            leaf = (b + alpha * (hR - b)).detach().requires_grad_(True)
            x = torch.where(traj.on_path[None, :, None], leaf, hR)
            with torch.enable_grad(), traj.rows(model, site, x, cfg, saes) as logp:
                (adv * logp.float()).sum().backward()
            g = (leaf.grad.float() * weights[:, None, None]).sum(0)  # (T, width): the schedule's weighted sum
            terms = ((h.float() - b.float()) * g)[:, components] * traj.on_path[:, None] / len(r.samples)  # (T, k)
            tokens = [
                tokenizer.decode([tok]) for tok in s.completion_ids
            ]  # the generated token each term's position chose
            lines = _lines_of(tokens)
            n_gen = len(s.completion_ids)
            for t in range(L - 1, T - 1):  # decision position t predicts completion token t + 1 - L
                step = t + 1 - L
                for j, c in enumerate(components):
                    out.append(
                        {
                            "component": c,
                            "example_id": str(r.example["id"]),
                            "sample": s.sample_index,
                            "step": step,
                            "line": lines[step],
                            "fifth": min(4, 5 * step // n_gen),
                            "term": float(terms[t, j]),
                            "token": tokens[step],
                        }
                    )
    return out
