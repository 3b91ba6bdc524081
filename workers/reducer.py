"""Reducer: merges per-shard partial score tables exactly once, with durable atomic snapshots.

merge(shard_id, partial) is idempotent per shard id, and PartialScores.merge is associative and
commutative with an identity, so retries, reordering and restarts cannot double count. A snapshot is
one Parquet file holding the running sums *and* the ledger (merged shard id -> that shard's
statistics) in its metadata, written atomically: sums and ledger can never disagree after a crash.

A reducer constructed on a directory whose snapshot carries the same run key restores from it (this is
what happens when Ray restarts a dead reducer, and on ``--resume``); a snapshot of another run is an
error, never silently mixed in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from ipg.cluster.metrics import StageTimer, metrics
from ipg.errors import InputError
from ipg.scores import STATS_KEY, PartialScores, partial_from_arrow, partial_to_arrow, write_scores
from ipg.workers.faults import maybe_crash

SNAPSHOT = "reducer-snapshot.parquet"
LEDGER_KEY = b"ipg.ledger"
RUN_KEY = b"ipg.run_key"


def read_snapshot(out_dir: str | Path) -> tuple[PartialScores, dict, str] | None:
    """(partial sums, ledger, run key) of the snapshot in ``out_dir``, or None when there is none."""
    path = Path(out_dir) / SNAPSHOT
    if not path.is_file():
        return None
    table = pq.ParquetFile(path).read()  # not pq.read_table: its first call imports pyarrow.dataset (~0.25 s)
    meta = table.schema.metadata or {}
    if LEDGER_KEY not in meta:
        raise InputError(f"{path}: not a reducer snapshot (no ledger); move it away or use another output directory")
    return partial_from_arrow(table), json.loads(meta[LEDGER_KEY]), meta.get(RUN_KEY, b"").decode()


class Reducer:
    def __init__(self, out_dir: str | Path, meta: dict, snapshot_every: int = 4, run_key: str = ""):
        if snapshot_every < 1:
            raise InputError(f"reducer.snapshot_every: must be >= 1, got {snapshot_every}")
        self.out_dir, self.meta, self.snapshot_every, self.run_key = Path(out_dir), dict(meta), snapshot_every, run_key
        self.partial, self.ledger = PartialScores(), {}
        self.since_snapshot = 0
        self.restore_seconds = None
        self.timer = StageTimer()
        start = time.perf_counter()
        found = read_snapshot(self.out_dir)
        if found is not None:
            partial, ledger, key = found
            if key != run_key:
                raise InputError(f"{self.out_dir / SNAPSHOT}: a snapshot of another run (key {key or 'none'}, this run "
                                 f"{run_key or 'none'}); resume that run with the same settings, or use another output directory")
            self.partial, self.ledger = partial, ledger
            self.restore_seconds = time.perf_counter() - start

    def merge(self, shard_id: str, partial) -> bool:
        """Add a shard's partial table (PartialScores or its Arrow form); False, and no change, when
        this shard was merged before."""
        if shard_id in self.ledger:
            return False
        with self.timer("merge"):
            stats = {}
            if not isinstance(partial, PartialScores):
                raw = (partial.schema.metadata or {}).get(STATS_KEY)
                stats = json.loads(raw) if raw else {}
                partial = partial_from_arrow(partial)
            self.partial = self.partial.merge(partial)
            self.ledger[shard_id] = stats
            self.since_snapshot += 1
        maybe_crash("reducer", shard_id)  # tests: die after merging in memory, before the snapshot
        m = metrics()
        if m is not None:
            m.shards.inc(1, tags={"stage": "merge"})
            if "created_at" in stats:
                m.reducer_lag.set(max(0.0, time.time() - stats["created_at"]))
        if self.since_snapshot >= self.snapshot_every:
            self.snapshot()
        return True

    def merged_shards(self) -> list[str]:
        return list(self.ledger)

    def ledger_stats(self) -> dict[str, dict]:
        return dict(self.ledger)

    def status(self) -> dict:
        return {"merged": len(self.ledger), "unsnapshotted": self.since_snapshot, "restore_seconds": self.restore_seconds}

    def snapshot(self) -> Path:
        table = partial_to_arrow(self.partial, {LEDGER_KEY: json.dumps(self.ledger).encode(), RUN_KEY: self.run_key.encode()})
        path = write_scores(self.out_dir / SNAPSHOT, table)
        self.since_snapshot = 0
        return path

    def finalize(self):
        """Snapshot, write scores.parquet (atomic) and return the final score table. The table reaches
        the caller through the object store as this method's return value (owned by the caller, so it
        outlives the reducer)."""
        self.snapshot()
        table = self.partial.table(self.meta)
        write_scores(self.out_dir / "scores.parquet", table)
        return table
