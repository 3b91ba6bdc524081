"""Selection baselines: what a run steers beside its own method, each named once.

An attribution method (``ipg.methods``: component, ipg, pg) selects by its scores; the others select
without the policy gradient. ``baselines.methods`` lists those the accuracy experiment evaluates,
``length.methods`` / ``reflection.methods`` those a control experiment steers (``Selection.accuracy`` and
``Selection.control`` say where each may go).
"""

from __future__ import annotations

from dataclasses import dataclass

from ipg.methods import METHODS
from ipg.registry import Registry


@dataclass(frozen=True)
class Selection:
    summary: str
    accuracy: bool = True  # allowed in baselines.methods
    control: bool = True  # allowed in length.methods / reflection.methods


SELECTIONS: Registry[Selection] = Registry("selection baseline")
for _name in METHODS:
    SELECTIONS.add(_name, Selection(f"the top components by the {_name} attribution of the same signal"))
SELECTIONS.add("random", Selection("components drawn at random, several draws per seed"))
SELECTIONS.add("activation", Selection("the components of largest mean |activation| over the layer's median"))
SELECTIONS.add(
    "concept_tokens", Selection("components that separate the concept tokens' positions from the rest", control=False)
)
SELECTIONS.add(
    "control_vector", Selection("an added direction: mean activation of correct minus incorrect traces", control=False)
)
SELECTIONS.add(
    "reason_score", Selection("SAE features that separate reflection words' positions from the rest", control=False)
)
SELECTIONS.add("sae", Selection("the run's method on the layer's SAE features, where one exists", accuracy=False))

ACCURACY_BASELINES = tuple(n for n in SELECTIONS if SELECTIONS[n].accuracy)
CONTROL_METHODS = tuple(n for n in SELECTIONS if SELECTIONS[n].control)
