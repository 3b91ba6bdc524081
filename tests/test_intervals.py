"""Bootstrap intervals over eval prompts and seeds, the control range and the paired comparison with
random that the report's headline is built from."""

import numpy as np
import pytest
from scipy.stats import bootstrap

from ipg.driver.report.headline import control_gammas, headline, outcome_matrices, verdict
from ipg.intervals import CONFIDENCE, RESAMPLES, SEED, difference_interval, mean_interval

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)


def test_one_seed_is_scipys_bca_interval_over_prompts():
    y = (RNG.random(120) < 0.3).astype(float)
    ours = mean_interval(y)
    ref = bootstrap(
        (y,),
        np.mean,
        vectorized=False,
        confidence_level=CONFIDENCE,
        n_resamples=RESAMPLES,
        method="BCa",
        random_state=np.random.default_rng(SEED),
    ).confidence_interval
    assert ours.estimate == y.mean() and (ours.low, ours.high) == (ref.low, ref.high)
    assert ours.low < y.mean() < ours.high and 0.1 < ours.high - ours.low < 0.2  # ~ 2 x 1.96 x sqrt(.3 x .7 / 120)
    assert mean_interval(np.ones(40)).as_dict() == {
        "estimate": 1.0,
        "low": 1.0,
        "high": 1.0,
        "n_prompts": 40,
        "n_seeds": 1,
    }


def test_pairing_on_prompts_narrows_a_difference():
    base = (RNG.random(200) < 0.5).astype(float)
    better = base.copy()
    better[RNG.choice(np.flatnonzero(base == 0), 12, replace=False)] = 1.0  # 12 prompts flip to correct, none back
    paired = difference_interval(better, base)
    assert paired.estimate == pytest.approx(0.06) and paired.low > 0  # every change goes one way: clearly above 0
    unpaired = bootstrap(
        (better, base),
        lambda a, b: a.mean() - b.mean(),
        vectorized=False,
        n_resamples=2000,
        random_state=np.random.default_rng(1),
    ).confidence_interval
    assert unpaired.low < 0 < unpaired.high  # the same numbers, unpaired, cannot tell
    with pytest.raises(ValueError, match="the same prompts"):
        difference_interval(better, base[:100])


def test_seeds_widen_the_interval():
    prompts = (RNG.random(100) < 0.5).astype(float)
    same = np.stack([prompts] * 4)
    shifted = np.stack([np.clip(prompts + d, 0, 1) for d in (-1, 0, 0, 1)])  # seeds that disagree wholesale
    a, b = mean_interval(same), mean_interval(shifted)
    assert a.n_seeds == 4 and b.high - b.low > 2 * (a.high - a.low)
    assert a.low < 0.5 < a.high


def _items(method, layer, p, gamma, seed, correct, draw=0, answered=None):
    return [
        {
            "experiment": "accuracy",
            "method": method,
            "layer": layer,
            "p": p,
            "gamma": gamma,
            "seed": seed,
            "draw": draw,
            "example_id": f"e{i:03d}",
            "correct": bool(c),
            "answered": True if answered is None else answered[i],
            "length": 10,
            "reflection": False,
        }
        for i, c in enumerate(correct)
    ]


def test_headline_ranks_control_not_suppression():
    n = 80
    base = RNG.random(n) < 0.4
    items = _items("original", -1, 0, 1.0, 0, base)
    breaks = np.zeros(n, bool)  # a massive coordinate: any scaling wrecks every answer
    controls_up, controls_down = base | (RNG.random(n) < 0.5), base & (RNG.random(n) < 0.2)
    for seed in (0, 1):
        items += _items("activation", 5, 4, 0.0, seed, breaks) + _items("activation", 5, 4, 2.0, seed, breaks)
        items += _items("pg", 5, 4, 0.0, seed, controls_down) + _items("pg", 5, 4, 2.0, seed, controls_up)
        for draw in range(5):
            items += _items("random", 5, 4, 0.0, seed, base, draw) + _items("random", 5, 4, 2.0, seed, base, draw)
    assert control_gammas(outcome_matrices(items)) == (2.0, 0.0)
    assert outcome_matrices(items)[("random", 5, 4, 0.0)].shape == (10, n)  # 2 seeds x 5 draws
    lines, records = headline(items, flags={("activation", 5, 4): 1.0})
    by = {r["method"]: r for r in records}
    assert by["activation"]["suppressed"].estimate == 0.0  # suppression alone: 'the strongest'
    assert by["activation"]["range"].estimate == 0.0 and by["activation"]["vs_random"].high <= 0.01
    assert by["pg"]["range"].low > 0.3 and by["pg"]["vs_random"].low > 0.3
    text = "\n".join(lines)
    assert "| activation | 0.0 [0.0, 0.0] |" in text and "| 100% |" in text
    assert "Control range beyond random's" in text and "pg at 1 of 1 settings (largest: layer 5, p 4" in text
    assert "activation at" not in text.split("beyond random's")[1] and "Strongest: pg at layer 5, p 4." in text
    assert "| pg | **" in text.split("At a glance")[1]


def test_verdict_says_plainly_when_nothing_beats_random():
    items = _items("original", -1, 0, 1.0, 0, [1, 0] * 20)
    for m in ("ipg", "random"):
        items += _items(m, 3, 8, 0.0, 0, [1, 0] * 20) + _items(m, 3, 8, 1.5, 0, [1, 1, 0, 0] * 10)
    _, records = headline(items)
    assert verdict(records)[0].startswith("**No selection controls accuracy beyond random**")
    assert "Closest: ipg at layer 3, p 8" in verdict(records)[0]


def test_massive_coordinates_are_an_order_of_magnitude_above_the_median():
    from ipg.massive import massive_components, median_ratio

    mean_abs = np.full(576, 6.0)
    mean_abs[[507, 247, 371]] = [174.0, 116.0, 43.0]  # SmolLM2 layer 22's largest: 27x, 18x and 7x the median
    assert massive_components(mean_abs) == [507, 247]  # largest first; 7x is not an order of magnitude
    assert median_ratio(mean_abs)[371] == pytest.approx(43 / 6) and massive_components(np.zeros(8)) == []


def test_a_low_original_accuracy_is_called_a_floor():
    low = _items("original", -1, 0, 1.0, 0, [1] + [0] * 9)
    for m in ("pg", "random"):
        low += _items(m, 3, 4, 0.0, 0, [0] * 10) + _items(m, 3, 4, 2.0, 0, [1, 1] + [0] * 8)
    assert "suppression can lower it by at most 10 points" in "\n".join(headline(low)[0])
    high = [{**r, "correct": True} if r["method"] == "original" else r for r in low]
    assert "at most" not in "\n".join(headline(high)[0])
