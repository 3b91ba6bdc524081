"""Confidence intervals for steering evaluations: bootstrap over eval prompts and seeds.

An evaluation outcome is a matrix ``y[s, i]``: seed (or random draw) ``s``, eval prompt ``i`` (1 or 0 for
correct, a length, ...). The quantity reported is its mean. Two sources of variation matter: which
prompts were evaluated, and which seed chose the components (support sample, sampling, random draw).

- One seed per arm: the prompts are the only resampled unit, and the interval is scipy's bootstrap (BCa)
  over prompts; a difference of two arms on the same prompts is paired (``paired=True``).
- Several seeds: a two-way bootstrap of the crossed design (seeds x prompts; Owen 2007, "The pigeonhole
  bootstrap"). Each replicate resamples prompts once, shared by both arms of a difference (the pairing),
  and each arm's seeds on their own; the interval is the percentile interval of the replicates.

Replicates are drawn from a fixed seed, so a report rebuilt from the same files shows the same intervals.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 4000
SEED = 20260202  # fixed: intervals are a function of the data alone


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n_prompts: int
    n_seeds: int  # the smaller arm's, for a difference

    def excludes(self, value: float = 0.0) -> bool:
        return self.low > value or self.high < value

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """``12.3 [8.1, 16.0]``; percentage points by default."""
        k = scale
        return f"{k * self.estimate:.{digits}f} [{k * self.low:.{digits}f}, {k * self.high:.{digits}f}]"

    def as_dict(self) -> dict:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "n_prompts": self.n_prompts,
            "n_seeds": self.n_seeds,
        }


def _matrix(y) -> np.ndarray:
    m = np.asarray(y, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] == 0 or m.shape[0] == 0:
        raise ValueError(f"outcomes: expected a (seeds, prompts) matrix with at least one prompt, got shape {m.shape}")
    return m


def _scipy_interval(stat, samples: tuple[np.ndarray, ...], paired: bool) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if all(np.ptp(s) == 0 for s in samples):  # no spread at all: the interval is the point
        v = float(stat(*samples))
        return v, v

    def run(method: str) -> tuple[float, float]:
        res = bootstrap(samples, stat, paired=paired, vectorized=False, confidence_level=CONFIDENCE,
                        n_resamples=RESAMPLES, method=method, random_state=np.random.default_rng(SEED))  # fmt: skip
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    with warnings.catch_warnings():  # BCa undefined on nearly degenerate data warns; handled below
        warnings.simplefilter("ignore")
        low, high = run("BCa")
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined (nearly degenerate): percentile
        low, high = run("percentile")
    return low, high


def _two_way(arms: list[np.ndarray], weights: list[float]) -> tuple[float, float]:
    """Percentile interval of sum_k weight_k * mean(arm_k) with prompts resampled jointly and seeds per arm.
    A replicate is drawn as resampling counts (multinomial), so its mean is c_seeds^T arm c_prompts / (S n)."""
    rng = np.random.default_rng(SEED)
    n = arms[0].shape[1]
    prompts = rng.multinomial(n, np.full(n, 1.0 / n), size=RESAMPLES)  # (B, n) counts, shared by the arms
    reps = np.zeros(RESAMPLES)
    for arm, w in zip(arms, weights):
        S = arm.shape[0]
        seeds = rng.multinomial(S, np.full(S, 1.0 / S), size=RESAMPLES)  # (B, S)
        reps += w * np.einsum("bs,sn,bn->b", seeds, arm, prompts) / (S * n)
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(reps, alpha)), float(np.quantile(reps, 1 - alpha))


def mean_interval(y) -> Interval:
    """The mean of ``y[s, i]`` with its interval."""
    m = _matrix(y)
    est = float(m.mean())
    if m.shape[0] == 1:
        low, high = _scipy_interval(np.mean, (m[0],), paired=False)
    else:
        low, high = _two_way([m], [1.0])
    return Interval(est, low, high, m.shape[1], m.shape[0])


def difference_interval(a, b) -> Interval:
    """mean(a) - mean(b) for two arms evaluated on the same prompts (columns in the same order)."""
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(
            f"outcomes: the arms were evaluated on {ma.shape[1]} and {mb.shape[1]} prompts; a paired "
            "difference needs the same prompts"
        )
    est = float(ma.mean() - mb.mean())
    if ma.shape[0] == 1 and mb.shape[0] == 1:
        low, high = _scipy_interval(lambda x, y: np.mean(x) - np.mean(y), (ma[0], mb[0]), paired=True)
    else:
        low, high = _two_way([ma, mb], [1.0, -1.0])
    return Interval(est, low, high, ma.shape[1], min(ma.shape[0], mb.shape[0]))
