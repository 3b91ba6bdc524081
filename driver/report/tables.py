"""The tables an ``ipg run`` writes, their schemas, and the rows it collects for them.

| file | one row per |
|---|---|
| scores.parquet | component of every attribution (the run's method, the baselines, the variants) |
| eval.parquet | evaluation: experiment, method, layer, p, gamma, seed, random draw |
| eval_items.parquet | evaluation and eval prompt (intervals and paired comparisons are computed from these) |
| selections.parquet | component of every evaluated selection |
| massive.parquet | massive-activation coordinate per layer and seed |
| cards.parquet | top component of the run's method per signal (accuracy, length, ...), with its top-activating contexts |
| card_terms.parquet | per-position score term of those components on a few prompts, with the token it lands on |
| completions.parquet | kept completion: the first eval prompts of each first-seed evaluation (the report's side-by-side texts) |
| stability.parquet | Dice overlap of two top-p sets |

Every file is written atomically; the report is rebuilt from them alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from ipg.scores import write_scores

# fmt: off
# the setting of one evaluation: which experiment, selection method, layer, p, gamma, seed and random draw
SETTING = [
    ("experiment", pa.string()), ("method", pa.string()), ("layer", pa.int32()), ("p", pa.int32()),
    ("gamma", pa.float64()), ("seed", pa.int64()), ("draw", pa.int32()),
]
EVAL_SCHEMA = pa.schema(SETTING + [
    ("accuracy", pa.float64()), ("mean_length", pa.float64()), ("n", pa.int64()),
    ("reflection_share", pa.float64()), ("cut_off_share", pa.float64()), ("loop_share", pa.float64()),
    ("answered_share", pa.float64()),
])
ITEM_SCHEMA = pa.schema(SETTING + [
    ("example_id", pa.string()), ("correct", pa.bool_()), ("answered", pa.bool_()), ("length", pa.int32()),
    ("reflection", pa.bool_()), ("finished", pa.bool_()), ("looped", pa.bool_()),
])
SELECTION_SCHEMA = pa.schema([
    ("experiment", pa.string()), ("method", pa.string()), ("layer", pa.int32()), ("kind", pa.string()),
    ("p", pa.int32()), ("seed", pa.int64()), ("draw", pa.int32()), ("rank", pa.int32()), ("index", pa.int64()),
    ("median_ratio", pa.float64()), ("massive", pa.bool_()),
])
MASSIVE_SCHEMA = pa.schema([("layer", pa.int32()), ("seed", pa.int64()), ("index", pa.int64()), ("median_ratio", pa.float64())])
CARD_SCHEMA = pa.schema([
    ("layer", pa.int32()), ("kind", pa.string()), ("rank", pa.int32()), ("index", pa.int64()),
    ("method", pa.string()), ("median_ratio", pa.float64()), ("contexts", pa.string()), ("signal", pa.string()),
])
CARD_TERM_SCHEMA = pa.schema([
    ("layer", pa.int32()), ("kind", pa.string()), ("component", pa.int64()), ("example_id", pa.string()),
    ("sample", pa.int32()), ("step", pa.int32()), ("line", pa.int32()), ("fifth", pa.int32()),
    ("term", pa.float64()), ("signal", pa.string()), ("token", pa.string()),
])
COMPLETION_SCHEMA = pa.schema(SETTING + [
    ("position", pa.int32()), ("example_id", pa.string()), ("prompt", pa.string()), ("completion", pa.string()),
    ("answer", pa.string()), ("correct", pa.bool_()), ("length", pa.int64()), ("finished", pa.bool_()),
])
STABILITY_SCHEMA = pa.schema([
    ("comparison", pa.string()), ("layer", pa.int32()), ("p", pa.int32()), ("a", pa.string()), ("b", pa.string()),
    ("dice", pa.float64()),
])
# fmt: on


@dataclass
class RunTables:
    scores: list[pa.Table] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    items: list[dict] = field(default_factory=list)
    selections: list[dict] = field(default_factory=list)
    massive: list[dict] = field(default_factory=list)
    cards: list[dict] = field(default_factory=list)
    card_terms: list[dict] = field(default_factory=list)
    completions: list[dict] = field(default_factory=list)
    stability: list[dict] = field(default_factory=list)

    def write(self, out: Path, setup: dict) -> None:
        """Every table under ``out``; how the evaluations were scored (``setup``) travels in eval.parquet's
        metadata, where the report reads it."""
        write_scores(out / "scores.parquet", pa.concat_tables([t.replace_schema_metadata(None) for t in self.scores]))
        evals = pa.Table.from_pylist(self.evals, schema=EVAL_SCHEMA)
        write_scores(out / "eval.parquet", evals.replace_schema_metadata({"ipg.setup": json.dumps(setup)}))
        for name, rows, schema in (
            ("eval_items", self.items, ITEM_SCHEMA),
            ("selections", self.selections, SELECTION_SCHEMA),
            ("massive", self.massive, MASSIVE_SCHEMA),
            ("cards", self.cards, CARD_SCHEMA),
            ("card_terms", self.card_terms, CARD_TERM_SCHEMA),
            ("completions", self.completions, COMPLETION_SCHEMA),
            ("stability", self.stability, STABILITY_SCHEMA),
        ):
            write_scores(out / f"{name}.parquet", pa.Table.from_pylist(rows, schema=schema))
