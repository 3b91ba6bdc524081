"""Helpers shared by the Ray tests."""

import socket

import numpy as np

from ipg.driver.config import RayConfig

SETTINGS = dict(method="ipg", layers=(1, 2), q=3, n_samples=4, max_new_tokens=96, seed=7, completeness=False)


def assert_same_scores(table, reference, scale_rtol=5e-6):
    """Element-wise 1e-5 relative, plus an absolute floor relative to the largest score (scores near 0).
    Shards batch their rows into other micro-batches than one in-process call (other matmul shapes,
    other float32 rounding, the LM head's chunks included): measured up to 1.4e-6 of the largest score.
    A lost or twice-counted shard moves scores by a sizeable fraction of it."""
    ref = np.array(reference.column("score").to_pylist())
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(
        np.array(table.column("score").to_pylist()), ref, rtol=1e-5, atol=scale_rtol * np.abs(ref).max()
    )
    for col in ("layer", "kind", "index", "n_prompts", "n_trajectories"):
        assert table.column(col).to_pylist() == reference.column(col).to_pylist()


def keyed_scores(path) -> dict:
    """A scores file as {(run_id, layer, kind, index): score}: runs hold several attribution units."""
    import pyarrow.parquet as pq

    return {(r["run_id"], r["layer"], r["kind"], r["index"]): r["score"] for r in pq.read_table(path).to_pylist()}


def assert_same_keyed(a: dict, b: dict):
    """``keyed_scores`` of two runs equal to float32 rounding (1e-4 relative, 1e-6 of the largest): shards
    of other sizes sum the same terms in another order, and an IPG of the length signal (rewards of ~100
    tokens, q terms per score) differs by up to 5e-5 relative between a 6-prompt batch and 3-prompt shards."""
    assert a.keys() == b.keys()
    scale = max(abs(v) for v in b.values())
    bad = [k for k in b if not abs(a[k] - b[k]) <= 1e-4 * abs(b[k]) + 1e-6 * scale]
    assert not bad, [(k, a[k], b[k]) for k in bad[:5]]


def small_ray(workers: int, **kw) -> RayConfig:
    return RayConfig(
        enabled=True,
        rollout_workers=workers,
        gradient_workers=workers,
        shard_size=3,
        max_in_flight=2,
        cpus_per_actor=0.5,
        progress="lines",
        **kw,
    )


def free_port() -> int:
    """A port nothing on 127.0.0.1 listens on now (for the clusters a test starts itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
