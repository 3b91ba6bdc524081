"""Attention sites: the input of ``o_proj`` (the heads' outputs side by side), a head as a group of its
coordinates, steering a head, and scoring a whole head on the per-component path."""

import numpy as np
import pytest
import torch

from ipg.attribution import AttributionConfig, sample_rollouts
from ipg.component_path import component_path_scores, group_path_scores, head_scores
from ipg.components import ComponentId, Site, capture_sites, check_site, decoder_layers, head_dim, head_groups
from ipg.errors import InputError
from ipg.signals import make_signal
from ipg.steering import scale

pytestmark = pytest.mark.unit

EXAMPLES = [{"id": f"e{i}", "prompt": f"{10 + 7 * i}+{21 + 3 * i}\n", "answer": str(31 + 10 * i)} for i in range(3)]


def _zeroed_head(model, layer: int, k: int):
    """An independent reference: a copy of o_proj's weight with head k's input columns zeroed."""
    o = decoder_layers(model)[layer].self_attn.o_proj
    d = head_dim(model)
    w = o.weight.detach().clone()
    w[:, k * d : (k + 1) * d] = 0
    return o, w


def test_attention_site_is_the_o_proj_input_grouped_by_head(tiny_random):
    model, tok = tiny_random
    n_heads, d = model.config.num_attention_heads, head_dim(model)
    assert check_site(model, Site(1, "attn")) == n_heads * d
    groups = head_groups(model, 1)
    assert len(groups) == n_heads and groups[1] == list(range(d, 2 * d))
    ids = [tok("12+34\n")["input_ids"]]
    seen = {}
    o = decoder_layers(model)[1].self_attn.o_proj
    handle = o.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach()))
    try:
        got = capture_sites(model, [Site(1, "attn")], ids, stop_early=False)[Site(1, "attn")]
    finally:
        handle.remove()
    assert torch.equal(got["h"], seen["x"]) and "block_input" in got
    assert str(ComponentId.parse("layers.1.attn:5")) == "layers.1.attn:5"


def test_silencing_a_head_equals_zeroing_its_o_proj_columns(tiny_random):
    model, tok = tiny_random
    ids = torch.tensor([tok("12+34\n12+34=46\n")["input_ids"]])
    o, w = _zeroed_head(model, 1, 1)
    saved = o.weight.detach().clone()
    with torch.no_grad():
        o.weight.copy_(w)
    try:
        want = model(ids).logits
    finally:
        with torch.no_grad():
            o.weight.copy_(saved)
    comps = [ComponentId(1, "attn", i) for i in head_groups(model, 1)[1]]
    with scale(model, comps, 0.0, positions="all"):
        got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(ids).logits, want)  # the head matters, so the test can fail


def test_a_head_score_is_its_joint_ablation_on_the_surrogate(organism):
    model, tok = organism
    cfg = AttributionConfig(layers=(1,), kind="attn", n_samples=3, max_new_tokens=24, positions="all", seed=2)
    rollouts = sample_rollouts(model, tok, EXAMPLES, make_signal("accuracy"), cfg)
    site, width = Site(1, "attn"), check_site(model, Site(1, "attn"))
    zero = torch.zeros(width)
    got = head_scores(model, rollouts, 1, cfg, zero)
    assert got.shape == (len(EXAMPLES), model.config.num_attention_heads)

    def surrogate(p: int) -> float:  # (1/N) sum_n A_n log pi(tau_n), teacher forced
        r, total = rollouts[p], 0.0
        for s, a in zip(r.samples, r.advantages):
            ids = torch.tensor([s.prompt_ids + s.completion_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            lp = len(s.prompt_ids)
            total += a * logp[lp - 1 : -1].gather(-1, ids[0, lp:, None]).sum().item() / len(r.samples)
        return total

    o = decoder_layers(model)[1].self_attn.o_proj
    saved = o.weight.detach().clone()
    for k in range(model.config.num_attention_heads):
        _, w = _zeroed_head(model, 1, k)
        for p in range(len(EXAMPLES)):
            full = surrogate(p)
            with torch.no_grad():
                o.weight.copy_(w)
            try:
                ablated = surrogate(p)
            finally:
                with torch.no_grad():
                    o.weight.copy_(saved)
            assert got[p, k] == pytest.approx(full - ablated, rel=1e-4, abs=1e-6)
    assert np.abs(got).max() > 0
    # a group of one coordinate is the per-component path itself
    single = group_path_scores(model, rollouts, site, [[3], [70]], cfg, zero)
    np.testing.assert_allclose(single, component_path_scores(model, rollouts, site, [3, 70], cfg, zero))


def test_a_model_without_o_proj_gets_a_clear_error(tiny_random):
    model, _ = tiny_random
    attn = decoder_layers(model)[0].self_attn
    saved = attn.o_proj
    del attn.o_proj
    try:
        with pytest.raises(InputError, match=r"kind: 'attn' needs block 0 to have self_attn.o_proj"):
            check_site(model, Site(0, "attn"))
    finally:
        attn.o_proj = saved
