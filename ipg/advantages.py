"""Per-group advantages: how much better each trajectory did than its siblings of the same prompt.

``grpo``  (r - mean r) / (std r + eps), sample std as in GRPO implementations (the paper's default)
``mean``  r - mean r (unbiased; no std division, which biases the estimate)
``rloo``  r - mean of the *other* rewards (leave-one-out; unbiased)
``none``  r (raw reward: with on-policy samples the integrated gradient then sums to J(1) - J(0))

A group whose rewards are all equal carries no signal: its advantages are exactly 0 (never NaN), and
the prompt still counts in the dataset mean.
"""

from __future__ import annotations

import math

from ipg.errors import InputError

ADVANTAGES = ("grpo", "mean", "rloo", "none")
EPS = 1e-6


def advantages(rewards: list[float], kind: str = "grpo") -> list[float]:
    """Advantages for one prompt's group of rewards."""
    if kind not in ADVANTAGES:
        raise InputError(f"advantage: unknown '{kind}'; use one of {list(ADVANTAGES)}")
    bad = [r for r in rewards if not math.isfinite(r)]
    if bad:
        raise InputError(f"signal: reward {bad[0]} is not finite; a signal must return finite floats")
    n = len(rewards)
    if kind == "none":
        return [float(r) for r in rewards]
    if n < 2 or max(rewards) == min(rewards):
        return [0.0] * n
    mean = sum(rewards) / n
    if kind == "mean":
        return [r - mean for r in rewards]
    if kind == "rloo":
        total = sum(rewards)
        return [r - (total - r) / (n - 1) for r in rewards]
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1))
    return [(r - mean) / (std + EPS) for r in rewards]
