"""Component cards: the per-position terms add up to the component's score, and contexts are read from
the trajectories."""

import numpy as np
import pytest

from ipg.attribution import attribute, site_baselines
from ipg.cards import position_terms, top_contexts
from ipg.components import Site
from ipg.organism.card import splits

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("method, baseline", [("ipg", "zero"), ("ipg", "mean"), ("pg", "zero")])
def test_position_terms_sum_to_each_prompts_score(organism, method, baseline):
    model, tok = organism
    examples = splits()["support"][:3]
    res = attribute(
        model,
        tok,
        examples,
        layers=[2],
        q=3,
        n_samples=4,
        max_new_tokens=48,
        seed=3,
        method=method,
        baseline=baseline,
        completeness=False,
    )
    site, top = Site(2, "residual"), [int(i) for i in np.argsort(-np.abs(res.scores(2)))[:5]]
    terms = position_terms(
        model, tok, res.rollouts, site, top, res.config, site_baselines(model, res.rollouts, [site], res.config)[site]
    )
    assert terms and {t["fifth"] for t in terms} <= set(range(5)) and min(t["line"] for t in terms) == 0
    totals = {c: sum(t["term"] for t in terms if t["component"] == c) for c in top}
    # the dataset score is the mean over prompts of each prompt's sum over samples and positions
    assert np.allclose([totals[c] / len(examples) for c in top], res.scores(2)[top], rtol=1e-4, atol=1e-7)


def test_top_contexts_are_the_largest_activations_and_distinct(organism):
    model, tok = organism
    ids = tok(splits()["support"][0]["prompt"] + "12+7=19", add_special_tokens=False)["input_ids"]
    prompt_len = len(ids) - 7
    contexts = top_contexts(model, tok, Site(2, "residual"), [(ids, prompt_len)] * 2, [5, 9], k=2, window=3)
    for c in (5, 9):
        values = [x["value"] for x in contexts[c]]
        assert len(values) == 2 and values[0] >= values[1]  # distinct contexts, though the sequence is there twice
        assert len({(x["before"], x["token"], x["after"]) for x in contexts[c]}) == 2
