"""Two runs on one cluster, as teams share one: an `ipg run` and an `ipg attribute` started at once on the
same Ray cluster with different output directories. Each keeps its own actors, placement group, reducer
snapshots and metric series; the one killed mid-way leaves nothing behind, and resumed alone it ends
with the scores it gives alone; the other finishes with the scores it gives alone; the cluster is clean
when both have ended."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from commands import run as run_command  # noqa: E402  (tests/commands.py)
from raytools import assert_same_keyed, assert_same_scores, keyed_scores  # noqa: E402

from ipg.cluster.ray_cluster import metrics_endpoints  # noqa: E402
from ipg.driver.config import load_config  # noqa: E402
from ipg.driver.experiment import run_experiment  # noqa: E402

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "deploy" / "configs" / "smoke.yaml")
# the attribution that is killed: PG then the per-component path, 6 shards each, one shard in flight
ATTRIBUTE = [
    "--config",
    SMOKE,
    "--signal=length",
    "--layers",
    "1",
    "--limit",
    "18",
    "--attribution.candidates=8",
    "--ray.max_in_flight=1",
    "--ray.snapshot_every=1",
    "--ray.progress=lines",
]


def _start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ipg.driver.cli", *args],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )


def _wait_for(what: str, check, timeout_s: float = 300, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _job_of(api: str, pid: int) -> str | None:
    """The Ray job id of the driver process ``pid`` (None until it has connected). ``api``: the cluster's
    dashboard URL (named: the newest cluster on this machine may be another test's, gone by now)."""
    from ray.util.state import list_jobs

    for job in list_jobs(address=api, raise_on_missing_output=False):
        info = job.driver_info
        if job.type == "DRIVER" and info is not None and int(info.pid) == pid:
            return job.job_id
    return None


def _alive_actors(api: str, jobs: set[str]) -> Counter:
    """(job id, class) -> alive actors, of those jobs."""
    from ray.util.state import list_actors

    return Counter(
        (a.job_id, a.class_name)
        for a in list_actors(address=api, filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
        if a.job_id in jobs
    )


def _live_placement_groups(api: str, jobs: set[str]) -> list:
    from ray.util.state import list_placement_groups

    return [
        pg
        for pg in list_placement_groups(address=api, limit=1000, raise_on_missing_output=False)
        if pg.creator_job_id in jobs and pg.state != "REMOVED"
    ]


def _series(name: str) -> dict[str, set[str]]:
    """run tag -> the job tags of ``name``'s series on the cluster's metrics endpoints."""
    out: dict[str, set[str]] = {}
    for url in metrics_endpoints():
        for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
            if line.startswith(name + "{"):
                labels = dict(
                    part.split("=", 1) for part in line[len(name) + 1 : line.index("}")].split(",") if "=" in part
                )
                out.setdefault(labels.get("run", '""').strip('"'), set()).add(labels.get("job", '""').strip('"'))
    return out


def _both(series: dict) -> dict | None:
    return series if {"run-a", "attr-b"} <= set(series) else None


def test_two_runs_on_one_cluster_keep_apart_and_leave_it_clean(local_ray, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": local_ray["address"]}
    api = f"http://{local_ray['dashboard_url']}"
    run_out, attr_out = tmp_path / "run-a", tmp_path / "attr-b"
    run_a = _start(["run", "--config", SMOKE, "--out", str(run_out)], tmp_path / "a.log", env)
    attr_b = _start(["attribute", *ATTRIBUTE, "--out", str(attr_out)], tmp_path / "b.log", env)
    try:
        jobs = {
            "a": _wait_for("run A's driver", lambda: _job_of(api, run_a.pid)),
            "b": _wait_for("run B's driver", lambda: _job_of(api, attr_b.pid)),
        }
        assert jobs["a"] != jobs["b"]
        # B has merged its first shard (and snapshotted it), both runs' series are exported, A is still at
        # work: each holds its own actors
        _wait_for("B's first merged shard", lambda: "1/6 shards" in (tmp_path / "b.log").read_text(), every_s=0.2)
        series = _wait_for(
            "both runs' metric series", lambda: _both(_series("ray_ipg_shards_total")), timeout_s=120, every_s=1
        )
        assert series["run-a"] == {jobs["a"]} and series["attr-b"] == {jobs["b"]}, series
        actors = _alive_actors(api, set(jobs.values()))
        assert run_a.poll() is None and attr_b.poll() is None, (
            "a run ended before the other got going: they did not overlap"
        )
        for name, job in jobs.items():
            mine = {cls: n for (j, cls), n in actors.items() if j == job}
            # one rollout and one gradient actor each; a reducer while a unit is open (none between two units)
            assert mine.get("GradientWorker") == 1 and mine.get("RolloutWorker") == 1 and mine.get("Reducer", 0) <= 1, (
                name,
                actors,
            )
        assert sum(actors.values()) <= 6, actors
        attr_b.send_signal(signal.SIGKILL)  # a killed driver: its actors and placement group go with it
        attr_b.wait(timeout=60)
        assert run_a.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()[-3000:]
    finally:
        for proc in (run_a, attr_b):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    # the cluster is clean: nothing of either run is left alive
    ours = set(jobs.values())
    _wait_for("the runs' actors to be gone", lambda: not _alive_actors(api, ours), timeout_s=120)
    _wait_for("the runs' placement groups to be removed", lambda: not _live_placement_groups(api, ours), timeout_s=120)
    # each run's series still carry its own run and job tags alone
    series = _series("ray_ipg_shards_total")
    assert series["run-a"] == {jobs["a"]} and series["attr-b"] == {jobs["b"]}, series
    # B's snapshot is its own: resumed alone, it ends with the scores B gives alone (in one process)
    assert not (attr_out / "scores.parquet").exists()
    resumed = run_command(
        [sys.executable, "-m", "ipg.driver.cli", "attribute", "--resume", str(attr_out)], env=env, timeout=900, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    text = resumed.stdout + resumed.stderr
    # killed inside PG's unit, resumed from its ledger; between the two units, PG's finished record is loaded
    assert "shards already merged" in text or "complete (run key" in text, text[-3000:]
    alone = run_command(
        [sys.executable, "-m", "ipg.driver.cli", "attribute", *ATTRIBUTE, "--out", str(tmp_path / "b-alone")],
        env={k: v for k, v in env.items() if k != "RAY_ADDRESS"},
        timeout=900,
        cwd=ROOT,
    )
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    assert json.loads((tmp_path / "b-alone" / "run.json").read_text())["ray"] is False
    assert_same_scores(
        pq.read_table(attr_out / "scores.parquet"), pq.read_table(tmp_path / "b-alone" / "scores.parquet")
    )
    # A: the scores and evaluations of the same run alone, in one process
    reference = run_experiment(load_config(SMOKE, [f"--out={tmp_path / 'a-alone'}"]), log=lambda m: None)
    assert_same_keyed(keyed_scores(run_out / "scores.parquet"), keyed_scores(reference / "scores.parquet"))
    assert pq.read_table(run_out / "eval.parquet").equals(pq.read_table(reference / "eval.parquet"))
