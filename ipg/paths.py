"""Integration paths: alpha schedules (nodes and weights on (0, 1]) and activation baselines.

``uniform``         the paper's right Riemann sum: alpha_k = k/q, weight 1/q
``gauss_legendre``  q-point Gauss-Legendre on [0, 1]: exact for polynomials of degree 2q-1
``geometric``       nodes dense near 0 (alpha_k = 2^-(q-k)), right-Riemann weights alpha_k - alpha_{k-1};
                    resolves the jump of J right after alpha = 0 that RMSNorm causes (method.md s. 6)
``pg``              the plain policy gradient: alpha = 1 only, weight 1

Baselines h': ``zero``, or ``mean`` (mean activation over the decision positions of the alpha = 1
rollouts of the call, one vector per site).
"""

from __future__ import annotations

import numpy as np

from ipg.errors import InputError

SCHEDULES = ("uniform", "gauss_legendre", "geometric")
BASELINES = ("zero", "mean")


def schedule(name: str, q: int, method: str = "ipg") -> list[tuple[float, float]]:
    """``[(alpha, weight), ...]`` in increasing alpha; weights sum to 1."""
    if method == "pg":
        return [(1.0, 1.0)]
    if method != "ipg":
        raise InputError(f"method: unknown '{method}'; use 'ipg' or 'pg'")
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
