"""Examples (prompts with optional reference answers) read from datasets in their published formats.

An example is a dict with at least ``prompt`` (str); ``id`` (str) is taken from the file or derived
from the line number, and must be unique because shards, ledgers and results are keyed by it. The
record's own fields stay on the example (a prompt template may use them).

Inputs: JSONL (one object per line), Parquet, and a Hugging Face dataset directory written by
``save_to_disk`` (needs the ``datasets`` package; a ``DatasetDict`` needs a split). ``fields`` maps
the example's keys to the file's columns (``{"prompt": "question"}``); ``reference`` says how a
reference answer is read (``ipg.answers.reference_answer``: GSM8K's ``#### 72``, MATH's last
``\\boxed{}``, plain text, or ``auto``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ipg.answers import reference_answer
from ipg.errors import InputError
from ipg.files import atomic_write_text

KEYS = ("prompt", "answer", "id")  # what ``fields`` may map


def check_fields(fields: dict | None, key: str = "data.fields") -> dict[str, str]:
    fields = dict(fields or {})
    for k, v in fields.items():
        if k not in KEYS:
            raise InputError(f"{key}.{k}: unknown; map any of {list(KEYS)} to a column of the file")
        if not isinstance(v, str) or not v:
            raise InputError(f"{key}.{k}: expected a column name, got {v!r}")
    return fields


def _records(path: Path, split: str | None) -> Iterator[tuple[str, str, object]]:
    """(where, default id, record) for each row of the file or dataset directory."""
    if path.is_dir():
        yield from _dataset_dir(path, split)
        return
    if split is not None:
        raise InputError(
            f"{path}: a split ('{split}') applies to a Hugging Face dataset directory, not a file; remove it"
        )
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow's ArrowInvalid and kin: a broken or non-Parquet file
            raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        for row, record in enumerate(table.to_pylist(), start=1):
            yield f"{path}: row {row}", f"row-{row}", record
        return
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{path}: line {line_no}: not valid JSON ({e.msg}); each line must be one JSON object"
                ) from None
            yield f"{path}: line {line_no}", f"line-{line_no}", record


def _dataset_dir(path: Path, split: str | None) -> Iterator[tuple[str, str, object]]:
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise InputError(
            f"{path}: a directory, but not a Hugging Face dataset saved with save_to_disk "
            "(no dataset_dict.json or state.json); pass a .jsonl or .parquet file or such a directory"
        )
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"{path}: reading a Hugging Face dataset directory needs the 'datasets' package "
            "(pip install datasets), or export it to JSONL/Parquet"
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in ds:
            raise InputError(
                f"{path}: choose a split of this dataset ({', '.join(names)}) with data.support_split / "
                "data.eval_split (or --split)"
            )
        ds = ds[split]
    elif split is not None:
        raise InputError(f"{path}: holds one split only; remove the split '{split}'")
    for row, record in enumerate(ds, start=1):
        yield f"{path}: row {row}", f"row-{row}", record


def _example(
    record, where: str, required: tuple[str, ...], fields: dict[str, str], reference: str, number: str
) -> dict:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object with a 'prompt' field, got {type(record).__name__}")
    ex = dict(record)
    for key in KEYS:
        column = fields.get(key, key)
        if column in record and record[column] is not None:
            ex[key] = record[column]
        elif key != column:
            ex.pop(key, None)
    for key in required:
        if ex.get(key) is None:
            column = fields.get(key, key)
            mapped = f" (data.fields.{key})" if key in fields else ""
            raise InputError(
                f"{where}: field '{column}'{mapped} is missing; every example needs it"
                + ("" if key in fields else f", or map '{key}' to another column (data.fields, --field {key}=COLUMN)")
            )
    if not isinstance(ex.get("prompt"), str) or not ex["prompt"]:
        raise InputError(f"{where}: field '{fields.get('prompt', 'prompt')}' must be a non-empty string")
    if ex.get("answer") is not None:
        try:
            ex["answer"] = reference_answer(ex["answer"], reference)
        except InputError as e:
            raise InputError(f"{where}: field '{fields.get('answer', 'answer')}' {e}") from None
    ex["id"] = str(ex.get("id") or number)
    return ex


def load_examples(
    path: str | Path,
    required: tuple[str, ...] = ("prompt",),
    *,
    fields: dict | None = None,
    reference: str = "auto",
    split: str | None = None,
) -> list[dict]:
    """Read examples from JSONL, Parquet or a Hugging Face dataset directory (module note).

    Raises InputError naming the file, line (or row) and field for: a missing file, a malformed line,
    a missing required field, a non-string prompt, a reference not in the named format, duplicate ids,
    an empty file.
    """
    path = Path(path)
    fields = check_fields(fields)
    if not path.exists():
        raise InputError(
            f"{path}: file not found; pass an existing .jsonl or .parquet file of examples, or a "
            "Hugging Face dataset directory"
        )
    examples = []
    for where, default_id, record in _records(path, split):
        examples.append(_example(record, where, required, fields, reference, default_id))
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
