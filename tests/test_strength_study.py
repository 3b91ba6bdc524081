"""The reasoning-strength study's rule, on outcomes made up so that the answer is known: a setting that
lengthens and shortens by looping is breakage and loses to one that moves length cleanly; with no clean
setting the rule names the closest and the page says no candidate passes."""

import numpy as np
import pytest

from ipg.components import ComponentId, Site
from ipg.driver.strength_config import StudyConfig, candidate
from ipg.driver.strength_page import page
from ipg.driver.strength_study import Study, random_of
from ipg.errors import InputError

pytestmark = pytest.mark.unit

TOP, ABS, RANDOM = "layers.2.residual:top", "layers.2.residual:abs", "layers.2.residual:random"
N = 8


def _outcome(selection, intervention, gamma, i, clean_mean=True):
    """(length, looped) of prompt i: scale moves length both ways by looping; mean moves it cleanly."""
    base = 100 + 3 * i
    if selection == TOP and intervention == "scale" and gamma != 1.0:
        return base + (-40 if gamma < 1 else 40) + i % 3, True
    if selection == TOP and intervention == "mean" and gamma != 1.0:
        step = 20 if clean_mean else 0
        return base + (-step if gamma < 1 else step) + i % 2, False
    return base + (i % 2 if gamma != 1.0 else 0), False


def _study(clean_mean=True):
    st = Study.__new__(Study)
    st.sc = StudyConfig(candidates=(TOP, ABS), interventions=("scale", "mean"), gammas=(0.0, 2.0), n_dev=N, n_test=N)
    st.split = {s: [{"id": f"{s}{i}"} for i in range(N)] for s in ("dev", "test")}
    st.seeds_of, st.gammas_of = {"dev": (0, 1), "test": (0, 1)}, {"dev": (0.0, 2.0), "test": (0.0, 2.0)}
    st.rows, st.timings = [], {"wall": 60.0, "attribution": 30.0, "evaluation_dev": 20.0, "evaluation_test": 10.0}
    for split in ("dev", "test"):
        for i in range(N):
            keys = [("unsteered", "none", 1.0, -1)] + [
                (sel, iv, g, seed)
                for sel in (TOP, ABS, RANDOM)
                for iv in ("scale", "mean")
                for g in (0.0, 2.0)
                for seed in (0, 1)
            ]
            for sel, iv, g, seed in keys:
                length, looped = _outcome(sel, iv, g, i, clean_mean)
                st.rows.append(
                    dict(split=split, selection=sel, intervention=iv, gamma=g, seed=seed, example_id=f"{split}{i}",
                         length=length, cut_off=False, looped=looped, answered=True, correct=False)
                )  # fmt: skip
    comps = [ComponentId(2, "residual", i) for i in range(4)]
    st.selections = {(s, sel): (comps, None) for s in (0, 1) for sel in (TOP, ABS, RANDOM)}
    st.stats = {(s, Site(2, "residual")): {"mean": np.ones(128), "mean_abs": np.arange(1, 129.0)} for s in (0, 1)}
    return st


def test_the_rule_prefers_clean_control_to_a_larger_move_made_of_loops():
    st = _study()
    choice, tier, found = st.choose()
    assert (choice["selection"], choice["intervention"], tier) == (TOP, "mean", "passes")
    looping = next(v for v in found if v["selection"] == TOP and v["intervention"] == "scale")
    assert looping["moves"] and not looping["keeps_text"] and looping["margin"] > choice["margin"]
    summary = st.summary(choice, tier, found, st.test_settings(choice))
    assert summary["test"]["passes"]
    text = page(summary)
    assert "every check below holds" in text and "`layers.2.residual:top` with intervention `mean`" in text
    assert "The shipped default before this study (`layers.2.residual:top`, `scale`)" in text
    assert "looping 100% (unsteered 0%): **no**" in text  # the shipped default's breakage, on the test prompts


def test_with_no_clean_setting_the_rule_names_the_closest_and_the_page_says_so():
    st = _study(clean_mean=False)
    choice, tier, _ = st.choose()
    assert (choice["selection"], choice["intervention"], tier) == (TOP, "mean", "keeps the text")  # the first of equals
    text = page(st.summary(choice, tier, [], st.test_settings(choice)))
    assert "No candidate passes every check on the test prompts" in text and "**no**" in text


def test_study_settings_are_checked():
    assert candidate("layers.22.sae:top") == (Site(22, "sae"), "top") and random_of(TOP) == RANDOM
    with pytest.raises(InputError, match="study.candidates: 'layers.22.mlp' needs ':top', ':abs' or ':heads'"):
        StudyConfig(candidates=("layers.22.mlp",))
    assert candidate("layers.22.attn:heads") == (Site(22, "attn"), "heads")
    assert random_of("layers.22.attn:heads") == "layers.22.attn:random-heads"
    with pytest.raises(InputError, match="':heads' selects attention heads; use an attn site"):
        StudyConfig(candidates=("layers.22.residual:heads",))
    with pytest.raises(InputError, match="study.heads: must be >= 1"):
        StudyConfig(heads=0)
    with pytest.raises(InputError, match="study.gammas: need gammas below and above 1 and not 1 itself"):
        StudyConfig(gammas=(0.0, 1.0, 2.0))
    with pytest.raises(InputError, match="study.interventions: unknown 'zero'"):
        StudyConfig(interventions=("zero",))


def test_the_page_gives_the_command_that_ran_and_names_selected_heads():
    st = _study()
    choice, tier, found = st.choose()
    st.sc = StudyConfig(  # as if these had run too: the page reads the config and the selections
        candidates=(TOP, "layers.2.attn:heads"), gammas=(0.0, 3.0), n_dev=N, n_test=N, interventions=("scale", "mean")
    )
    heads = [ComponentId(2, "attn", i) for i in range(32, 64)]
    st.selections[0, "layers.2.attn:heads"] = (heads, [0.25])
    st.stats[0, Site(2, "attn")] = {"mean": np.zeros(64), "mean_abs": np.ones(64)}

    class _Model:  # head_dim reads the model's config only
        config = type("C", (), {"head_dim": 32})()

    st.exp = type("E", (), {"model": _Model()})()
    text = page(st.summary(choice, tier, found, st.test_settings(choice)))
    assert (
        "ipg study strength --out runs/strength --n-dev 8 --n-test 8 --candidates layers.2.residual:top "
        "layers.2.attn:heads --interventions scale mean --gammas 0 3"
    ) in text
    assert "| 0 | layers.2.attn:heads | head 1 (+0.25) | 1.0 to 1.0 (median 1.0) | 1 | 0 of 32 |" in text
