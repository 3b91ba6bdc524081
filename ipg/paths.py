"""Integration paths: alpha schedules (nodes and weights on (0, 1]) and activation baselines.

``uniform``         the paper's right Riemann sum: alpha_k = k/q, weight 1/q
``gauss_legendre``  q-point Gauss-Legendre on [0, 1]: exact for polynomials of degree 2q-1
``geometric``       nodes dense near 0 (alpha_k = 2^-(q-k)), right-Riemann weights alpha_k - alpha_{k-1};
                    resolves the jump of J right after alpha = 0 that RMSNorm causes (docs/method.md)
``pg``              the plain policy gradient: alpha = 1 only, weight 1 (method 'component' too: its
                    candidates come from PG, and its path is exact, needing no schedule)

Baselines h': ``zero``, or ``mean`` (mean activation over the decision positions of the alpha = 1
rollouts of the call, one vector per site).
"""

from __future__ import annotations

import numpy as np

from ipg.errors import InputError

SCHEDULES = ("uniform", "gauss_legendre", "geometric")
# ipg: the whole-vector path integral; pg: its alpha = 1 term alone; component: the per-component path
# (ipg.component_path), exact, for PG's top candidates. pg and component evaluate the model at alpha = 1 only.
METHODS = ("ipg", "pg", "component")
BASELINES = ("zero", "mean")


def schedule(name: str, q: int, method: str = "ipg") -> list[tuple[float, float]]:
    """``[(alpha, weight), ...]`` in increasing alpha; weights sum to 1."""
    if method in ("pg", "component"):
        return [(1.0, 1.0)]
    if method != "ipg":
        raise InputError(f"method: unknown '{method}'; use one of {list(METHODS)}")
    if q < 1:
        raise InputError(f"q: must be >= 1, got {q}")
    if name == "uniform":
        return [(k / q, 1.0 / q) for k in range(1, q + 1)]
    if name == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(q)
        return [(float((xi + 1) / 2), float(wi / 2)) for xi, wi in zip(x, w)]
    if name == "geometric":
        alphas = [2.0 ** -(q - k) for k in range(1, q + 1)]
        return [(a, a - (alphas[i - 1] if i else 0.0)) for i, a in enumerate(alphas)]
    raise InputError(f"schedule: unknown '{name}'; use one of {list(SCHEDULES)}")
