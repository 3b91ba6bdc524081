"""`ipg sweep`: a 2x2 sweep on the organism (accuracy, length x layers 1, 2) runs into a hive-partitioned
Parquet dataset with per-cell status and a summary; a second invocation does nothing new; a sweep whose
driver is killed mid-cell on Ray resumes from the reducer ledger and ends with the uninterrupted results."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from pushgateway_standin import pushed_values, pushgateway
from raytools import assert_same_scores

from ipg.driver.orchestration.dispatch import shard
from ipg.driver.run_inputs import splits_of
from ipg.driver.storage import Store
from ipg.driver.sweep import load_spec, run_sweep
from ipg.errors import InputError

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
CELLS = [
    "organism__accuracy__L1__residual__ipg",
    "organism__accuracy__L2__residual__ipg",
    "organism__length__L1__residual__ipg",
    "organism__length__L2__residual__ipg",
]
SPEC = {
    "name": "t2x2",
    "base": str(ROOT / "deploy" / "configs" / "organism.yaml"),
    "config": {
        "data": {"n_support": 9, "n_eval": 12},
        "seeds": [0],
        "attribution": {"q": 2, "n_samples": 3, "max_new_tokens": 48, "completeness": False},
        "evaluation": {"max_new_tokens": 48},
        "ray": {"shard_size": 3, "max_in_flight": 1, "snapshot_every": 1, "cpus_per_actor": 0.5, "progress": "lines"},
    },
    "models": ["organism"],
    "signals": ["accuracy", "length"],
    "layers": [1, 2],
    "kinds": ["residual"],
    "methods": ["ipg"],
    "steering": {"p": 4, "gammas": [0.0, 1.5]},
}


def _spec(tmp_path, **changes) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return str(path)


def _dataset(out: Path):
    table = ds.dataset(out / "scores", partitioning="hive").to_table()
    return table.sort_by([("signal", "ascending"), ("layer", "ascending"), ("index", "ascending")])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The in-process 2x2 sweep, run once for the module: (out dir, its log lines)."""
    tmp = tmp_path_factory.mktemp("sweep")
    logs = []
    run_sweep(_spec(tmp), out=str(tmp / "out"), log=logs.append)
    return tmp / "out", logs


def test_two_by_two_sweep_writes_a_partitioned_dataset_statuses_and_a_summary(swept):
    out, logs = swept
    table = ds.dataset(out / "scores", partitioning="hive").to_table()
    keys = sorted(
        {(r["model"], r["signal"], r["layer"]) for r in table.select(["model", "signal", "layer"]).to_pylist()}
    )
    assert keys == [("organism", s, layer) for s in ("accuracy", "length") for layer in (1, 2)]
    assert table.num_rows == 4 * 128  # the organism's residual width, every cell
    for cell in CELLS:
        status = json.loads((out / "cells" / f"{cell}.json").read_text())
        assert status["status"] == "done" and status["attempts"] == 1 and (out / status["scores"]).is_file()
        assert [r["gamma"] for r in status["steering"]] == [0.0, 1.5]
    summary = pq.read_table(out / "summary.parquet").to_pylist()
    assert [r["cell"] for r in summary] == CELLS and all(r["status"] == "done" for r in summary)
    assert all(len(r["top_components"].split()) == 5 for r in summary)
    assert {r["metric"] for r in summary} == {"accuracy", "mean_length"}
    md = (out / "summary.md").read_text()
    assert "cells: 4 done" in md and all(c in md for c in CELLS)
    assert any("4 cells, 0 done, 4 to run" in line for line in logs)


def test_second_invocation_runs_nothing(swept):
    out, _ = swept
    before = {p: p.stat().st_mtime_ns for p in (out / "scores").rglob("*.parquet")}
    cells = {p: p.read_bytes() for p in (out / "cells").glob("*.json")}
    logs = []
    run_sweep(str(out.parent / "spec.yaml"), out=str(out), log=logs.append)
    assert any("4 cells, 4 done, 0 to run" in line for line in logs)
    assert not any("attributing" in line for line in logs)
    assert {p: p.stat().st_mtime_ns for p in (out / "scores").rglob("*.parquet")} == before
    assert {p: p.read_bytes() for p in (out / "cells").glob("*.json")} == cells


