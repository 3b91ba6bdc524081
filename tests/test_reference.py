"""The optimised gradient pass (captured prefix, sites sharing it, pad-aware micro-batches, stand-in
blocks, checkpointing) against the naive reference (ipg/reference.py: one full forward per row):
scores must agree within 1e-5 relative, for every kind of site and path option."""

import numpy as np
import pytest
import torch

from ipg.attribution import AttributionConfig, sample_rollouts, shard_scores, site_baselines
from ipg.components import Site
from ipg.reference import reference_scores
from ipg.signals import make_signal

SETTINGS = dict(q=3, n_samples=4, max_new_tokens=48, completeness=False, batch_tokens=700)


@pytest.fixture(scope="module")
def support(organism):
    from ipg.organism.card import splits

    model, tok = organism
    cfg = AttributionConfig(**SETTINGS)
    rollouts = sample_rollouts(model, tok, splits()["support"][:4], make_signal("accuracy"), cfg)
    assert any(a != 0 for r in rollouts for a in r.advantages)  # something to attribute
    return rollouts


def _saes():
    from ipg.models import ORGANISM_PATH
    from ipg.sae import TopKSAE

    return {2: TopKSAE.load(ORGANISM_PATH.parent / "saes" / "layer2.safetensors")}


def _compare(organism, rollouts, sites, saes=None, **settings):
    model, tok = organism
    cfg = AttributionConfig(**{**SETTINGS, **settings, "layers": tuple(s.layer for s in sites), "kind": sites[0].kind})
    baselines = site_baselines(model, rollouts, sites, cfg, saes)
    got = shard_scores(model, tok, rollouts, make_signal("accuracy"), cfg, sites, baselines, saes)
    for site in sites:
        ref = reference_scores(model, got.paths[site], site, baselines[site], cfg.positions, cfg.policy_temperature, saes)
        scale = np.abs(ref.mean(0)).max()
        assert scale > 0
        np.testing.assert_allclose(got.partial.means(site), ref.mean(0), rtol=1e-5, atol=1e-5 * scale)


def test_residual_layers_sharing_one_prefix_equal_the_reference(organism, support):
    _compare(organism, support, [Site(1, "residual"), Site(3, "residual"), Site(0, "residual")])


def test_mlp_sites_equal_the_reference(organism, support):
    _compare(organism, support, [Site(0, "mlp"), Site(2, "mlp")])


def test_sae_site_equals_the_reference(organism, support):
    _compare(organism, support, [Site(2, "sae")], saes=_saes())


def test_mean_baseline_all_positions_and_checkpointing_equal_the_reference(organism, support):
    _compare(organism, support, [Site(1, "residual")], baseline="mean", positions="all", checkpoint=True)
    _compare(organism, support, [Site(1, "mlp")], checkpoint=True, batch_tokens=50)  # one row per micro-batch


def test_bf16_autocast_stays_close_to_float32(organism, support):
    model, tok = organism
    site = Site(1, "residual")
    out = {}
    for cast in ("off", "bf16"):
        cfg = AttributionConfig(**SETTINGS, autocast=cast)
        res = shard_scores(model, tok, support, make_signal("accuracy"), cfg, [site], {site: torch.zeros(128)})
        out[cast] = res.partial.means(site)
    rel = np.linalg.norm(out["bf16"] - out["off"]) / np.linalg.norm(out["off"])
    assert 0 < rel < 0.05, rel  # bf16 changes the numbers (it ran), but not the attribution
    top = set(np.argsort(-np.abs(out["off"]))[:10])
    assert len(top & set(np.argsort(-np.abs(out["bf16"]))[:10])) >= 8


def test_capture_stops_above_the_highest_site(organism):
    """The shared prefix runs the blocks up to the highest site only."""
    from ipg.components import capture_sites, decoder_layers

    model, tok = organism
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(decoder_layers(model))]
    try:
        got = capture_sites(model, [Site(1, "mlp"), Site(0, "residual")], [[1, 5, 6, 7], [1, 8]])
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]
    assert got[Site(1, "mlp")]["h"].shape == (2, 4, 512) and got[Site(1, "mlp")]["block_input"].shape == (2, 4, 128)
    assert got[Site(0, "residual")]["h"].shape == (2, 4, 128)


def test_a_bfloat16_model_attributes_close_to_float32(organism, support):
    """Weights in bf16 (how large models are loaded on GPUs): the path stays bf16, scores stay close."""
    import copy

    model, tok = organism
    half = copy.deepcopy(model).to(torch.bfloat16)
    site = Site(1, "residual")
    cfg = AttributionConfig(**SETTINGS)
    out = [shard_scores(m, tok, support, make_signal("accuracy"), cfg, [site], {site: torch.zeros(128)}).partial.means(site)
           for m in (model, half)]
    rel = np.linalg.norm(out[1] - out[0]) / np.linalg.norm(out[0])
    assert 0 < rel < 0.1, rel
