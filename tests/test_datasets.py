"""Datasets in their published formats: field mapping, GSM8K / MATH references, JSONL, Parquet and
Hugging Face dataset directories; answer extraction by ordered formats or a user regex."""

import json

import pytest

from ipg.answers import Extractor, answers_match, reference_answer
from ipg.data import load_examples
from ipg.errors import InputError

pytestmark = pytest.mark.unit

GSM8K = [
    {
        "question": "Natalia sold 48 clips in April and half as many in May. How many altogether?",
        "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72",
    },
    {"question": "What is 1,000 + 234?", "answer": "1,000 + 234 = 1,234\n#### 1,234"},
]
MATH = [
    {
        "problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.",
        "solution": "We get $\\boxed{\\frac{3}{4}}$.",
        "level": "Level 1",
    },
    {"problem": "Simplify $x+x$.", "solution": "First \\boxed{x} wrong; so $\\boxed{2x}$."},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_layout_maps_fields_and_reads_the_answer_after_hashes(tmp_path):
    f = _jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    ex = load_examples(f, ("prompt", "answer"), fields={"prompt": "question"}, reference="gsm8k")
    assert [e["answer"] for e in ex] == ["72", "1,234"] and ex[0]["prompt"] == GSM8K[0]["question"]
    assert ex[0]["question"] == GSM8K[0]["question"] and ex[0]["id"] == "line-1"  # the record's own fields stay
    assert [e["answer"] for e in load_examples(f, fields={"prompt": "question"})] == ["72", "1,234"]  # auto
    with pytest.raises(
        InputError, match=r"gsm8k\.jsonl: line 1: field 'prompt' is missing; every example needs it, or map"
    ):
        load_examples(f)


def test_math_layout_reads_the_last_boxed(tmp_path):
    f = _jsonl(tmp_path / "math.jsonl", MATH)
    ex = load_examples(f, ("prompt", "answer"), fields={"prompt": "problem", "answer": "solution"}, reference="math")
    assert [e["answer"] for e in ex] == ["\\frac{3}{4}", "2x"] and ex[0]["level"] == "Level 1"
    with pytest.raises(InputError, match=r"math\.jsonl: line 1: field 'solution' has no '#### answer' line"):
        load_examples(f, fields={"prompt": "problem", "answer": "solution"}, reference="gsm8k")
    with pytest.raises(InputError, match=r"line 1: field 'answer' \(data.fields.answer\) is missing"):
        load_examples(f, ("prompt", "answer"), fields={"prompt": "problem", "answer": "answer"})
    with pytest.raises(InputError, match=r"data.fields.question: unknown"):
        load_examples(f, fields={"question": "problem"})


def test_parquet_and_a_dataset_directory_read_the_same_examples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = load_examples(_jsonl(tmp_path / "g.jsonl", GSM8K), fields={"prompt": "question"})
    pq.write_table(pa.Table.from_pylist(GSM8K), tmp_path / "g.parquet")
    parquet = load_examples(tmp_path / "g.parquet", fields={"prompt": "question"})
    strip = lambda rows: [{k: v for k, v in r.items() if k != "id"} for r in rows]  # noqa: E731
    assert strip(parquet) == strip(jsonl) and parquet[0]["id"] == "row-1"
    datasets = pytest.importorskip("datasets")
    d = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(GSM8K), "test": datasets.Dataset.from_list(GSM8K[:1])}
    )
    d.save_to_disk(str(tmp_path / "gsm8k"))
    train = load_examples(tmp_path / "gsm8k", fields={"prompt": "question"}, split="train")
    assert strip(train) == strip(jsonl)
    assert len(load_examples(tmp_path / "gsm8k", fields={"prompt": "question"}, split="test")) == 1
    with pytest.raises(InputError, match=r"choose a split of this dataset \(train, test\)"):
        load_examples(tmp_path / "gsm8k", fields={"prompt": "question"})
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match=r"plain: a directory, but not a Hugging Face dataset"):
        load_examples(tmp_path / "plain")
    with pytest.raises(InputError, match=r"a split \('train'\) applies to a Hugging Face dataset directory"):
        load_examples(tmp_path / "g.parquet", split="train")


def test_a_broken_parquet_file_is_one_error(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"bad\.parquet: not a readable Parquet file"):
        load_examples(tmp_path / "bad.parquet")


@pytest.mark.parametrize(
    "formats, pattern, completion, expected",
    [
        (("hash", "boxed", "answer_is"), None, "42 + 25 = 67.", None),  # strict: prose states no final answer
        (("hash", "boxed", "answer_is", "last_number"), None, "42 + 25 = 67.", "67"),
        (("hash", "boxed", "answer_is", "last_number"), None, "so 1,234 apples, then #### 12", "12"),  # order decides
        (("last_number",), None, "It is -3.5 or 1/2 of it", "1/2"),
        (("last_number",), None, "no digits here", None),
        (("hash",), r"Final: (\w+)", "Final: abc\n#### 7\nFinal: xyz", "xyz"),  # the pattern comes first
        (("hash",), r"Final: \w+", "Final: abc", "Final: abc"),  # no group: the whole match
    ],
)
def test_extractor_formats_in_order_and_user_regex(formats, pattern, completion, expected):
    assert Extractor(formats, pattern).extract(completion) == expected


def test_extractor_errors_name_the_setting():
    with pytest.raises(InputError, match=r"answers.formats: unknown 'xml'"):
        Extractor(("xml",))
    with pytest.raises(InputError, match=r"answers.pattern: '\(' is not a valid regular expression"):
        Extractor(("hash",), "(")
    with pytest.raises(InputError, match=r"answers.formats: give at least one format"):
        Extractor(())
    from ipg.answers import register_format

    with pytest.raises(ValueError, match=r"answer format 'hash' is already registered"):
        register_format("hash")(lambda text: [])


@pytest.mark.parametrize(
    "predicted, reference, same",
    [
        ("\\frac{\\pi}{2}", "\\pi/2", True),  # symbolic, through math-verify
        ("1+x^2", "x^2+1", True),
        ("2x", "x+x", True),
        ("x^2", "x^3", False),
        ("72", "1,234", False),
        ("1,234", "1,234", True),
    ],
)
def test_answers_compare_numbers_exactly_and_expressions_symbolically(predicted, reference, same):
    assert answers_match(predicted, reference) is same


def test_reference_formats():
    assert reference_answer("steps\n#### 7") == reference_answer("7") == "7"
    assert reference_answer("so \\boxed{\\frac{1}{2}}", "auto") == "\\frac{1}{2}"
    assert reference_answer(" 42 ", "plain") == "42"
    with pytest.raises(InputError, match=r"data.reference: 'csv'"):
        reference_answer("1", "csv")
