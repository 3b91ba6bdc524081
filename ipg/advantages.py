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
from typing import Callable

from ipg.errors import InputError
from ipg.registry import Registry

EPS = 1e-6

# name -> (rewards of one group, at least two and not all equal -> advantages); "none" takes every group as is
ADVANTAGES: Registry[Callable[[list[float]], list[float]]] = Registry("advantage")
ADVANTAGES.add("grpo", lambda r: _grpo(r))
ADVANTAGES.add("mean", lambda r: [x - sum(r) / len(r) for x in r])
ADVANTAGES.add("rloo", lambda r: [x - (sum(r) - x) / (len(r) - 1) for x in r])
ADVANTAGES.add("none", lambda r: [float(x) for x in r])


def _grpo(rewards: list[float]) -> list[float]:
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    return [(r - mean) / (std + EPS) for r in rewards]


def advantages(rewards: list[float], kind: str = "grpo") -> list[float]:
    """Advantages for one prompt's group of rewards."""
    fn = ADVANTAGES.get(kind, "advantage")
    bad = [r for r in rewards if not math.isfinite(r)]
    if bad:
        raise InputError(f"signal: reward {bad[0]} is not finite; a signal must return finite floats")
    if kind == "none":
        return fn(rewards)
    if len(rewards) < 2 or max(rewards) == min(rewards):
        return [0.0] * len(rewards)
    return fn(rewards)
