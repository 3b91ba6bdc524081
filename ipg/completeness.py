"""The completeness diagnostic: does the sum of a site's scores equal J(1) - J(0)?

For integrated gradients the scores of all components sum to the change of the objective along the
path. Here J(alpha) is the mean signal with the site at alpha on the path, so the check compares the sum
of scores with J(1) - J(0). It holds only for raw rewards (advantage 'none') with on-policy samples along
the path (resample); otherwise it is reported for reading, not as a test. J can also jump right after
alpha = 0 (docs/method.md), which J(alpha_min), the smallest path point, shows.

Both the in-process and the Ray attribution build the record here; they differ only in where the J
values are sampled.
"""

from __future__ import annotations

NOTE = "sum of scores ~ J(1) - J(0) holds for advantage 'none' with on-policy samples (resample)"


def points_to_sample(cfg, path: list | None) -> list[tuple[str, float]]:
    """(name, alpha) of the J values still to sample: J(0) and J(alpha_min), unless alpha is 1 (that is
    J(1)) or the resampled path already holds it."""
    if not cfg.completeness:
        return []
    out = []
    for name, alpha in (("J_alpha0", 0.0), ("J_alpha_min", cfg.alphas[0][0])):
        if alpha != 1.0 and not (path and alpha == path[0][0]):
            out.append((name, alpha))
    return out


def completeness_record(cfg, sum_scores: float, j1: float, measured: dict) -> dict:
    """One site's record: the sum of its scores, J(1), the sampled values in ``measured`` (J_alpha0,
    J_alpha_min, J_path), and with completeness on, the gap sum - (J(1) - J(0))."""
    out = {"sum_scores": sum_scores, "J_alpha1": j1, "comparable": cfg.advantage == "none", "note": NOTE, **measured}
    if not cfg.completeness:
        return out
    alpha_min = cfg.alphas[0][0]
    path = out.get("J_path")
    for name, alpha in (("J_alpha0", 0.0), ("J_alpha_min", alpha_min)):
        if name not in out:
            out[name] = j1 if alpha == 1.0 else path[0][1]
    out["alpha_min"] = alpha_min
    out["gap"] = sum_scores - (j1 - out["J_alpha0"])
    return out
