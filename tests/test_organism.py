import json
import random
from collections import Counter

import pytest

from ipg.answers import is_correct
from ipg.driver.cli import main
from ipg.evaluation import evaluate
from ipg.models import ORGANISM_PATH
from ipg.organism import task
from ipg.organism.card import GREEDY, card_figures, splits

pytestmark = pytest.mark.unit


def test_data_command_is_deterministic_and_splits_are_disjoint(tmp_path):
    for name in ("a", "b"):
        assert main(["organism", "data", "--out", str(tmp_path / name)]) == 0
    for split in ("support", "eval"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    rows = {
        s: [json.loads(line) for line in (tmp_path / "a" / f"{s}.jsonl").read_text().splitlines()]
        for s in ("support", "eval")
    }
    assert len(rows["support"]) == 256 and len(rows["eval"]) == 500
    assert {r["prompt"] for r in rows["support"]}.isdisjoint({r["prompt"] for r in rows["eval"]})
    assert set(rows["eval"][0]) == {"id", "prompt", "answer"}
    ids = [r["id"] for r in rows["support"] + rows["eval"]]
    assert len(set(ids)) == len(ids)
    # a split of another size is a prefix of the same sequence of prompts: ids are content-derived
    assert splits(n_support=10, n_eval=5)["support"] == rows["support"][:10]


def test_teacher_traces_are_correct_when_reflective_and_vary_in_length():
    rng = random.Random(0)
    lengths, reflective_right, concise_right = Counter(), [], []
    for _ in range(3000):
        p = task.sample_problem(rng)
        trace = task.teacher_trace(p, rng)
        lengths[len(trace)] += 1
        right = is_correct(trace, str(p.answer))
        (reflective_right if "check" in trace or "wait" in trace else concise_right).append(right)
    assert all(reflective_right)  # verification always repairs dropped carries
    assert 0.3 < sum(concise_right) / len(concise_right) < 0.9  # concise traces fail at carries
    assert abs(len(reflective_right) / 3000 - task.P_REFLECT) < 0.03
    assert len(lengths) > 20


def test_hard_carries_are_dropped_more_often_than_kept():
    assert task.carry_error_probability(47, 28) == task.P_ERR_HARD > 0.5  # 7 + 8 = 15
    assert task.carry_error_probability(41, 29) == task.P_ERR_EASY < 0.5  # 1 + 9 = 10
    assert task.carry_error_probability(41, 28) == 0.0


def test_shipped_checkpoint_reproduces_its_model_card(organism):
    model, tokenizer = organism
    card = card_figures(ORGANISM_PATH)
    result = evaluate(model, tokenizer, splits()["eval"], GREEDY, keywords=task.REFLECTION_KEYWORDS, batch_size=128)
    assert abs(result.accuracy - card["greedy_accuracy"]) <= 0.02
    assert abs(result.mean_length - card["greedy_mean_length"]) <= 1.0
    # the card itself meets the organism's quality targets
    assert 0.60 <= card["greedy_accuracy"] <= 0.95
    assert card["mixed_share"] >= 0.30
    assert sum(p.numel() for p in model.parameters()) < 1_500_000
    assert model.config.hidden_size // model.config.num_attention_heads >= 32  # vLLM CPU attention


def test_organism_eval_command_prints_json(capsys, tmp_path):
    from ipg.data import write_jsonl

    data = write_jsonl(tmp_path / "few.jsonl", splits(n_support=0, n_eval=8)["eval"])
    assert main(["organism", "eval", "--data", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_eval"] == 8 and out["n_samples"] == 5
    assert 0.0 <= out["greedy_accuracy"] <= 1.0 and out["greedy_mean_length"] > 5
