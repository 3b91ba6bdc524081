"""The step-by-step word problems: worked solutions that compute, disjoint splits, the shipped files as
the generator writes them, and fresh problems (the named SAEs' data) outside the splits."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ipg.answers import reference_answer
from ipg.word_problems import LEVELS, fresh, problems, splits

pytestmark = pytest.mark.unit
DATA = Path(__file__).resolve().parents[1] / "deploy" / "data" / "word-problems"


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_worked_step_computes_and_ends_in_the_answer(level):
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for r in problems(level, 200):
        *steps, last = r["answer"].split("\n")
        assert len(steps) == LEVELS[level][2] and r["question"].endswith("Think step by step.")
        for step in steps:
            a, op, b, result = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (\d+)", step).groups()
            assert ops[op](int(a), int(b)) == int(result) >= 0
        assert last == f"#### {steps[-1].split(' = ')[1]}" and reference_answer(r["answer"], "gsm8k") == last[5:]


def test_splits_are_disjoint_and_fresh_problems_are_outside_them():
    s = splits("easy", 128, 128)
    questions = [r["question"] for part in s.values() for r in part]
    assert len(set(questions)) == 256 and s["eval"][0]["id"] == "eval-0000"
    new = fresh("easy", 96, 0)
    assert len(new) == 96 and not {r["question"] for r in new} & set(questions)
    assert fresh("easy", 96, 0) == new  # deterministic


def test_the_shipped_files_are_what_the_script_writes(tmp_path):
    subprocess.run([sys.executable, str(DATA / "make.py"), "--out", str(tmp_path)], check=True, capture_output=True)
    for split in ("support", "eval"):
        assert (tmp_path / f"{split}.jsonl").read_text() == (DATA / f"{split}.jsonl").read_text()
    rows = [json.loads(x) for x in (DATA / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 128 and set(rows[0]) == {"id", "question", "answer"}
