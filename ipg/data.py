"""Examples (prompts with optional reference answers) read from and written to JSONL or Parquet.

An example is a dict with at least ``prompt`` (str); ``id`` (str) is taken from the file or derived
from the line number, and must be unique because shards, ledgers and results are keyed by it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ipg.errors import InputError
from ipg.files import atomic_write_text


def _check_example(record, where: str, required: tuple[str, ...]) -> dict:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object with a 'prompt' field, got {type(record).__name__}")
    for field in required:
        if field not in record or record[field] is None:
            raise InputError(f"{where}: field '{field}' is missing; every example needs a '{field}'")
    if not isinstance(record["prompt"], str) or not record["prompt"]:
        raise InputError(f"{where}: field 'prompt' must be a non-empty string")
    return record


def load_examples(path: str | Path, required: tuple[str, ...] = ("prompt",)) -> list[dict]:
    """Read examples from ``.jsonl`` (one JSON object per line) or ``.parquet``.

    Raises InputError naming the file, line (or row) and field for: a missing file, a malformed line,
    a missing required field, a non-string prompt, duplicate ids, an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found; pass an existing .jsonl or .parquet file of examples")
    examples = []
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for row, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            record = _check_example(record, f"{path}: row {row}", required)
            examples.append({"id": str(record.get("id") or f"row-{row}"), **{k: v for k, v in record.items() if k != "id"}})
    else:
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}: line {line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
                record = _check_example(record, where, required)
                examples.append({"id": str(record.get("id") or f"line-{line_no}"), **{k: v for k, v in record.items() if k != "id"}})
    if not examples:
        raise InputError(f"{path}: no examples; the file must hold at least one example with a 'prompt'")
    seen: set[str] = set()
    for ex in examples:
        if ex["id"] in seen:
            raise InputError(f"{path}: duplicate id '{ex['id']}'; ids must be unique")
        seen.add(ex["id"])
    return examples


def write_jsonl(path: str | Path, examples: list[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples))
