"""run.json's split of the wall time by stage, in one process (sequential stages) and on Ray (rollouts
and gradients overlapping)."""

import pytest

from ipg.driver.report.stages import describe, stage_split

pytestmark = pytest.mark.unit

IN_PROCESS = {
    "rollout": 10.0,
    "path_rollouts": 2.0,
    "completeness": 3.0,
    "gradient": 20.0,
    "baseline_statistics": 1.0,
    "total": 37.0,
}


def test_in_process_stages_add_up_to_the_wall():
    split = stage_split(
        {"evaluation": 30.0, "baseline_statistics": 4.0, "rollout": 0.0, "report": 2.0},
        [IN_PROCESS, IN_PROCESS],
        120.0,
        False,
    )
    assert split["rollout"] == 30.0 and split["gradient"] == 40.0
    assert split["baseline_statistics"] == 6.0 and split["evaluation"] == 30.0
    assert split["other"] == 14.0 and split["wall"] == 120.0  # cards, report, selection
    line = describe(split)
    assert line.startswith("stages: rollout 30 s (25%), gradient 40 s (33%)") and "other 14 s (12%)" in line
    assert describe(stage_split({}, [IN_PROCESS], 50.0, False)).startswith("stages: rollout 15.0 s (30%)")


def test_ray_stages_keep_the_overlapping_attribution_whole():
    unit = {
        "total": 50.0,
        "rollout_worker_seconds": 40.0,
        "gradient_worker_seconds": 60.0,
        "reducer_restore_seconds": None,
    }
    split = stage_split({"evaluation": 20.0, "baseline_statistics": 5.0, "rollout": 8.0}, [unit], 90.0, True)
    assert split["rollout_and_gradient"] == 50.0 and "gradient" not in split
    assert (
        split["rollout_worker_seconds"] == 40.0 and split["gradient_worker_seconds"] == 60.0
    )  # worker seconds exceed the wall
    assert split["rollout"] == 8.0 and split["other"] == 7.0
    assert "rollout and gradient 50.0 s" in describe(split)
