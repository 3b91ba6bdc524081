"""Massive-activation coordinates: residual coordinates whose typical magnitude dwarfs the layer's.

Real models carry a few residual-stream coordinates with activations far above the rest (Sun et al. 2024,
"Massive activations in large language models"). Scaling one of them either way can wreck every output,
so a selection that holds one "suppresses" accuracy whatever it means. A zero baseline also weights each
IPG score by h, which pushes these coordinates to the top.

Rule, fixed in advance: a coordinate is massive when its mean |activation| over the support trajectories'
decision positions is at least ``RATIO`` = 10 times the layer's median coordinate, an order of magnitude.
Sun et al. use 1000x the median for single activations. A mean over tokens is far smoother, so one
order of magnitude is the analogue kept here.

On SmolLM2-135M-Instruct (16 arithmetic prompts, greedy) this flags 2 coordinates at layers 20 and 22 of
30 (507 and 247: 174 and 116 against a median of 6.4 at layer 22) and 2 at layer 26. A robust z-score on
log magnitudes (the Iglewicz-Hoaglin cut of 3.5) flagged 20-30 coordinates per layer, some only twice
the median, so that rule was not used. The ratio of every selected coordinate is reported beside the
flag, so a reader can apply another cut.
"""

from __future__ import annotations

import numpy as np

RATIO = 10.0


def median_ratio(mean_abs: np.ndarray) -> np.ndarray:
    """Each coordinate's mean |activation| over the layer's median one."""
    m = np.asarray(mean_abs, dtype=float)
    med = float(np.median(m))
    return m / med if med > 0 else np.zeros_like(m)


def massive_components(mean_abs: np.ndarray, ratio: float = RATIO) -> list[int]:
    """Indices of massive coordinates, largest first."""
    r = median_ratio(mean_abs)
    idx = np.flatnonzero(r >= ratio)
    return [int(i) for i in idx[np.argsort(-r[idx])]]
