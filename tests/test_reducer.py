import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ipg.components import Site
from ipg.errors import InputError
from ipg.scores import PartialScores, partial_from_arrow, partial_to_arrow
from ipg.workers.reducer import SNAPSHOT, Reducer

pytestmark = pytest.mark.unit

SITES = [Site(1, "residual"), Site(2, "residual")]


def _shards(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(n):
        p = PartialScores()
        for _ in range(3):
            p.add_prompt(SITES[rng.integers(2)], rng.normal(size=8), 5)
        out[f"shard-{k}"] = p
    return out


def _scores(table):
    return np.array(table.column("score").to_pylist())


def test_arrow_round_trip_is_lossless():
    p = _shards(1)["shard-0"]
    back = partial_from_arrow(partial_to_arrow(p))
    for site, sums in p.sites.items():
        assert np.array_equal(back.sites[site].total, sums.total) and np.array_equal(
            back.sites[site].total_sq, sums.total_sq
        )
        assert back.sites[site].n_prompts == sums.n_prompts


def test_merge_is_idempotent_per_shard_and_order_free(tmp_path):
    shards = _shards()
    reference = None
    for order in itertools.islice(itertools.permutations(shards), 0, 120, 17):
        r = Reducer(tmp_path / "-".join(o[-1] for o in order), {"run_id": "t"}, snapshot_every=100)
        for sid in order:
            assert r.merge(sid, shards[sid]) is True
            assert r.merge(sid, shards[sid]) is False  # a retried shard is not counted twice
        table = r.finalize()
        reference = table if reference is None else reference
        np.testing.assert_allclose(_scores(table), _scores(reference), rtol=1e-12)
        per_site = {(r["layer"], r["kind"]): r["n_prompts"] for r in table.to_pylist()}
        assert sum(per_site.values()) == 15  # 5 shards x 3 prompts, each counted once


def test_restart_restores_from_the_snapshot_without_double_counting(tmp_path):
    shards = _shards(6)
    whole = Reducer(tmp_path / "whole", {}, snapshot_every=2)
    for sid, p in shards.items():
        whole.merge(sid, p)
    expected = whole.finalize()

    first = Reducer(tmp_path / "run", {}, snapshot_every=2)
    for sid in list(shards)[:3]:  # shards 0, 1 snapshotted; shard 2 merged after the last snapshot
        first.merge(sid, shards[sid])
    del first  # the reducer dies
    second = Reducer(tmp_path / "run", {}, snapshot_every=2)
    assert second.merged_shards() == ["shard-0", "shard-1"] and second.restore_seconds is not None
    for sid, p in shards.items():  # the driver re-sends everything not acknowledged; duplicates are ignored
        second.merge(sid, p)
    np.testing.assert_allclose(_scores(second.finalize()), _scores(expected), rtol=1e-12)
    assert sorted(pq.read_table(tmp_path / "run" / SNAPSHOT).schema.metadata) == [
        b"ipg.ledger",
        b"ipg.run_key",
        b"ipg.sha256",
    ]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]  # atomic writes


def test_bad_snapshot_interval():
    with pytest.raises(InputError, match="reducer.snapshot_every"):
        Reducer("/tmp/unused", {}, snapshot_every=0)


def test_a_snapshot_of_another_run_is_refused(tmp_path):
    r = Reducer(tmp_path, {}, snapshot_every=1, run_key="run-a")
    r.merge("s0", _shards(1)["shard-0"])
    with pytest.raises(InputError, match=r"a snapshot of another run \(key run-a, this run run-b\)"):
        Reducer(tmp_path, {}, run_key="run-b")
    assert Reducer(tmp_path, {}, run_key="run-a").merged_shards() == ["s0"]


def test_a_damaged_snapshot_falls_back_to_the_one_before_and_the_shards_after_it_are_redone(tmp_path):
    """Truncated (a disk filled up, a copy cut short) or altered: detected by the checksum of sums, ledger and
    run key; the previous snapshot is restored, the note says so, and re-merging gives the whole result."""
    import shutil

    from ipg.workers.reducer import PREVIOUS, read_snapshot

    shards = _shards(6)
    whole = Reducer(tmp_path / "whole", {}, snapshot_every=2)
    for sid, p in shards.items():
        whole.merge(sid, p)
    expected = _scores(whole.finalize())
    run = tmp_path / "run"
    first = Reducer(run, {}, snapshot_every=2, run_key="k")
    for sid in list(shards)[:4]:  # snapshots after shards 1 and 3: the previous one holds shards 0, 1
        first.merge(sid, shards[sid])
    del first
    good = (run / SNAPSHOT).read_bytes()
    (run / SNAPSHOT).write_bytes(good[: len(good) // 2])  # truncated
    partial, ledger, key, note = read_snapshot(run)
    assert sorted(ledger) == ["shard-0", "shard-1"] and key == "k"
    assert "is unreadable" in note and "restored the snapshot before it (2 shards merged)" in note
    second = Reducer(run, {}, snapshot_every=2, run_key="k")
    assert second.merged_shards() == ["shard-0", "shard-1"] and second.status()["note"] == note
    for sid, p in shards.items():
        second.merge(sid, p)
    np.testing.assert_allclose(_scores(second.finalize()), expected, rtol=1e-12)
    # altered bytes that still parse: the checksum refuses them
    table = pq.read_table(run / SNAPSHOT)
    pq.write_table(
        table.set_column(
            table.schema.get_field_index("total"),
            "total",
            pa.array([v + 1.0 for v in table.column("total").to_pylist()]),
        ),
        run / SNAPSHOT,
    )
    assert "checksum does not match" in read_snapshot(run)[3]
    # with no good snapshot left: one error naming the file and the fix
    (run / PREVIOUS).write_bytes(b"junk")
    with pytest.raises(
        InputError,
        match=r"reducer-snapshot.parquet: its checksum does not match its contents, and "
        r"unreadable .*; remove .* to redo this attribution from the start",
    ):
        read_snapshot(run)
    shutil.rmtree(run)
