"""The Ray pipeline on a local cluster (dashboard on 127.0.0.1, token auth on): the same scores as
in-process attribution, with 1 and 2 workers of each kind; the mean baseline and completeness too."""

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")

from raytools import SETTINGS, assert_same_scores, small_ray  # noqa: E402

from ipg.attribution import AttributionConfig, attribute  # noqa: E402
from ipg.driver.config import RayConfig  # noqa: E402
from ipg.driver.orchestration.pipeline import RESULT_RECORD, RaySession, attribute_on_ray  # noqa: E402
from ipg.errors import InputError  # noqa: E402
from ipg.organism.card import splits  # noqa: E402


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_pipeline_equals_in_process(local_ray, organism, tmp_path, workers):
    model, tok = organism
    examples = splits()["support"][:10]
    reference = attribute(model, tok, examples, signal="accuracy", **SETTINGS)
    res = attribute_on_ray(
        "organism", examples, AttributionConfig(**SETTINGS), out_dir=tmp_path, ray_cfg=small_ray(workers)
    )
    assert_same_scores(res.table, reference.table)
    assert pq.read_table(tmp_path / "scores.parquet").equals(res.table)
    assert ray.get(res.table_ref).equals(res.table)  # the table in the object store, for the caller
    assert res.diagnostics["n_prompts"] == 10 and res.diagnostics["n_shards"] == 4
    assert res.diagnostics["mixed_groups"] == reference.diagnostics["mixed_groups"]
    assert res.diagnostics["mean_reward"] == pytest.approx(reference.diagnostics["mean_reward"])
    assert (tmp_path / RESULT_RECORD).is_file() and not (tmp_path / "reducer-snapshot.parquet").exists()


def test_mean_baseline_resample_and_completeness_equal_in_process(local_ray, organism, tmp_path):
    model, tok = organism
    examples = splits()["support"][10:16]
    settings = dict(SETTINGS, q=2, baseline="mean", resample=True, completeness=True, advantage="none")
    reference = attribute(model, tok, examples, signal="accuracy", **settings)
    with RaySession("organism", small_ray(1)) as session:
        res = session.attribute(examples, AttributionConfig(**settings), out_dir=tmp_path)
    # the mean baseline is a sum of activations captured in per-shard batches (other padding, other float
    # rounding than one in-process batch): scores agree to 1e-5 of the largest score (measured 3e-7)
    assert_same_scores(res.table, reference.table, scale_rtol=1e-5)
    for site, d in reference.diagnostics["sites"].items():
        ours = res.diagnostics["sites"][site]
        for key in ("J_alpha0", "J_alpha_min", "J_alpha1"):  # rewards of the same samples: equal
            assert ours[key] == pytest.approx(d[key], rel=1e-9), key
        l1 = np.abs(np.array(reference.table.column("score").to_pylist())).sum()
        assert ours["sum_scores"] == pytest.approx(d["sum_scores"], abs=1e-5 * l1)
        np.testing.assert_allclose(np.array(ours["J_path"]), np.array(d["J_path"]))


def test_component_method_on_ray_equals_in_process(local_ray, organism, tmp_path):
    """Two units: PG under out/pg, then PG's top candidates re-scored in the gradient actors; a second
    call with resume loads both finished units."""
    model, tok = organism
    examples = splits()["support"][:6]
    settings = dict(SETTINGS, method="component", candidates=5)
    reference = attribute(model, tok, examples, signal="accuracy", **settings)
    with RaySession("organism", small_ray(2)) as session:
        res = session.attribute(examples, AttributionConfig(**settings), out_dir=tmp_path)
        assert (tmp_path / "pg" / RESULT_RECORD).is_file() and (tmp_path / RESULT_RECORD).is_file()
        assert sorted(res.table.column("index").to_pylist()) == sorted(reference.table.column("index").to_pylist())
        assert_same_scores(res.table, reference.table)
        again = session.attribute(examples, AttributionConfig(**settings), out_dir=tmp_path, resume=True)
    assert again.table.equals(res.table)


def test_bad_layer_and_missing_resources_fail_before_any_work(local_ray, tmp_path):
    two = (
        "organism",
        splits()["support"][:2],
        AttributionConfig(method="ipg", layers=(1,)),
    )  # model, prompts, settings
    with RaySession("organism", small_ray(1)) as session:
        with pytest.raises(InputError, match=r"layers: 9 is out of range for this 4-layer model"):
            session.attribute(splits()["support"][:2], AttributionConfig(method="ipg", layers=(9,)), out_dir=tmp_path)
    with pytest.raises(InputError, match=r"ray: the cluster lacks resources for the actors: CPU needs 8, has 2.*node"):
        attribute_on_ray(*two, out_dir=tmp_path, ray_cfg=RayConfig(rollout_workers=4, gradient_workers=4))
    # a custom resource no node declares (a KubeRay worker group missing its rayStartParams.resources)
    with pytest.raises(InputError, match=r"ipg_rollout needs 1, has 0.*ray.rollout_resources"):
        attribute_on_ray(*two, out_dir=tmp_path, ray_cfg=small_ray(1, rollout_resources={"ipg_rollout": 1}))
    with pytest.raises(InputError, match=r"gradient_resources.GPU: set CPUs and GPUs with cpus_per_actor"):
        small_ray(1, gradient_resources={"GPU": 1})
    assert not (tmp_path / "scores.parquet").exists()


def test_a_model_the_workers_cannot_load_fails_once_with_their_message(local_ray, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(InputError, match=r"model: could not load '.*m' \(Error no file named model.safetensors"):
        RaySession(str(tmp_path / "m"), small_ray(1))
    with pytest.raises(InputError, match=r"model: path '/nonexistent/model' does not exist"):
        RaySession("/nonexistent/model", small_ray(1))


def test_a_users_signal_module_is_shipped_to_the_actors(local_ray, organism, tmp_path, monkeypatch):
    from pathlib import Path

    plugins = Path(__file__).resolve().parent / "plugins"  # on no actor's path: Ray must ship it
    monkeypatch.syspath_prepend(str(plugins))
    model, tok = organism
    examples = splits()["support"][20:26]
    settings = dict(SETTINGS, layers=(2,), q=2)
    signal, params = "user_signals:close", {"tolerance": 1}
    reference = attribute(model, tok, examples, signal=signal, signal_params=params, **settings)
    with RaySession("organism", small_ray(1), signals=[signal]) as session:
        assert session.shipped == [str(plugins / "user_signals.py")]
        res = session.attribute(
            examples, AttributionConfig(**settings), signal=signal, signal_params=params, out_dir=tmp_path / "a"
        )
        assert_same_scores(res.table, reference.table)
    with RaySession("organism", small_ray(1)) as session:  # not told: refused before any work
        with pytest.raises(
            InputError, match=r"signal: 'user_signals:close' comes from .*user_signals\.py, which no installed"
        ):
            session.attribute(
                examples, AttributionConfig(**settings), signal=signal, signal_params=params, out_dir=tmp_path / "b"
            )
