"""How a steering strength gamma acts on a selected component: an affine map h -> factor * h + offset.

Every intervention is the identity at gamma = 1, so gamma 1 is the unsteered model whatever the choice:

``scale``   h -> gamma * h                      scaling about zero; gamma 0 is zero ablation (the paper's)
``mean``    h -> mu + gamma * (h - mu)          scaling about the component's mean mu; gamma 0 is mean
                                                ablation, which keeps the activation on the model's own
                                                distribution (interpretability's usual ablation)
``add``     h -> h + (gamma - 1) * mu           a constant step along the component's mean: gamma 0
                                                subtracts the mean, gamma 2 adds it again

``mu`` is the component's mean activation at the decision positions of the support trajectories (the
positions it was attributed at). ``centres`` estimates it; ``scale`` needs none.

The default is ``scale``. It was kept by the rule and measurement in docs/results/reasoning-strength.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ipg.errors import InputError
from ipg.registry import Registry

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Intervention:
    name: str
    affine: Callable  # (gamma, mu: (k,) tensor or None) -> (factor: float, offset: (k,) tensor or None)
    needs_centre: bool
    describe: str


INTERVENTIONS: Registry = Registry("steering.intervention")
DEFAULT = "scale"


def _scale(gamma: float, mu):
    return float(gamma), None


def _mean(gamma: float, mu):
    return float(gamma), (1.0 - float(gamma)) * mu


def _add(gamma: float, mu):
    return 1.0, (float(gamma) - 1.0) * mu


# fmt: off
INTERVENTIONS.add("scale", Intervention("scale", _scale, False, "h -> gamma h (about zero)"))
INTERVENTIONS.add("mean", Intervention("mean", _mean, True, "h -> mu + gamma (h - mu) (about the support mean)"))
INTERVENTIONS.add("add", Intervention("add", _add, True, "h -> h + (gamma - 1) mu (a step along the mean)"))
# fmt: on


def affine(name: str, gamma: float, centre=None, k: int = 0) -> tuple[float, "torch.Tensor | None"]:
    """``(factor, offset)`` of intervention ``name`` at ``gamma`` for ``k`` components with means ``centre``
    (a sequence of k floats; needed by ``mean`` and ``add``). ``offset`` is None when it is zero."""
    how = INTERVENTIONS.get(name, "steering.intervention")
    if not gamma >= 0:
        raise InputError(f"steering.gamma: must be >= 0, got {gamma}")
    mu = None
    if how.needs_centre:
        import torch  # here: the registry is read by light modules (config, help) that do not load torch

        if centre is None:
            raise InputError(
                f"steering.centre: intervention '{name}' scales about each component's mean; pass centre= "
                "(one mean per component, e.g. from ipg.interventions.centres)"
            )
        mu = torch.as_tensor(list(centre), dtype=torch.float32)
        if mu.shape != (k,):
            raise InputError(f"steering.centre: needs one mean per component ({k}), got {tuple(mu.shape)}")
    return how.affine(gamma, mu)


def centres(means: dict, components) -> list[float]:
    """The mean of each component, from ``means`` {Site: (width,) tensor} (``ipg.attribution.activation_sums``
    total / count over the support trajectories)."""
    out = []
    for c in components:
        if c.site not in means:
            raise InputError(f"steering.centre: no mean for site {c.site}; compute the site's support means first")
        out.append(float(means[c.site][c.index]))
    return out
