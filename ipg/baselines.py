"""Baselines the paper compares IPG against, behind the same selection interface (p ComponentIds).

``random``          p components uniformly at random (seeded)
``activation``      top p by mean |activation| over the decision positions of the support trajectories
``concept_tokens``  components most active on reasoning concept tokens ('+', '='): mean activation on
                    those tokens minus the mean on the other generated tokens
``reason_score``    the same contrast for SAE features on reflection tokens ('wait', 'check') (SAE-R)
``control_vector``  not a selection: the first principal direction of residual differences between
                    correct chains of thought and random-character strings, added during generation
``pg``              plain policy gradient: ``attribute(method="pg")`` then top p (in the runner)
"""

from __future__ import annotations

import random as _random

import numpy as np
import torch

from ipg.components import ComponentId, Site, site_activations
from ipg.errors import InputError

Sequence = tuple[list[int], int]  # (token ids of prompt + completion, prompt length)


def top_components(scores: np.ndarray, site: Site, p: int) -> list[ComponentId]:
    """The p highest-scoring components of a site (ties by index)."""
    if not 0 < p <= len(scores):
        raise InputError(f"p: must be in 1..{len(scores)}, got {p}")
    order = np.lexsort((np.arange(len(scores)), -scores))  # highest first, ties by index
    return [ComponentId(site.layer, site.kind, int(i)) for i in order[:p]]


def random_components(width: int, site: Site, p: int, seed: int, draw: int = 0) -> list[ComponentId]:
    """``p`` of the site's ``width`` components drawn uniformly (``check_site`` gives the width); ``draw``
    numbers further independent draws for the same seed."""
    if not 0 < p <= width:
        raise InputError(f"p: must be in 1..{width}, got {p}")
    chosen = _random.Random(f"random-baseline/{site}/{seed}" + (f"/draw{draw}" if draw else "")).sample(range(width), p)
    return [ComponentId(site.layer, site.kind, i) for i in sorted(chosen)]


def activation_scores(model, sequences: list[Sequence], site: Site, saes: dict | None = None) -> np.ndarray:
    """Mean |activation| per component over decision positions (prompt_len-1 .. T-2)."""
    total, count = None, 0
    for ids, L, h in site_activations(model, site, sequences, saes=saes):
        part = h[L - 1 : len(ids) - 1].abs()
        total = part.sum(0) if total is None else total + part.sum(0)
        count += part.shape[0]
    return (total / max(count, 1)).numpy()


def _token_spans(tokenizer, ids: list[int], words: tuple[str, ...]) -> np.ndarray:
    """(T,) bool: positions whose token overlaps an occurrence of any of ``words`` in the decoded text."""
    pieces = [tokenizer.decode([i]) for i in ids]
    starts = np.cumsum([0] + [len(p) for p in pieces])
    text = "".join(pieces)
    mask = np.zeros(len(ids), dtype=bool)
    for w in words:
        begin = text.find(w)
        while begin != -1:
            end = begin + len(w)
            mask |= (starts[:-1] < end) & (starts[1:] > begin)
            begin = text.find(w, begin + 1)
    return mask


def contrast_scores(
    model, tokenizer, sequences: list[Sequence], site: Site, words: tuple[str, ...], saes: dict | None = None
) -> np.ndarray:
    """Per component: (mean activation on tokens of ``words``) - (mean on the other generated tokens).

    ``concept_tokens`` on residual/mlp sites with words like '+', '='; ``reason_score`` on SAE sites
    with reflection words."""
    on_sum = off_sum = None
    on_n = off_n = 0
    for ids, L, h in site_activations(model, site, sequences, saes=saes):
        mask = torch.from_numpy(_token_spans(tokenizer, ids, words))
        mask[:L] = False  # generated tokens only
        off = torch.zeros_like(mask)
        off[L:] = ~mask[L:]
        s_on, s_off = h[mask].sum(0), h[off].sum(0)
        on_sum = s_on if on_sum is None else on_sum + s_on
        off_sum = s_off if off_sum is None else off_sum + s_off
        on_n, off_n = on_n + int(mask.sum()), off_n + int(off.sum())
    if on_n == 0:
        raise InputError(f"baselines: none of the words {list(words)} occurs in the support trajectories")
    return (on_sum / on_n - off_sum / max(off_n, 1)).numpy()


def control_vector(model, tokenizer, cots: list[list[int]], layer: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """(unit vector (hidden,), separation) at block ``layer``; steer with ``(gamma - 1) * separation * v``.

    ``cots``: token ids of correct chains of thought, each its formatted prompt and completion (no EOS).
    For each one and a random-character string as long as its text, take the difference of their
    position-averaged residuals; the vector is the first right singular vector of the stacked
    differences, uncentred (centring would remove the consistent shift, which is the signal), signed so
    that the differences project positively on it. The separation is the mean projection of the
    differences: gamma = 2 moves a state by one chain-of-thought-vs-noise separation.
    """
    from ipg.prompts import leading_special_ids

    if not cots:
        raise InputError("control_vector: needs at least one correct chain of thought from the support set")
    rng = _random.Random(f"control-vector/{seed}")
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    site = Site(layer, "residual")
    lead = leading_special_ids(tokenizer)
    diffs = []
    for ids in cots:
        noise = "".join(rng.choice(alphabet) for _ in range(len(tokenizer.decode(ids, skip_special_tokens=True))))
        means = []
        for seq in (list(ids), lead + tokenizer(noise, add_special_tokens=False)["input_ids"]):
            _, _, h = next(site_activations(model, site, [(seq, 1)]))
            means.append(h.mean(0))
        diffs.append(means[0] - means[1])
    d = torch.stack(diffs)  # (n, hidden)
    v = torch.linalg.svd(d, full_matrices=False).Vh[0]
    if (d @ v).mean() < 0:
        v = -v
    return v, float((d @ v).mean())
