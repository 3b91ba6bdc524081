"""The Ray pipeline on a local cluster (127.0.0.1, token auth on): same scores as in-process."""

import numpy as np
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from cluster.ray_cluster import connect  # noqa: E402
from driver.pipeline import attribute_on_ray  # noqa: E402
from ipg.attribution import AttributionConfig, attribute  # noqa: E402
from ipg.organism.card import splits  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    connect(num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_pipeline_equals_in_process(local_ray, organism, tmp_path, workers):
    model, tok = organism
    examples = splits()["support"][:10]
    settings = dict(layers=(1, 2), q=3, n_samples=4, max_new_tokens=96, seed=7, completeness=False)
    reference = attribute(model, tok, examples, signal="accuracy", **settings).table
    table_ref = attribute_on_ray("organism", examples, AttributionConfig(**settings), out_dir=tmp_path,
                                 n_rollout=workers, n_gradient=workers, shard_size=3, max_in_flight=2,
                                 cpus_per_actor=0.5)
    table = ray.get(table_ref)
    ref = np.array(reference.column("score").to_pylist())
    np.testing.assert_allclose(np.array(table.column("score").to_pylist()), ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max())
    assert pq.read_table(tmp_path / "scores.parquet").equals(table)
    assert set(table.column("n_prompts").to_pylist()) == {10}


def test_missing_resources_fail_before_placing_actors(local_ray, tmp_path):
    from ipg.errors import InputError

    with pytest.raises(InputError, match=r"ray: the cluster lacks resources for the actors: CPU needs 8, has 2"):
        attribute_on_ray("organism", splits()["support"][:2], AttributionConfig(layers=(1,)), out_dir=tmp_path,
                         n_rollout=4, n_gradient=4)
