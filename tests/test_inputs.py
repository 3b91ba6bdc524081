"""Bad input gets one clear error naming the file, line and field (and the CLI exits 2, one line)."""

import pytest

from ipg.data import load_examples
from ipg.driver.cli import main
from ipg.errors import InputError
from ipg.models import load_model

pytestmark = pytest.mark.unit


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        load_examples(tmp_path / "nope.jsonl")


def test_malformed_line_names_the_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "1+1\\n", "answer": "2"}\n{"prompt": "2+2\\n", "answer": \n')
    with pytest.raises(InputError, match=r"bad\.jsonl: line 2: not valid JSON"):
        load_examples(f)


def test_missing_prompt_names_line_and_field(tmp_path):
    f = tmp_path / "noprompt.jsonl"
    f.write_text('{"prompt": "1+1\\n", "answer": "2"}\n\n{"question": "2+2", "answer": "4"}\n')
    with pytest.raises(InputError, match=r"noprompt\.jsonl: line 3: field 'prompt' is missing"):
        load_examples(f)


def test_missing_answer_when_required(tmp_path):
    f = tmp_path / "noanswer.jsonl"
    f.write_text('{"prompt": "1+1\\n"}\n')
    assert load_examples(f)[0] == {"id": "line-1", "prompt": "1+1\n"}
    with pytest.raises(InputError, match=r"line 1: field 'answer' is missing"):
        load_examples(f, required=("prompt", "answer"))


def test_non_string_prompt_and_duplicate_ids(tmp_path):
    f = tmp_path / "types.jsonl"
    f.write_text('{"prompt": 12}\n')
    with pytest.raises(InputError, match=r"line 1: field 'prompt' must be a non-empty string"):
        load_examples(f)
    f.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(InputError, match=r"duplicate id 'a'"):
        load_examples(f)


def test_parquet_rows_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["1+1\n", None], "answer": ["2", "3"]}), tmp_path / "d.parquet")
    with pytest.raises(InputError, match=r"d\.parquet: row 2: field 'prompt' is missing"):
        load_examples(tmp_path / "d.parquet")


def test_nonexistent_model_path(tmp_path):
    with pytest.raises(InputError, match=r"model: path '.*missing-model' does not exist"):
        load_model(str(tmp_path / "missing-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(InputError, match=r"model.dtype: 'fp8' is not supported"):
        load_model("organism", dtype="fp8")


def test_cli_prints_one_error_line_and_exits_2(tmp_path, capsys):
    code = main(["eval", "--model", str(tmp_path / "nowhere"), "--data", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "x.jsonl: file not found" in err[0]
