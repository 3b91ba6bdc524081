"""`ipg run` with attribution on Ray: the same outputs as in-process, and `--resume` after a killed driver."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from commands import run as run_command  # noqa: E402  (tests/commands.py)
from raytools import assert_same_keyed, keyed_scores  # noqa: E402

from ipg.driver.config import load_config  # noqa: E402
from ipg.driver.experiment import run_experiment  # noqa: E402
from ipg.driver.orchestration.pipeline import shard  # noqa: E402

pytestmark = pytest.mark.ray

SMOKE = str(Path(__file__).resolve().parents[1] / "deploy" / "configs" / "smoke.yaml")


def test_run_on_ray_writes_what_the_in_process_run_writes_and_its_driver_loads_no_weights(
    local_ray, tmp_path, monkeypatch
):
    """Every stage that needs the model (attribution, the component path, baselines, control vector, cards,
    steered evaluation) runs in the actors; the driver process is made unable to load weights."""
    import transformers

    import ipg.driver.experiment
    import ipg.models

    overrides = [
        "--baselines.methods=[ipg,random,activation,concept_tokens,control_vector]",
        "--cards.components=2",
        # the length experiment with its baselines: its cards read the length signal's rollouts
        "--length.enabled=true",
        "--length.layers=[2]",
        "--length.gammas=[0, 1, 2]",
        "--length.methods=[random, activation, ipg]",
    ]
    local = run_experiment(
        load_config(SMOKE, overrides + [f"--out={tmp_path / 'local'}", "--ray.enabled=false"]), log=lambda m: None
    )

    def refuse(*args, **kwargs):
        raise AssertionError("the driver loaded model weights")

    for module in (ipg.models, ipg.driver.experiment):
        monkeypatch.setattr(module, "load_model", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    on_ray = run_experiment(
        load_config(SMOKE, overrides + [f"--out={tmp_path / 'ray'}", "--ray.enabled=true"]), log=lambda m: None
    )
    assert_same_keyed(keyed_scores(on_ray / "scores.parquet"), keyed_scores(local / "scores.parquet"))
    for name in (
        "eval",
        "eval_items",
        "selections",
        "massive",
        "cards",
        "card_terms",
    ):  # same selections, same steering
        assert pq.read_table(on_ray / f"{name}.parquet").equals(pq.read_table(local / f"{name}.parquet")), name
    units = sorted(p.name for p in (on_ray / "attributions").iterdir())
    assert units == [
        "accuracy-component-residual-seed0",
        "accuracy-ipg-residual-seed0",
        "accuracy-pg-residual-seed0",
        "length-component-residual-seed0",
        "length-ipg-residual-seed0",
        "length-pg-residual-seed0",
    ]
    assert (on_ray / "attributions" / "accuracy-component-residual-seed0" / "attribution.json").is_file()
    assert json.loads((on_ray / "run.json").read_text())["ray"]["address"] == local_ray["address"]  # the test's cluster


def test_run_resumes_after_the_driver_is_killed(local_ray, tmp_path):
    import random

    from ipg.organism.card import splits

    cfg = load_config(SMOKE)
    support = random.Random("support/0").sample(
        splits()["support"], cfg.data.n_support
    )  # what the run draws for seed 0
    first_shard = shard(support, cfg.ray.shard_size)[0][0]
    out = tmp_path / "run"
    env = {
        **os.environ,
        "RAY_ADDRESS": local_ray["address"],
        "IPG_FAULTS": f"driver@{first_shard}",
        "IPG_FAULTS_DIR": str(tmp_path),
    }
    args = [sys.executable, "-m", "ipg.driver.cli", "run"]
    first = run_command(
        args
        + [
            "--config",
            SMOKE,
            "--out",
            str(out),
            "--baselines.methods=[pg,random]",
            "--ray.snapshot_every=1",
            "--ray.max_in_flight=1",
        ],
        env=env,
        timeout=600,
    )
    assert first.returncode == 17, first.stdout[-2000:] + first.stderr[-2000:]
    assert not (out / "scores.parquet").exists() and not (out / "report.md").exists()
    resumed = subprocess.run(args + ["--resume", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    # the driver died right after the first merge; the second shard's merge, already dispatched, may or may
    # not have landed in the reducer's snapshot before Ray reaped the actors: either way the ledger is used
    assert re.search(r"resuming .*accuracy-pg-residual-seed0: [12]/2 shards already merged", resumed.stdout), (
        resumed.stdout
    )
    reference = run_experiment(
        load_config(SMOKE, [f"--out={tmp_path / 'ref'}", "--baselines.methods=[pg,random]"]), log=lambda m: None
    )
    assert_same_keyed(keyed_scores(out / "scores.parquet"), keyed_scores(reference / "scores.parquet"))
    assert pq.read_table(out / "eval.parquet").equals(pq.read_table(reference / "eval.parquet"))


def test_resume_needs_a_run_directory(tmp_path):
    from ipg.driver.cli import main

    assert main(["run", "--resume", str(tmp_path)]) == 2
