"""Per-component score tables: accumulation, the results schema, selection and overlap.

``PartialScores`` holds, per site, the sum and sum of squares of per-prompt scores and the prompt and
trajectory counts. Merging adds them: associative, commutative, with the empty table as identity, so
shards can be reduced in any order (idempotency per shard id is the reducer's job).

A site's sums cover every component (index i at position i), or only some of them, named by
``indices``: the per-component path scores a site's candidates, not all of its components.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ipg.errors import InputError
from ipg.files import atomic_write_bytes
from ipg.sites import ComponentId, Site

STATS_KEY = b"ipg.shard"  # a shard partial's statistics in its Arrow schema metadata (gradient worker -> reducer)

# fmt: off
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("model", pa.string()), ("layer", pa.int32()), ("kind", pa.string()),
    ("index", pa.int32()), ("component", pa.string()), ("score", pa.float64()), ("stderr", pa.float64()),
    ("n_prompts", pa.int64()), ("n_trajectories", pa.int64()), ("rank", pa.int32()), ("signal", pa.string()),
    ("method", pa.string()), ("q", pa.int32()), ("schedule", pa.string()), ("baseline", pa.string()),
    ("advantage", pa.string()), ("positions", pa.string()), ("seed", pa.int64()),
])
# fmt: on


@dataclass
class SiteSums:
    total: np.ndarray  # (width,) float64: sum over prompts of per-prompt scores
    total_sq: np.ndarray  # (width,) float64
    n_prompts: int = 0
    n_trajectories: int = 0
    indices: tuple[int, ...] | None = None  # the components scored, in order; None: all, 0..width-1

    def add(self, other: "SiteSums") -> "SiteSums":
        if self.indices != other.indices:
            raise ValueError("scores: partials of one site score different components; they cannot be merged")
        return SiteSums(
            self.total + other.total,
            self.total_sq + other.total_sq,
            self.n_prompts + other.n_prompts,
            self.n_trajectories + other.n_trajectories,
            self.indices,
        )

    def components(self) -> list[int]:
        return list(range(len(self.total))) if self.indices is None else list(self.indices)


@dataclass
class PartialScores:
    sites: dict[Site, SiteSums] = field(default_factory=dict)

    def add_prompt(self, site: Site, score: np.ndarray, n_trajectories: int, indices=None) -> None:
        """One prompt's scores; ``indices``: the components they belong to, when not all of the site's."""
        s = np.asarray(score, dtype=np.float64)
        one = SiteSums(s.copy(), s * s, 1, n_trajectories, None if indices is None else tuple(int(i) for i in indices))
        self.sites[site] = self.sites[site].add(one) if site in self.sites else one

    def merge(self, other: "PartialScores") -> "PartialScores":
        out = dict(self.sites)
        for site, sums in other.sites.items():
            out[site] = out[site].add(sums) if site in out else sums
        return PartialScores(out)

    def means(self, site: Site, width: int | None = None) -> np.ndarray:
        """Mean per-prompt score of each scored component, in the order of ``SiteSums.components``; with
        ``width``, a vector over all the site's components, NaN where a component was not scored."""
        s = self.sites[site]
        mean = s.total / max(s.n_prompts, 1)
        if width is None or (s.indices is None and width == len(mean)):
            return mean
        out = np.full(width, np.nan)
        out[s.components()] = mean
        return out

    def table(self, meta: dict) -> pa.Table:
        """The results table: one row per component, ranked within its site by signed score."""
        cols: dict[str, list] = {name: [] for name in SCHEMA.names}
        for site in sorted(self.sites):
            s = self.sites[site]
            m = max(s.n_prompts, 1)
            mean = s.total / m
            var = np.maximum(s.total_sq / m - mean * mean, 0.0) * (m / (m - 1) if m > 1 else 0.0)
            stderr = np.sqrt(var / m)
            index = s.components()
            rank = np.empty(len(mean), dtype=np.int64)
            rank[sorted(range(len(mean)), key=lambda j: (-mean[j], index[j]))] = np.arange(1, len(mean) + 1)
            n = len(mean)
            cols["layer"] += [site.layer] * n
            cols["kind"] += [site.kind] * n
            cols["index"] += index
            cols["component"] += [str(ComponentId(site.layer, site.kind, i)) for i in index]
            cols["score"] += mean.tolist()
            cols["stderr"] += stderr.tolist()
            cols["n_prompts"] += [s.n_prompts] * n
            cols["n_trajectories"] += [s.n_trajectories] * n
            cols["rank"] += rank.tolist()
            for key in (
                "run_id",
                "model",
                "signal",
                "method",
                "q",
                "schedule",
                "baseline",
                "advantage",
                "positions",
                "seed",
            ):
                cols[key] += [meta.get(key)] * n
        return pa.table(cols, schema=SCHEMA)


