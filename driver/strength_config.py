"""The reasoning-strength study's settings and its rule for choosing the default, fixed before the data (the
study itself: ``ipg.driver.strength_study``; this module stays light so that ``ipg --help`` can read it)."""

from __future__ import annotations

from dataclasses import dataclass

from ipg.errors import InputError
from ipg.interventions import INTERVENTIONS
from ipg.sites import ComponentId, Site

RULE = (
    "On the development prompts, for every candidate (selection, intervention) and every pair of gammas "
    "lo < 1 < hi from the grid: it **passes** when (1) mean length at lo is below the unsteered model's and "
    "below random's (same site, intervention and gamma), and at hi above both, each by a paired 95% interval "
    "that excludes 0; (2) the looping share at lo and at hi is within 10 points of the unsteered model's; "
    "(3) the share stating an answer at lo and at hi is at most 10 points below the unsteered model's. Its "
    "**margin** is the weaker direction's interval bound beyond random: min(-high(len lo - random lo), "
    "low(len hi - random hi)) in tokens. The default is the passing setting with the largest margin; ties go "
    "to the earlier candidate (the shipped default first) and the simpler intervention (scale, mean, add). "
    "When none passes, the setting that keeps (2) and (3) with the largest margin is named as the closest; "
    "when none keeps them, the largest margin overall. The choice is then evaluated once on the test prompts."
)


@dataclass(frozen=True)
class StudyConfig:
    config: str = "deploy/configs/smollm2-135m-instruct-reasoning.yaml"
    out: str = "runs/strength"
    seeds: tuple[int, ...] = (0, 1)  # the test prompts are evaluated with every seed's selections
    dev_seeds: tuple[int, ...] = (0,)  # the development prompts with these seeds' (a subset: time)
    n_support: int = 4
    n_dev: int = 6
    n_test: int = 16
    p: int = 8
    heads: int = 1  # attention heads per ``attn:heads`` selection (SmolLM2-135M has 9 per block)
    candidates: tuple[str, ...] = (
        "layers.22.residual:top",
        "layers.22.residual:abs",
        "layers.22.sae:top",
        "layers.22.mlp:top",
    )
    interventions: tuple[str, ...] = ("scale", "mean", "add")
    gammas: tuple[float, ...] = (0.0, 0.5, 0.8, 1.25, 2.0)  # development grid; the test evaluates the chosen pair
    max_new_tokens: int = 192
    threads: int = 2  # torch threads of the study's process

    def __post_init__(self):
        for name in self.interventions:
            INTERVENTIONS.get(name, "study.interventions")
        if 1.0 in self.gammas or not any(g < 1 for g in self.gammas) or not any(g > 1 for g in self.gammas):
            raise InputError(
                f"study.gammas: need gammas below and above 1 and not 1 itself (the unsteered model), got {list(self.gammas)}"
            )
        for c in self.candidates:
            candidate(c)
        if not set(self.dev_seeds) <= set(self.seeds) or not self.dev_seeds:
            raise InputError(f"study.dev_seeds: must be some of seeds {list(self.seeds)}, got {list(self.dev_seeds)}")
        if self.heads < 1:
            raise InputError(f"study.heads: must be >= 1, got {self.heads}")
        if self.threads < 1:
            raise InputError(f"study.threads: must be >= 1, got {self.threads}")
        if self.n_dev < 2 or self.n_test < 2:
            raise InputError(f"study.n_dev, n_test: need at least 2 prompts each, got {self.n_dev} and {self.n_test}")


BY = ("top", "abs", "heads")


def candidate(spec: str) -> tuple[Site, str]:
    """``layers.22.residual:top`` -> (Site(22, 'residual'), 'top'). ``top``: the p components of highest signed
    score; ``abs``: of largest |score|; ``heads`` (``attn`` sites only): every coordinate of the ``heads``
    attention heads of highest score, each head scored as one unit (``ipg.component_path.head_scores``)."""
    site, _, by = spec.partition(":")
    if by not in BY:
        raise InputError(f"study.candidates: '{spec}' needs ':top', ':abs' or ':heads' after the site")
    c = ComponentId.parse(f"{site}:0")
    if by == "heads" and c.kind != "attn":
        raise InputError(f"study.candidates: '{spec}': ':heads' selects attention heads; use an attn site")
    return c.site, by
