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
import os
import time
from pathlib import Path

import pyarrow.parquet as pq

from ipg.cluster.metrics import StageTimer, metrics
from ipg.errors import InputError
from ipg.scores import STATS_KEY, PartialScores, partial_from_arrow, partial_to_arrow, write_scores
from ipg.workers.faults import maybe_crash

SNAPSHOT = "reducer-snapshot.parquet"
PREVIOUS = "reducer-snapshot.previous.parquet"  # the snapshot before the last: what a damaged one falls back to
LEDGER_KEY = b"ipg.ledger"
RUN_KEY = b"ipg.run_key"
CHECKSUM_KEY = b"ipg.sha256"


def _checksum(table, ledger: bytes, key: bytes) -> str:
    """sha256 over the sums (Arrow IPC of the columns, metadata aside), the ledger and the run key."""
    import hashlib

    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = table.replace_schema_metadata(None).combine_chunks()  # as written, whatever the row groups read back
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest = hashlib.sha256(sink.getvalue().to_pybytes())
    digest.update(ledger)
    digest.update(key)
    return digest.hexdigest()


def _read_one(path: Path):
    """(partial, ledger, run key), or the reason the file cannot be trusted."""
    try:
        table = pq.ParquetFile(path).read()  # not pq.read_table: its first call imports pyarrow.dataset (~0.25 s)
    except Exception as e:  # truncated or overwritten: pyarrow's ArrowInvalid, OSError
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    meta = table.schema.metadata or {}
    if LEDGER_KEY not in meta:
        return "not a reducer snapshot (no ledger)"
    if CHECKSUM_KEY in meta and meta[CHECKSUM_KEY].decode() != _checksum(
        table, meta[LEDGER_KEY], meta.get(RUN_KEY, b"")
    ):
        return "its checksum does not match its contents"
    return partial_from_arrow(table), json.loads(meta[LEDGER_KEY]), meta.get(RUN_KEY, b"").decode()


def read_snapshot(out_dir: str | Path) -> tuple[PartialScores, dict, str, str] | None:
    """(partial sums, ledger, run key, note) of the snapshot in ``out_dir``, or None when there is none. A
    damaged snapshot (unreadable, or its checksum wrong) is replaced by the one before it, and ``note``
    says so: the shards merged after that one are not in its ledger, so the run computes them again.
    With no good snapshot left, an error names the file and the fix."""
    out_dir = Path(out_dir)
    latest, previous = out_dir / SNAPSHOT, out_dir / PREVIOUS
    if not latest.is_file() and not previous.is_file():
        return None
    problem = _read_one(latest) if latest.is_file() else "missing (a crash while it was replaced)"
    if isinstance(problem, tuple):
        return (*problem, "")
    fallback = _read_one(previous) if previous.is_file() else "there is no earlier one"
    if isinstance(fallback, tuple):
        return (
            *fallback,
            f"{latest} is {problem}: restored the snapshot before it ({len(fallback[1])} shards merged); "
            "the shards merged after it are computed again",
        )
    raise InputError(
        f"{latest}: {problem}, and {fallback}; remove {latest} (and {previous}) to redo this attribution "
        "from the start, or use another output directory"
    )


class Reducer:
    def __init__(self, out_dir: str | Path, meta: dict, snapshot_every: int = 4, run_key: str = ""):
        if snapshot_every < 1:
            raise InputError(f"reducer.snapshot_every: must be >= 1, got {snapshot_every}")
        self.out_dir, self.meta, self.snapshot_every, self.run_key = Path(out_dir), dict(meta), snapshot_every, run_key
        self.partial, self.ledger = PartialScores(), {}
        self.since_snapshot = 0
        self.restore_seconds, self.note = None, ""
        self.timer = StageTimer()
        start = time.perf_counter()
        found = read_snapshot(self.out_dir)
        if found is not None:
            partial, ledger, key, self.note = found
            if key != run_key:
                raise InputError(
                    f"{self.out_dir / SNAPSHOT}: a snapshot of another run (key {key or 'none'}, this run "
                    f"{run_key or 'none'}); resume that run with the same settings, or use another output directory"
                )
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

    def node(self) -> str:
        """The Ray node this reducer writes from."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def ledger_stats(self) -> dict[str, dict]:
        return dict(self.ledger)

    def status(self) -> dict:
        return {
            "merged": len(self.ledger),
            "unsnapshotted": self.since_snapshot,
            "restore_seconds": self.restore_seconds,
            "note": self.note,
        }

    def snapshot(self) -> Path:
        ledger, key = json.dumps(self.ledger).encode(), self.run_key.encode()
        table = partial_to_arrow(self.partial)
        table = table.replace_schema_metadata(
            {
                **(table.schema.metadata or {}),
                LEDGER_KEY: ledger,
                RUN_KEY: key,
                CHECKSUM_KEY: _checksum(table, ledger, key).encode(),
            }
        )
        latest = self.out_dir / SNAPSHOT
        if latest.is_file():  # kept as the fallback should the new one be damaged
            os.replace(latest, self.out_dir / PREVIOUS)
        path = write_scores(latest, table)
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
