"""A run's wall time split by stage (run.json ``stages``, and the run's last log line): rollout,
gradient, baseline statistics, evaluation, and the rest.

In one process the stages run one after another, so the split is of wall seconds and sums to the run's
wall time. On Ray an attribution's rollouts and gradients overlap (shards pipeline through both actor
pools): its wall time is one figure, ``rollout_and_gradient``, and the actors' own seconds of each
are given beside it (worker seconds: they add up across actors, so they can exceed the wall)."""

from __future__ import annotations

# in one process; they sum to the wall. The experiment's timers and the workers' (their metrics' stage tag) use
# these names for the same work
STAGES = ("rollout", "gradient", "baseline_statistics", "evaluation", "other")


def stage_split(experiment: dict[str, float], attributions: list[dict[str, float]], wall: float, on_ray: bool) -> dict:
    """``experiment``: the experiment's timers, named as the stages they count (``rollout``: the support
    rollouts of baselines and cards; ``baseline_statistics``; ``evaluation``);
    ``attributions``: each attribution's ``diagnostics['timings']``; ``wall``: the run's seconds."""

    def total(*keys) -> float:
        return sum(t.get(k, 0.0) or 0.0 for t in attributions for k in keys)

    out: dict = {"clock": "ray: rollout and gradient overlap" if on_ray else "one process: stages in sequence"}
    if on_ray:
        out["rollout_and_gradient"] = total("total")
        out["rollout_worker_seconds"] = total("rollout_worker_seconds")
        out["gradient_worker_seconds"] = total("gradient_worker_seconds")
        out["rollout"] = experiment.get("rollout", 0.0)
        timed = out["rollout_and_gradient"] + out["rollout"]
    else:
        out["rollout"] = total("rollout", "path_rollouts", "completeness") + experiment.get("rollout", 0.0)
        out["gradient"] = total("gradient")
        timed = out["rollout"] + out["gradient"]
    out["baseline_statistics"] = total("baseline_statistics") + experiment.get("baseline_statistics", 0.0)
    out["evaluation"] = experiment.get("evaluation", 0.0)
    timed += out["baseline_statistics"] + out["evaluation"]
    out["other"] = max(wall - timed, 0.0)  # prompts, selection, cards, tables, report
    out["wall"] = wall
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def describe(split: dict) -> str:
    """One log line: each stage's seconds and share of the wall."""
    wall = split["wall"] or 1.0
    keys = [k for k in ("rollout_and_gradient", *STAGES) if k in split]
    return "stages: " + ", ".join(
        f"{k.replace('_', ' ')} {split[k]:.{0 if wall >= 100 else 1}f} s ({100 * split[k] / wall:.0f}%)" for k in keys
    )
