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

from ipg.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    integrates: bool  # walks the alpha path: schedule, q and resample apply
    per_component: bool  # re-scores PG's top candidates on the per-component path (needs a PG pass first)
    label: str  # how reports name it


METHODS: Registry[Method] = Registry("attribution method")
METHODS.add(
    "ipg",
    Method(
        "ipg",
        integrates=True,
        per_component=False,
        label="IPG (the paper's path integral of the policy gradient, whole activation vector)",
    ),
)
METHODS.add(
    "pg",
    Method(
        "pg",
        integrates=False,
        per_component=False,
        label="PG (the policy gradient times the activation, the alpha = 1 term of IPG)",
    ),
)
METHODS.add(
    "component",
    Method(
        "component",
        integrates=False,
        per_component=True,
        label="the per-component path (PG's top candidates, each re-scored exactly along its own path)",
    ),
)

# One default for ``ipg.attribute`` and ``ipg run`` alike, chosen by measurement (docs/results/README.md).
DEFAULT = "component"
DEFAULT_WHY = (
    "the default, chosen by measurement: beyond random at 8 of 9 settings of the organism and "
    "SmolLM2 comparisons, PG at 6, the paper's IPG at 2; docs/results/README.md"
)
