"""Attribution methods: how a component's score is computed from the policy gradient.

``component``  the per-component path (``ipg.component_path``): PG's top ``candidates`` per site, each
               re-scored exactly along its own path from its baseline to its value, the others held. The
               default of the library and of a run, chosen by measurement (``DEFAULT_WHY``)
``ipg``        the paper's Integrated Policy Gradient: the whole activation vector scaled along
               ``alpha`` in (0, 1], the gradient summed by an alpha schedule (``ipg.paths``)
``pg``         the plain policy gradient times the activation: IPG's alpha = 1 term alone

``pg`` and ``component`` evaluate the model at alpha = 1 only; only ``ipg`` walks a path, so only it
reads ``schedule``, ``q`` and ``resample``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ipg.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    integrates: bool  # walks the alpha path: schedule, q and resample apply
    candidates_from: str | None  # re-scores the top candidates of this method's scores (its pass runs first)
    describe: Callable[[dict], str]  # one line on a run's settings (a run.json 'attribution' section) for its report

    @property
    def per_component(self) -> bool:
        """Scores only the candidates another method picked, each on its own path."""
        return self.candidates_from is not None


def _ipg_line(a: dict) -> str:
    return (
        f"{a['method'].upper()} on {a['kind']} components of layers {a['layers']}: {a['baseline']} baseline, "
        f"{a['schedule']} schedule, q = {a['q']}, N = {a['n_samples']}, {a['advantage']} advantages"
        + (", resampled at each alpha" if a.get("resample") else "")
    )


def _pg_line(a: dict) -> str:
    return (
        f"PG (the policy gradient times the activation, at the actual activations) on {a['kind']} components "
        f"of layers {a['layers']}: N = {a['n_samples']}, {a['advantage']} advantages"
    )


def _component_line(a: dict) -> str:
    return (
        f"the per-component path (PG's top {a.get('candidates', 32)} candidates re-scored by ablating each "
        f"alone to its {a['baseline']} baseline) on {a['kind']} components of layers {a['layers']}: "
        f"N = {a['n_samples']}, {a['advantage']} advantages"
    )


METHODS: Registry[Method] = Registry("attribution method")
#           name                 integrates  candidates_from  describe
METHODS.add("ipg", Method("ipg", True, None, _ipg_line))
METHODS.add("pg", Method("pg", False, None, _pg_line))
METHODS.add("component", Method("component", False, "pg", _component_line))

# One default for ``ipg.attribute`` and ``ipg run`` alike, chosen by measurement (docs/results/README.md).
DEFAULT = "component"
DEFAULT_WHY = (
    "the default, chosen by measurement: beyond random at 8 of 9 settings of the organism and "
    "SmolLM2 comparisons, PG at 6, the paper's IPG at 2; docs/results/README.md"
)
PAPER = "ipg"  # the paper's method: `--preset paper`, and the report's checks of the paper's claims
