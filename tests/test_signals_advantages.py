import math

import pytest
import torch

from ipg.advantages import advantages
from ipg.errors import InputError
from ipg.paths import schedule
from ipg.signals import Signal, make_signal, register_signal, signal_names

pytestmark = pytest.mark.unit


def test_grpo_mean_rloo_none():
    r = [1.0, 0.0, 0.0, 1.0, 1.0]
    mean = sum(r) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / 4)
    assert advantages(r, "grpo") == pytest.approx([(x - mean) / (std + 1e-6) for x in r])
    assert advantages(r, "mean") == pytest.approx([x - mean for x in r])
    assert advantages(r, "rloo") == pytest.approx([x - (sum(r) - x) / 4 for x in r])
    assert advantages(r, "none") == r


@pytest.mark.parametrize("kind", ["grpo", "mean", "rloo"])
def test_equal_rewards_give_exact_zeros_not_nan(kind):
    assert advantages([0.7, 0.7, 0.7], kind) == [0.0, 0.0, 0.0]
    assert advantages([3.0], kind) == [0.0]


def test_non_finite_rewards_and_unknown_kind():
    with pytest.raises(InputError, match="not finite"):
        advantages([1.0, float("inf")])
    with pytest.raises(InputError, match="advantage: unknown 'ppo'"):
        advantages([1.0, 0.0], "ppo")


def test_builtin_signals():
    acc = make_signal("accuracy")
    assert acc(["#### 5", "#### 4", "no"], [{"answer": "5"}] * 3, [2, 2, 2]) == [1.0, 0.0, 0.0]
    length = make_signal("length", a=1.0, b=2.0, c=3.0, sign=-1)
    assert length(["", ""], [{}, {}], [2, 10]) == [-(4 + 4 + 3), -(100 + 20 + 3)]
    refl = make_signal("reflection", keywords=["wait", "double check", "check"])
    assert refl(["Wait, let me double check. wait! checked"], [{}], [1]) == [3.0]  # 'checked' is no keyword
    custom = make_signal(lambda completion, example: len(completion) + example["bonus"])
    assert custom(["abc"], [{"bonus": 1}], [3]) == [4.0]
    assert {"accuracy", "length", "reflection", "reward_model"} <= set(signal_names())


def test_signal_errors_name_the_parameter():
    with pytest.raises(InputError, match="signal: unknown 'vibes'"):
        make_signal("vibes")
    with pytest.raises(InputError, match="monotone"):
        make_signal("length", a=-1.0)
    with pytest.raises(InputError, match="signal.params"):
        make_signal("accuracy", nonsense=1)
    with pytest.raises(ValueError, match="already registered"):
        register_signal("accuracy")(Signal)


def test_reward_model_signal_on_a_tiny_local_model(tmp_path):
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from ipg.organism.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    dims = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1)
    cfg = Qwen2Config(vocab_size=len(tok), num_labels=1, pad_token_id=tok.pad_token_id, **dims)
    rm = Qwen2ForSequenceClassification(cfg).eval()
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    sig = make_signal("reward_model", model=str(tmp_path / "rm"), batch_size=2)
    completions = ["12+3=15\n#### 15\n", "no", "#### 7"]
    examples = [{"prompt": "12+3\n"}] * 3
    scores = sig(completions, examples, [0, 0, 0])
    with torch.no_grad():  # independent reference: one unpadded sequence at a time
        ref = [
            rm(torch.tensor([tok(ex["prompt"] + c)["input_ids"]])).logits[0, 0].item()
            for c, ex in zip(completions, examples)
        ]
    assert scores == pytest.approx(ref, abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == 3
    with pytest.raises(InputError, match="signal.params.model"):
        make_signal("reward_model", model=str(tmp_path / "missing"))


@pytest.mark.parametrize("name", ["uniform", "gauss_legendre", "geometric"])
def test_schedules_are_quadratures_on_0_1(name):
    nodes = schedule(name, 6)
    assert sum(w for _, w in nodes) == pytest.approx(1.0)
    assert all(0 < a <= 1 for a, _ in nodes) and [a for a, _ in nodes] == sorted(a for a, _ in nodes)
    integral = sum(w * a**2 for a, w in nodes)  # int_0^1 a^2 = 1/3
    # geometric spends its nodes near 0 (one step covers [0.5, 1]), so it is the coarsest on a smooth integrand
    assert integral == pytest.approx(1 / 3, abs={"uniform": 0.1, "gauss_legendre": 1e-12, "geometric": 0.25}[name])
    assert schedule(name, 6, method="pg") == [(1.0, 1.0)]
    assert schedule("uniform", 4) == [(0.25, 0.25), (0.5, 0.25), (0.75, 0.25), (1.0, 0.25)]
    assert schedule("geometric", 3)[0] == (0.25, 0.25)