def write_scores(path: str | Path, table: pa.Table) -> Path:
    """Write the table as Parquet atomically (a reader never sees a partial file)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def select(
    table: pa.Table, p: int, *, by: str = "top", layer: int | None = None, kind: str | None = None
) -> list[ComponentId]:
    """The p selected components of one site: ``top`` (highest signed score, the paper), ``abs``
    (largest |score|), ``bottom`` (lowest). Ties break by index."""
    if by not in ("top", "abs", "bottom"):
        raise InputError(f"select.by: unknown '{by}'; use 'top', 'abs' or 'bottom'")
    rows = table.to_pylist()
    if layer is not None:
        rows = [r for r in rows if r["layer"] == layer]
    if kind is not None:
        rows = [r for r in rows if r["kind"] == kind]
    if len({(r["layer"], r["kind"]) for r in rows}) != 1:
        raise InputError("select: the table holds several sites; pass layer= and kind= to pick one")
    if not 0 < p <= len(rows):
        raise InputError(f"select.p: must be in 1..{len(rows)}, got {p}")
    key = {
        "top": lambda r: (-r["score"], r["index"]),
        "abs": lambda r: (-abs(r["score"]), r["index"]),
        "bottom": lambda r: (r["score"], r["index"]),
    }[by]
    return [ComponentId(r["layer"], r["kind"], r["index"]) for r in sorted(rows, key=key)[:p]]


def dice(a, b) -> float:
    """Dice overlap 2|A & B| / (|A| + |B|) of two selections (1.0 for two empty sets)."""
    a, b = set(a), set(b)
    return 1.0 if not a and not b else 2 * len(a & b) / (len(a) + len(b))


# fmt: off
PARTIAL_SCHEMA = pa.schema([
    ("layer", pa.int32()), ("kind", pa.string()), ("index", pa.int32()), ("total", pa.float64()),
    ("total_sq", pa.float64()), ("n_prompts", pa.int64()), ("n_trajectories", pa.int64()), ("scored", pa.bool_()),
])
# fmt: on  # scored: the site's rows are the components named by index (a subset), not all of them


def partial_to_arrow(partial: PartialScores, metadata: dict[str, str] | None = None) -> pa.Table:
    """Lossless Arrow form of a PartialScores (float64 sums), for snapshots and transport."""
    cols: dict[str, list] = {name: [] for name in PARTIAL_SCHEMA.names}
    for site in sorted(partial.sites):
        s = partial.sites[site]
        n = len(s.total)
        cols["layer"] += [site.layer] * n
        cols["kind"] += [site.kind] * n
        cols["index"] += s.components()
        cols["total"] += s.total.tolist()
        cols["total_sq"] += s.total_sq.tolist()
        cols["n_prompts"] += [s.n_prompts] * n
        cols["n_trajectories"] += [s.n_trajectories] * n
        cols["scored"] += [s.indices is not None] * n
    return pa.table(cols, schema=PARTIAL_SCHEMA.with_metadata(metadata or {}))


def partial_from_arrow(table: pa.Table) -> PartialScores:
    out = PartialScores()
    rows = table.to_pydict()
    by_site: dict[Site, list[int]] = {}
    for i, (layer, kind) in enumerate(zip(rows["layer"], rows["kind"])):
        by_site.setdefault(Site(layer, kind), []).append(i)
    scored = rows.get("scored") or [False] * len(rows["layer"])  # absent in snapshots written before it existed
    for site, idx in by_site.items():  # rows keep the order they were written in
        out.sites[site] = SiteSums(
            np.array([rows["total"][i] for i in idx]),
            np.array([rows["total_sq"][i] for i in idx]),
            rows["n_prompts"][idx[0]],
            rows["n_trajectories"][idx[0]],
            tuple(rows["index"][i] for i in idx) if scored[idx[0]] else None,
        )
    return out
