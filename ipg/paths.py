"""Integration paths: alpha schedules (nodes and weights on (0, 1]) and activation baselines.

``uniform``         the paper's right Riemann sum: alpha_k = k/q, weight 1/q
``gauss_legendre``  q-point Gauss-Legendre on [0, 1]: exact for polynomials of degree 2q-1
``geometric``       nodes dense near 0 (alpha_k = 2^-(q-k)), right-Riemann weights alpha_k - alpha_{k-1};
                    resolves the jump of J right after alpha = 0 that RMSNorm causes (docs/method.md)

Methods that walk no path (``pg``, ``component``: ``ipg.methods``) have the single node alpha = 1, weight 1.

Baselines h': ``zero``, or ``mean`` (mean activation over the decision positions of the alpha = 1
rollouts of the call, one vector per site).
"""

from __future__ import annotations

import numpy as np

from ipg.errors import InputError
from ipg.methods import METHODS
from ipg.registry import Registry

# name -> (q -> [(alpha, weight), ...]): the nodes of the path integral
SCHEDULES: Registry = Registry("alpha schedule")
SCHEDULES.add("uniform", lambda q: [(k / q, 1.0 / q) for k in range(1, q + 1)])


@SCHEDULES.register("gauss_legendre")
def _gauss_legendre(q: int) -> list[tuple[float, float]]:
    x, w = np.polynomial.legendre.leggauss(q)
    return [(float((xi + 1) / 2), float(wi / 2)) for xi, wi in zip(x, w)]


@SCHEDULES.register("geometric")
def _geometric(q: int) -> list[tuple[float, float]]:
    alphas = [2.0 ** -(q - k) for k in range(1, q + 1)]
    return [(a, a - (alphas[i - 1] if i else 0.0)) for i, a in enumerate(alphas)]


# name -> what h' is (the activation the path starts from); computed by ipg.baselines
BASELINES: Registry[str] = Registry("activation baseline")
BASELINES.add("zero", "h' = 0")
BASELINES.add("mean", "h' = the mean activation over the decision positions of the alpha = 1 rollouts")


def schedule(name: str, q: int, method: str = "ipg") -> list[tuple[float, float]]:
    """``[(alpha, weight), ...]`` in increasing alpha; weights sum to 1. A method that walks no path
    (``pg``, ``component``) has the single node alpha = 1."""
    if not METHODS.get(method, "method").integrates:
        return [(1.0, 1.0)]
    if q < 1:
        raise InputError(f"q: must be >= 1, got {q}")
    return SCHEDULES.get(name, "schedule")(q)