def test_sweep_killed_mid_cell_on_ray_resumes_to_the_same_results(swept, local_ray, tmp_path):
    reference, _ = swept
    out = tmp_path / "out"
    spec = _spec(tmp_path)
    loaded = load_spec(spec)
    cfg = loaded.run_config(loaded.models[0], str(tmp_path))
    support = random.Random("support/0").sample(splits_of(cfg)[0], cfg.data.n_support)  # as the Experiment draws it
    second = shard(support, cfg.ray.shard_size)[1][0]
    # the driver dies with shard 1 of the first cell merged (and snapshotted: snapshot_every 1)
    env = {
        **os.environ,
        "IPG_FAULTS": f"driver@{second}",
        "IPG_FAULTS_DIR": str(tmp_path),
        "RAY_ADDRESS": local_ray["address"],
    }
    with pushgateway() as (gateway, received):  # the scheduled sweep's outcome, pushed as it ends
        cmd = [
            sys.executable,
            "-m",
            "ipg.driver.cli",
            "sweep",
            "--spec",
            spec,
            "--out",
            str(out),
            "--pushgateway",
            gateway,
        ]
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert first.returncode == 17, first.stdout[-2000:] + first.stderr[-2000:]
        assert not received  # a killed driver pushes nothing: its last success time goes stale, and the alert fires
        status = json.loads((out / "cells" / f"{CELLS[0]}.json").read_text())
        assert status["status"] == "running" and not list((out / "scores").rglob("*.parquet"))
        resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    [(method, path, body)] = received
    values = pushed_values(body)
    assert method == "POST" and path == "/metrics/job/ipg_sweep/sweep/t2x2" and values[("ipg_sweep_success", ())] == 1.0
    assert (
        values[("ipg_sweep_cells", (("status", "done"),))] == 4.0 and "ipg_sweep_last_success_timestamp_seconds" in body
    )
    text = resumed.stdout + resumed.stderr
    assert "4 cells, 0 done, 4 to run" in text and "already merged" in text  # the first cell went on from its ledger
    assert json.loads((out / "cells" / f"{CELLS[0]}.json").read_text())["attempts"] == 2
    assert_same_scores(_dataset(out), _dataset(reference))  # Ray vs in-process: float rounding only
    for cell in CELLS:
        got, ref = (json.loads((d / "cells" / f"{cell}.json").read_text()) for d in (out, reference))
        assert got["status"] == "done"
        assert [(r["gamma"], r["value"]) for r in got["steering"]] == [
            (r["gamma"], r["value"]) for r in ref["steering"]
        ]


def test_results_go_to_a_filesystem_uri_whole(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    store = Store("memory://ipg-test/sweep")
    store.write_json("cells/a.json", {"status": "done"})
    store.write_text("summary.md", "# x\n")
    assert store.read_json("cells/a.json") == {"status": "done"} and store.list("cells") == ["cells/a.json"]
    assert not [p for p in fsspec.filesystem("memory").find("/ipg-test") if p.endswith(".tmp")]  # no temporaries left
    assert Store(f"file://{tmp_path}/x").local  # file:// URIs take the local atomic path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"signals": ["accuracy", "vibes"]}, "signals: unknown 'vibes'"),
        ({"signals": ["nowhere.mod:score"]}, "signals: signal: cannot import 'nowhere.mod'"),
        ({"layers": [1, -1]}, "layers: indices must be >= 0"),
        ({"kinds": ["residual", "residual"]}, "'kinds' lists a value twice"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"config": {"attribution": {"q": "many"}}}, "attribution.q"),
        ({"steering": {"gammas": [1.5]}}, "steering: expected {p: N"),
    ],
)
def test_bad_specs_fail_naming_the_field(tmp_path, change, message):
    with pytest.raises(InputError, match=None) as e:
        load_spec(_spec(tmp_path, **change))
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "deploy" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweep_specs_load(path):
    spec = load_spec(str(path))  # every model's run config validates; unknown keys fail
    assert spec.cells() and spec.name == path.stem


def test_a_failing_cell_is_recorded_the_others_finish_and_a_rerun_retries_it(tmp_path, monkeypatch):
    from ipg.driver.experiment import Experiment
    from ipg.driver.sweep import SweepFailed

    spec = _spec(tmp_path, signals=["accuracy"], steering=None)
    original = Experiment.attribute

    def flaky(self, examples, **kw):
        if kw["layers"] == [2]:
            raise RuntimeError("worker lost")
        return original(self, examples, **kw)

    monkeypatch.setattr(Experiment, "attribute", flaky)
    with pytest.raises(SweepFailed, match=r"1 cell\(s\) failed \(organism__accuracy__L2__residual__ipg\)"):
        run_sweep(spec, out=str(tmp_path / "out"), log=lambda m: None)
    cells = tmp_path / "out" / "cells"
    failed = json.loads((cells / f"{CELLS[1]}.json").read_text())
    assert failed["status"] == "failed" and "worker lost" in failed["error"]
    assert json.loads((cells / f"{CELLS[0]}.json").read_text())["status"] == "done"
    monkeypatch.setattr(Experiment, "attribute", original)
    logs = []
    table = run_sweep(spec, out=str(tmp_path / "out"), log=logs.append)
    assert any("2 cells, 1 done, 1 to run" in line for line in logs)
    assert table.column("status").to_pylist() == ["done", "done"]
    assert json.loads((cells / f"{CELLS[1]}.json").read_text())["attempts"] == 2


def test_sweep_overrides_are_ray_keys_only(tmp_path):
    with pytest.raises(InputError, match=r"a sweep takes --ray.key=value overrides only"):
        run_sweep(_spec(tmp_path), out=str(tmp_path / "out"), overrides=["--attribution.q=9"], log=lambda m: None)
    with pytest.raises(InputError, match=r"ray.shard_size: must be >= 1"):
        run_sweep(_spec(tmp_path), out=str(tmp_path / "out"), overrides=["--ray.shard_size=0"], log=lambda m: None)
    assert not (tmp_path / "out" / "cells").exists()
