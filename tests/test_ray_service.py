"""The distributed service under faults, bad examples and observation (local Ray cluster, organism).

Crashes are injected with IPG_FAULTS (workers/faults.py): the worker process exits abruptly at a given
stage and shard, once, as an OOM kill would.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pyarrow.parquet as pq
import pytest
from commands import run as run_command  # noqa: E402  (tests/commands.py)

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")

from raytools import SETTINGS, assert_same_scores, small_ray  # noqa: E402

from ipg.attribution import AttributionConfig, attribute  # noqa: E402
from ipg.cluster.ray_cluster import metrics_endpoints  # noqa: E402
from ipg.driver.orchestration.pipeline import RaySession, shard  # noqa: E402
from ipg.errors import InputError  # noqa: E402
from ipg.organism.card import splits  # noqa: E402

EXAMPLES = splits()["support"][20:32]  # 4 shards of 3
SHARDS = [sid for sid, _ in shard(EXAMPLES, 3)]
BAD = EXAMPLES[7]["id"]  # in the second shard of EXAMPLES[3:9]


@pytest.fixture(scope="module")
def reference(organism):
    model, tok = organism
    return attribute(model, tok, EXAMPLES, signal="accuracy", **SETTINGS).table


def test_killed_rollout_gradient_and_reducer_actors_change_no_score(local_ray, reference, tmp_path, monkeypatch):
    faults = f"rollout@{SHARDS[1]},gradient@{SHARDS[2]},reducer@{SHARDS[2]}"
    monkeypatch.setenv("IPG_FAULTS", faults)
    monkeypatch.setenv("IPG_FAULTS_DIR", str(tmp_path))
    logs = []
    with RaySession("organism", small_ray(1, snapshot_every=2), log=logs.append) as session:
        res = session.attribute(EXAMPLES, AttributionConfig(**SETTINGS), out_dir=tmp_path / "run")
    fired = sorted(p.name for p in tmp_path.iterdir() if "@" in p.name)
    assert fired == sorted(faults.split(","))  # every process really died once
    assert_same_scores(res.table, reference)  # nothing lost, nothing counted twice
    assert res.diagnostics["n_prompts"] == 12 and res.diagnostics["n_shards"] == 4
    assert res.diagnostics["timings"]["reducer_restore_seconds"] is not None  # the reducer came back from its snapshot


def test_work_lost_beyond_the_attempt_limit_ends_the_run_in_one_line(local_ray, tmp_path, monkeypatch, capsys):
    """The gradient actor dies 3 times on a shard (its restarts and Ray's task retries spent), and
    ray.max_shard_attempts is 1: the run ends (exit 1) in one line that names the limit it spent and how to
    continue, with no scores written."""
    from ipg.driver.cli import main

    monkeypatch.setenv("IPG_FAULTS", f"gradient@{SHARDS[1]}*3")
    monkeypatch.setenv("IPG_FAULTS_DIR", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", local_ray["address"])
    (tmp_path / "ex.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in EXAMPLES))
    out = tmp_path / "run"
    flags = "--attribution.method=pg --attribution.n_samples=2 --attribution.max_new_tokens=32 --attribution.completeness=false"
    ray_flags = "--ray.shard_size=3 --ray.cpus_per_actor=0.5 --ray.max_shard_attempts=1"
    code = main(["attribute", "--ray", "--data", str(tmp_path / "ex.jsonl"), "--layers", "1", *flags.split(),
                 *ray_flags.split(), "--out", str(out), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert (
        err[0].startswith(
            f"error: shard '{SHARDS[1]}': its work was lost 1 times, the limit of ray.max_shard_attempts (last: "
        )
        and f"continue with --resume {out}" in err[0]
    ), err
    assert not (out / "scores.parquet").exists() and "Traceback" in (out / "error.log").read_text()


def test_killed_driver_resumes_with_identical_scores(local_ray, reference, tmp_path):
    out = tmp_path / "run"
    env = {
        **os.environ,
        "IPG_FAULTS": f"driver@{SHARDS[2]}",
        "IPG_FAULTS_DIR": str(tmp_path),
        "RAY_ADDRESS": local_ray["address"],
    }
    flags = ("--layers 1 2 --attribution.method=ipg --attribution.q=3 --attribution.n_samples=4 --attribution.max_new_tokens=96 "
             "--seeds=[7] --attribution.completeness=false --ray.shard_size=3 --ray.max_in_flight=1 --ray.snapshot_every=2 "
             "--ray.cpus_per_actor=0.5 --run-id r1")  # fmt: skip
    cmd = [sys.executable, "-m", "ipg.driver.cli", "attribute", "--ray", "--data", str(tmp_path / "ex.jsonl"), *flags.split(),
           "--out", str(out)]  # fmt: skip
    (tmp_path / "ex.jsonl").write_text("".join(json.dumps(ex) + "\n" for ex in EXAMPLES))
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 17, first.stderr[-2000:]  # the driver died after merging shard 2
    assert not (out / "scores.parquet").exists()  # no half-written output
    resumed = run_command(
        [sys.executable, "-m", "ipg.driver.cli", "attribute", "--resume", str(out)], env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and "already merged" in resumed.stderr
    merged_before = int(resumed.stderr.split("resuming")[1].split(":")[1].split("/")[0])
    assert merged_before == 2  # shards 0-1 were snapshotted; shard 2 was merged after, in memory, and is redone
    table = pq.read_table(out / "scores.parquet")
    assert_same_scores(table.replace_schema_metadata(None), reference)
    run = json.loads((out / "run.json").read_text())
    assert run["ray"] and run["diagnostics"]["n_prompts"] == 12


def test_failing_example_fails_the_run_naming_it_or_is_skipped_and_counted(local_ray, organism, tmp_path):
    model, tok = organism
    cfg = AttributionConfig(**SETTINGS)

    def _picky(completion: str, example: dict) -> float:  # nested: shipped to the workers by value
        if example["id"] == BAD:
            raise ValueError("cannot score this one")
        from ipg.answers import is_correct

        return float(is_correct(completion, example["answer"]))

    with RaySession("organism", small_ray(1)) as session:
        bad_shard = shard(EXAMPLES[3:9], 3)[1][0]
        with pytest.raises(
            InputError,
            match=re.escape(
                f"shard '{bad_shard}', example '{BAD}': signal '_picky' failed on "
                f"example '{BAD}': ValueError: cannot score"
            ),
        ):
            session.attribute(EXAMPLES[3:9], cfg, signal=_picky, out_dir=tmp_path / "fail")
        assert not (tmp_path / "fail" / "scores.parquet").exists()
        skip = AttributionConfig(**{**SETTINGS, "on_error": "skip"})
        res = session.attribute(EXAMPLES[3:9], skip, signal=_picky, out_dir=tmp_path / "skip")
        # the metrics of the project appear on the node's Prometheus endpoint while the actors live
        wanted = [
            "ray_ipg_prompts_total",
            "ray_ipg_trajectories_total",
            "ray_ipg_tokens_total",
            "ray_ipg_stage_seconds",
            "ray_ipg_shards_total",
            "ray_ipg_reducer_lag_seconds",
            "ray_ipg_errors_total",
        ]
        found, item_errors = set(), 0.0
        for _ in range(90):  # the metrics agent exports every few seconds: wait for this run's item error too
            body = "".join(urllib.request.urlopen(url, timeout=10).read().decode() for url in metrics_endpoints())
            found = {name for name in wanted if f"\n{name}" in body}
            item_errors = sum(
                float(line.rsplit(" ", 1)[1])
                for line in body.splitlines()
                if line.startswith("ray_ipg_errors_total{") and 'error_class="item"' in line
            )
            if found == set(wanted) and item_errors >= 1:
                break
            time.sleep(1)
        assert found == set(wanted), sorted(set(wanted) - found)
        assert item_errors >= 1  # the failing example, counted as an item error (skip run: at least once)
    assert res.diagnostics["skipped"].keys() == {BAD} and res.diagnostics["n_prompts"] == 5
    expected = attribute(model, tok, [ex for ex in EXAMPLES[3:9] if ex["id"] != BAD], signal="accuracy", **SETTINGS)
    assert_same_scores(res.table, expected.table)


def test_a_local_cluster_listens_on_loopback_only(local_ray):
    """Every process of the session's local cluster (and this driver) accepts connections on 127.0.0.1
    only: GCS, raylet, workers, agents and metrics endpoints alike."""
    psutil = pytest.importorskip("psutil")
    assert local_ray["address"].startswith("127.0.0.1:")
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ  # set for the cluster's processes only
    listening = set()
    for p in [psutil.Process()] + psutil.Process().children(recursive=True):
        try:
            listening |= {
                (p.name(), c.laddr.ip, c.laddr.port)
                for c in p.net_connections("inet")
                if c.status == psutil.CONN_LISTEN
            }
        except psutil.NoSuchProcess:
            pass
    outside = sorted(
        x for x in listening if x[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    )  # IPv4 loopback on IPv6 sockets too
    assert listening and not outside, outside


def test_a_killed_driver_leaves_no_process_of_its_local_cluster(tmp_path):
    """SIGKILL of a driver that started a local cluster: its watchdog stops every process of that cluster."""
    import signal

    psutil = pytest.importorskip("psutil")
    code = (
        "from ipg.cluster.ray_cluster import connect; connect(num_cpus=1); print('up', flush=True); "
        "import time; time.sleep(600)"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert driver.stdout.readline().strip() == "up"
    time.sleep(3)  # the cluster's agents are up
    procs = psutil.Process(driver.pid).children(recursive=True)
    assert len(procs) >= 4, procs  # GCS, raylet, agents, dashboard (and the watchdog)
    driver.send_signal(signal.SIGKILL)
    driver.wait()

    def alive(p):
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + 60
    while time.time() < deadline and any(map(alive, procs)):
        time.sleep(1)
    left = [p.pid for p in procs if alive(p)]
    assert not left, left
