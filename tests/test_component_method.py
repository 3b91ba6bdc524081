"""Method 'component' (the per-component path as an attribution method): PG's top candidates per site,
re-scored exactly; a partial table that names its components; the same scores from a given PG table."""

import numpy as np
import pytest

from ipg.attribution import AttributionConfig, attribute, site_baselines
from ipg.component_path import component_candidates, component_path_scores
from ipg.errors import InputError
from ipg.scores import PartialScores, partial_from_arrow, partial_to_arrow, select
from ipg.sites import Site

pytestmark = pytest.mark.unit

EXAMPLES = [{"id": f"e{i}", "prompt": f"{10 + 7 * i}+{21 + 3 * i}\n", "answer": "1"} for i in range(4)]
FAST = dict(n_samples=4, max_new_tokens=8, temperature=1.0, top_p=1.0, completeness=False, seed=5)


def checksum(completion, example):
    return float(sum(map(ord, completion)) % 7)


def test_component_method_rescores_pgs_top_candidates_exactly(tiny_random):
    model, tok = tiny_random
    layers, k = [0, 1], 6
    pg = attribute(model, tok, EXAMPLES, signal=checksum, layers=layers, method="pg", **FAST)
    comp = attribute(model, tok, EXAMPLES, signal=checksum, layers=layers, method="component", candidates=k, **FAST)
    rows = comp.table.to_pylist()
    assert {r["method"] for r in rows} == {"component"} and {r["q"] for r in rows} == {1}
    cfg = AttributionConfig(layers=tuple(layers), **FAST)
    rollouts = comp.rollouts
    for layer in layers:
        site = Site(layer, "residual")
        want = [c.index for c in select(pg.table, k, layer=layer, kind="residual")]
        mine = [r for r in rows if r["layer"] == layer]
        assert sorted(r["index"] for r in mine) == sorted(want)  # the table holds the candidates only
        assert sorted(r["rank"] for r in mine) == list(range(1, k + 1))
        direct = component_path_scores(
            model, rollouts, site, want, cfg, site_baselines(model, rollouts, [site], cfg)[site]
        ).mean(0)
        got = {r["index"]: r["score"] for r in mine}
        np.testing.assert_allclose([got[i] for i in want], direct, rtol=1e-6, atol=1e-9)
        assert np.abs(direct).max() > 0
        full = comp.scores(layer)  # over every component, NaN where none was computed
        assert full.shape == pg.scores(layer).shape and np.isnan(full).sum() == len(full) - k
        # the selection is the path's ranking of the candidates, not PG's
        assert [c.index for c in select(comp.table, k, layer=layer, kind="residual")] == sorted(
            want, key=lambda i: (-got[i], i)
        )


def test_component_method_takes_its_candidates_from_a_given_pg_table(tiny_random):
    model, tok = tiny_random
    pg = attribute(model, tok, EXAMPLES, signal=checksum, layers=[1], method="pg", **FAST)
    a = attribute(model, tok, EXAMPLES, signal=checksum, layers=[1], method="component", candidates=5, **FAST)
    b = attribute(
        model, tok, EXAMPLES, signal=checksum, layers=[1], method="component", candidates=5, pg_table=pg.table, **FAST
    )
    assert a.table.column("score").to_pylist() == b.table.column("score").to_pylist()
    assert a.table.column("index").to_pylist() == b.table.column("index").to_pylist()


def test_more_candidates_than_components_scores_them_all(tiny_random):
    model, tok = tiny_random
    width = len(attribute(model, tok, EXAMPLES[:1], signal=checksum, layers=[1], method="pg", **FAST).scores(1))
    table = attribute(model, tok, EXAMPLES[:1], signal=checksum, layers=[1], method="pg", **FAST).table
    assert len(component_candidates(table, [Site(1, "residual")], width + 10)[Site(1, "residual")]) == width


def test_partial_of_chosen_components_round_trips_and_refuses_to_merge_with_others():
    site = Site(3, "residual")
    a, b, other = PartialScores(), PartialScores(), PartialScores()
    a.add_prompt(site, [1.0, 2.0], 4, indices=[7, 2])
    b.add_prompt(site, [3.0, -1.0], 4, indices=[7, 2])
    other.add_prompt(site, [1.0, 1.0], 4, indices=[2, 7])
    back = partial_from_arrow(partial_to_arrow(a.merge(b)))
    assert back.sites[site].indices == (7, 2)
    np.testing.assert_allclose(back.means(site), [2.0, 0.5])
    np.testing.assert_allclose(back.means(site, width=9)[[7, 2]], [2.0, 0.5])
    assert np.isnan(back.means(site, width=9)).sum() == 7
    table = back.table({"method": "component"})
    assert table.column("index").to_pylist() == [7, 2] and table.column("rank").to_pylist() == [1, 2]
    with pytest.raises(ValueError, match="different components"):
        a.merge(other)
    dense = PartialScores()
    dense.add_prompt(site, [0.5, 0.25], 1)
    assert partial_from_arrow(partial_to_arrow(dense)).sites[site].indices is None


def test_bad_candidates_setting_names_the_field():
    with pytest.raises(InputError, match="candidates"):
        AttributionConfig(method="component", candidates=0)
    with pytest.raises(InputError, match="method"):
        AttributionConfig(method="components")


def test_attribute_takes_a_config_or_keywords_alike(tiny_random):
    model, tok = tiny_random
    kw = dict(layers=(1,), method="pg", **FAST)
    a = attribute(model, tok, EXAMPLES[:2], signal=checksum, **kw)
    b = attribute(model, tok, EXAMPLES[:2], signal=checksum, config=AttributionConfig(**kw))
    assert a.table.equals(b.table)
    with pytest.raises(InputError, match="not both"):
        attribute(model, tok, EXAMPLES[:2], signal=checksum, config=AttributionConfig(**kw), q=3)
