"""Reducer: merges per-shard partial score tables exactly once, with durable atomic snapshots.

merge(shard_id, partial) is idempotent per shard id, and PartialScores.merge is associative and
commutative with an identity, so retries, reordering and restarts cannot double count. A snapshot is
one Parquet file holding the running sums *and* the ledger of merged shard ids (in its metadata),
written atomically: the sums and the ledger can never disagree after a crash. A reducer constructed on
a directory with a snapshot restores from it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from ipg.errors import InputError
from ipg.scores import PartialScores, partial_from_arrow, partial_to_arrow, write_scores

SNAPSHOT = "reducer-snapshot.parquet"
LEDGER_KEY = b"ipg.ledger"


class Reducer:
    def __init__(self, out_dir: str | Path, meta: dict, snapshot_every: int = 4):
        if snapshot_every < 1:
            raise InputError(f"reducer.snapshot_every: must be >= 1, got {snapshot_every}")
        self.out_dir, self.meta, self.snapshot_every = Path(out_dir), dict(meta), snapshot_every
        self.partial, self.ledger = PartialScores(), []
        self.since_snapshot = 0
        self.restore_seconds = None
        path = self.out_dir / SNAPSHOT
        if path.is_file():
            start = time.perf_counter()
            table = pq.read_table(path)
            self.partial = partial_from_arrow(table)
            self.ledger = json.loads(table.schema.metadata[LEDGER_KEY])
            self.restore_seconds = time.perf_counter() - start

    def merge(self, shard_id: str, partial) -> bool:
        """Add a shard's partial table (PartialScores or its Arrow form); False, and no change, when
        this shard was merged before."""
        if shard_id in self.ledger:
            return False
        if not isinstance(partial, PartialScores):
            partial = partial_from_arrow(partial)
        self.partial = self.partial.merge(partial)
        self.ledger.append(shard_id)
        self.since_snapshot += 1
        if self.since_snapshot >= self.snapshot_every:
            self.snapshot()
        return True

    def merged_shards(self) -> list[str]:
        return list(self.ledger)

    def snapshot(self) -> Path:
        table = partial_to_arrow(self.partial, {LEDGER_KEY: json.dumps(self.ledger).encode()})
        self.since_snapshot = 0
        return write_scores(self.out_dir / SNAPSHOT, table)

    def finalize(self):
        """Snapshot, write scores.parquet (atomic) and return the final score table."""
        self.snapshot()
        table = self.partial.table(self.meta)
        write_scores(self.out_dir / "scores.parquet", table)
        return table
