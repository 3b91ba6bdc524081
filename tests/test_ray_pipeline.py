"""The Ray pipeline on a local cluster (dashboard on 127.0.0.1, token auth on): the same scores as
in-process attribution, with 1 and 2 workers of each kind; the mean baseline and completeness too."""

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")

from driver.config import RayConfig  # noqa: E402
from driver.pipeline import DONE, RaySession, attribute_on_ray  # noqa: E402
from ipg.attribution import AttributionConfig, attribute  # noqa: E402
from ipg.errors import InputError  # noqa: E402
from ipg.organism.card import splits  # noqa: E402
from raytools import SETTINGS, assert_same_scores, small_ray  # noqa: E402

@pytest.mark.parametrize("workers", [1, 2])
def test_ray_pipeline_equals_in_process(local_ray, organism, tmp_path, workers):
    model, tok = organism
    examples = splits()["support"][:10]
    reference = attribute(model, tok, examples, signal="accuracy", **SETTINGS)
    res = attribute_on_ray("organism", examples, AttributionConfig(**SETTINGS), out_dir=tmp_path, ray_cfg=small_ray(workers))
    assert_same_scores(res.table, reference.table)
    assert pq.read_table(tmp_path / "scores.parquet").equals(res.table)
    assert ray.get(res.table_ref).equals(res.table)  # the table in the object store, for the caller
    assert res.diagnostics["n_prompts"] == 10 and res.diagnostics["n_shards"] == 4
    assert res.diagnostics["mixed_groups"] == reference.diagnostics["mixed_groups"]
    assert res.diagnostics["mean_reward"] == pytest.approx(reference.diagnostics["mean_reward"])
    assert (tmp_path / DONE).is_file() and not (tmp_path / "reducer-snapshot.parquet").exists()


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
        assert (tmp_path / "pg" / DONE).is_file() and (tmp_path / DONE).is_file()
        assert sorted(res.table.column("index").to_pylist()) == sorted(reference.table.column("index").to_pylist())
        assert_same_scores(res.table, reference.table)
        again = session.attribute(examples, AttributionConfig(**settings), out_dir=tmp_path, resume=True)
    assert again.table.equals(res.table)


def test_bad_layer_and_missing_resources_fail_before_any_work(local_ray, tmp_path):
    with RaySession("organism", small_ray(1)) as session:
        with pytest.raises(InputError, match=r"layers: 9 is out of range for this 4-layer model"):
            session.attribute(splits()["support"][:2], AttributionConfig(layers=(9,)), out_dir=tmp_path)
    with pytest.raises(InputError, match=r"ray: the cluster lacks resources for the actors: CPU needs 8, has 2.*node"):
        attribute_on_ray("organism", splits()["support"][:2], AttributionConfig(layers=(1,)), out_dir=tmp_path,
                         ray_cfg=RayConfig(rollout_workers=4, gradient_workers=4))
    # a custom resource no node declares (a KubeRay worker group missing its rayStartParams.resources)
    with pytest.raises(InputError, match=r"ipg_rollout needs 1, has 0.*ray.rollout_resources"):
        attribute_on_ray("organism", splits()["support"][:2], AttributionConfig(layers=(1,)), out_dir=tmp_path,
                         ray_cfg=small_ray(1, rollout_resources={"ipg_rollout": 1}))
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


def test_dispatch_hands_a_shard_only_to_a_free_group():
    from driver.pipeline import Dispatch

    d = Dispatch(["s0", "s1", "s2", "s3", "s4"], n_groups=2, lookahead=3)
    assert d.to_generate() == ["s0", "s1", "s2"]  # rollouts run ahead, up to the look-ahead
    assert d.to_generate() == []
    assert d.to_attribute() == [("s0", 0), ("s1", 1)]
    assert d.to_attribute() == []  # s2 waits: a shard queued behind a busy group could not move
    assert d.to_generate() == ["s3", "s4"]
    d.attributed("s1")  # group 1 finished first (s0 is the costly one)
    assert d.to_attribute() == [("s2", 1)]
    d.attributed("s2")
    assert d.to_attribute() == [("s3", 1)]  # group 1 again: group 0 is still on s0
    d.attributed("s0")
    d.attributed("s3")
    assert d.to_attribute() == [("s4", 0)] and not d.finished()
    d.attributed("s4")
    assert d.finished()
    ordered = Dispatch(["a", "b", "c", "d"], 1, lookahead=4)
    ordered.to_generate()
    assert ordered.to_attribute({"b": 5, "c": 9}) == [("c", 0)]  # done rollouts first, the costliest of them
    ordered.attributed("c")
    assert ordered.to_attribute({"b": 5}) == [("b", 0)]
    ordered.attributed("b")
    assert ordered.to_attribute({}) == [("a", 0)]  # none done: the oldest
    resumed = Dispatch(["a", "b", "c"], 1, lookahead=1, generated={"b"})  # b's rollouts came from the baseline pass
    assert resumed.to_generate() == [] and resumed.to_attribute() == [("b", 0)]
    resumed.attributed("b")
    assert resumed.to_generate() == ["a"] and resumed.to_attribute() == [("a", 0)]


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
        res = session.attribute(examples, AttributionConfig(**settings), signal=signal, signal_params=params, out_dir=tmp_path / "a")
        assert_same_scores(res.table, reference.table)
    with RaySession("organism", small_ray(1)) as session:  # not told: refused before any work
        with pytest.raises(InputError, match=r"signal: 'user_signals:close' comes from .*user_signals\.py, which no installed"):
            session.attribute(examples, AttributionConfig(**settings), signal=signal, signal_params=params, out_dir=tmp_path / "b")

