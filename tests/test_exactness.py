"""IPG estimates against exact enumeration (tests/enumeration.py): these fail if the math is wrong."""

import numpy as np
import pytest
import torch
from enumeration import (
    MAX_NEW,
    PROMPT,
    exact_gradient,
    exact_ipg,
    exact_J,
    reward,
    tiny_enumerable_model,
    weighted_rollouts,
)

from ipg.attribution import attribute
from ipg.paths import schedule

pytestmark = pytest.mark.unit

EXAMPLE = [{"id": "p", "prompt": PROMPT}]
ON_POLICY = dict(method="ipg", temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW, batch_tokens=60000)


def signal(completion, example):
    return reward(completion)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    return tiny_enumerable_model()


# the weighted enumeration has no sampling error; what is left is rounding: the float64 model's RMSNorm runs in
# float32 (transformers), and ipg batches and pads other than the enumeration does (measured 2e-8 to 1.1e-7)
EXACT = 1e-6


def _rel_err(est, exact):
    return float(np.linalg.norm(est - exact) / np.linalg.norm(exact))


def test_sampled_resampled_ipg_converges_to_the_exact_integrated_gradient(tiny):
    """The sampler itself (on-policy draws at each alpha, RLOO advantages): the estimate approaches the exact
    value as samples grow. The gradient pass's own exactness is checked without sampling below."""
    model, tok = tiny
    exact = exact_ipg(model, tok, 0, "residual", schedule("uniform", 4), 16).numpy()
    errors = []
    for n in (200, 4000):
        est = attribute(
            model,
            tok,
            EXAMPLE,
            signal=signal,
            layers=[0],
            kind="residual",
            n_samples=n,
            q=4,
            resample=True,
            advantage="rloo",
            completeness=False,
            **ON_POLICY,
        ).scores(0)
        errors.append(_rel_err(est, exact))
    assert errors[1] < 0.03, errors  # measured 0.006-0.013 at N = 4000
    assert errors[1] < errors[0], errors  # the error falls as samples grow


def _exact_scores(model, tok, layer, kind, width, baseline=None, center=0.0, **settings):
    """ipg's gradient pass on the weighted enumeration (every trajectory, its probability folded into its
    advantage); in resample mode, the path's rollouts at each alpha are the weighted enumeration at alpha."""
    from ipg import attribution
    from ipg.attribution import AttributionConfig, shard_scores
    from ipg.components import Site
    from ipg.signals import make_signal

    cfg = AttributionConfig(
        **{"method": "ipg", **settings}, layers=(layer,), kind=kind, advantage="none", completeness=False
    )
    site = Site(layer, kind)
    b = torch.zeros(width, dtype=torch.float64) if baseline is None else baseline
    original = attribution.sample_rollouts
    attribution.sample_rollouts = lambda *a, alpha, **kw: weighted_rollouts(
        model, tok, layer, kind, alpha, width, b, center
    )
    try:
        res = shard_scores(
            model,
            tok,
            weighted_rollouts(model, tok, layer, kind, 1.0, width, b, center),
            make_signal(signal),
            cfg,
            [site],
            {site: b},
        )
    finally:
        attribution.sample_rollouts = original
    return res.partial.means(site, width)


@pytest.mark.parametrize("kind, layer, width", [("residual", 0, 16), ("mlp", 1, 32)])
def test_resampled_ipg_on_the_weighted_enumeration_is_the_exact_integrated_gradient(tiny, kind, layer, width):
    """No sampling: given each path point's exact expectation, ipg's quadrature gives exact_ipg (float64)."""
    model, tok = tiny
    exact = exact_ipg(model, tok, layer, kind, schedule("uniform", 4), width).numpy()
    est = _exact_scores(model, tok, layer, kind, width, q=4, resample=True)
    assert _rel_err(est, exact) < EXACT, _rel_err(est, exact)


def test_pg_on_the_weighted_enumeration_is_the_exact_gradient(tiny):
    model, tok = tiny
    exact = exact_gradient(model, tok, 0, "residual", 1.0, 16).numpy()  # dJ/dbeta at beta = 1
    est = _exact_scores(model, tok, 0, "residual", 16, method="pg")
    assert _rel_err(est, exact) < EXACT, _rel_err(est, exact)


def test_mean_baseline_path_on_the_weighted_enumeration_is_exact(tiny):
    model, tok = tiny
    b = torch.linspace(-0.5, 0.5, 32, dtype=torch.float64)  # any baseline: the path runs from it
    exact = exact_ipg(model, tok, 1, "mlp", schedule("uniform", 2), 32, baseline=b).numpy()
    est = _exact_scores(model, tok, 1, "mlp", 32, baseline=b, q=2, resample=True)
    assert _rel_err(est, exact) < EXACT, _rel_err(est, exact)


def test_ipg_without_resampling_integrates_the_surrogate_exactly(tiny):
    """Default mode: trajectories drawn once at alpha = 1, their log-probs differentiated along the path:
    the quadrature of grad f, f the policy-gradient surrogate (enumeration.exact_surrogate)."""
    from enumeration import exact_surrogate

    model, tok = tiny

    def grad_f(alpha):
        beta = torch.full((16,), alpha, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(exact_surrogate(model, tok, 0, "residual", beta, 16), beta)
        return g

    j1 = exact_J(model, tok, 0, "residual", torch.ones(16, dtype=torch.float64)).item()
    exact = sum(w * grad_f(a) for a, w in schedule("uniform", 4)).numpy()
    # exact_surrogate centres R at J(1); so do these weights (off beta = 1, E_pi1[grad log pi_beta] is not 0)
    est = _exact_scores(model, tok, 0, "residual", 16, center=j1, q=4)
    assert _rel_err(est, exact) < EXACT, _rel_err(est, exact)


def test_exact_quadrature_is_complete_where_the_path_is_smooth(tiny):
    """MLP neurons scale the MLP's write into the residual stream: J(alpha) is smooth, so the sum of the
    exact scores tends to J(1) - J(0) as q grows (docs/method.md)."""
    model, tok = tiny
    ones, zeros = torch.ones(32, dtype=torch.float64), torch.zeros(32, dtype=torch.float64)
    target = (exact_J(model, tok, 1, "mlp", ones) - exact_J(model, tok, 1, "mlp", zeros)).item()
    gaps = [abs(exact_ipg(model, tok, 1, "mlp", schedule("uniform", q), 32).sum().item() - target) for q in (2, 8, 32)]
    # measured 0.357, 0.070, 0.017 for J(1) - J(0) = 0.837: the right Riemann sum converges as 1/q
    assert gaps[0] > gaps[1] > gaps[2] and gaps[1] / gaps[2] > 3 and gaps[2] < 0.03 * abs(target), gaps
    gl = abs(exact_ipg(model, tok, 1, "mlp", schedule("gauss_legendre", 8), 32).sum().item() - target)
    assert gl < 1e-4 * abs(target)  # measured 4.5e-7: completeness holds to quadrature precision


def test_estimated_completeness_diagnostic_where_smooth(tiny):
    model, tok = tiny
    res = attribute(
        model,
        tok,
        EXAMPLE,
        signal=signal,
        layers=[1],
        kind="mlp",
        n_samples=4000,
        q=8,
        resample=True,
        advantage="none",
        **ON_POLICY,
    )
    d = res.diagnostics["sites"]["layers.1.mlp"]
    j0 = exact_J(model, tok, 1, "mlp", torch.zeros(32, dtype=torch.float64)).item()
    j1 = exact_J(model, tok, 1, "mlp", torch.ones(32, dtype=torch.float64)).item()
    assert d["J_alpha0"] == pytest.approx(j0, abs=0.05) and d["J_alpha1"] == pytest.approx(j1, abs=0.05)
    assert abs(d["gap"]) < 0.15 * abs(j1 - j0)  # q = 8 Riemann bias + sampling noise
    assert [a for a, _ in d["J_path"]] == [k / 8 for k in range(1, 9)]


def test_diagnostic_exposes_the_jump_after_alpha_zero(tiny):
    """Last block + final RMSNorm: the uniform path is invisible for alpha > 0 (dJ/dalpha = 0), so the
    scores sum to ~0 while J(1) - J(0) does not. The diagnostic must show it, not hide it."""
    model, tok = tiny
    last = model.config.num_hidden_layers - 1
    res = attribute(
        model,
        tok,
        EXAMPLE,
        signal=signal,
        layers=[last],
        n_samples=4000,
        q=6,
        schedule="geometric",
        advantage="none",
        **ON_POLICY,
    )
    d = res.diagnostics["sites"][f"layers.{last}.residual"]
    j = {
        a: exact_J(model, tok, last, "residual", torch.full((16,), a, dtype=torch.float64)).item()
        for a in (0.0, d["alpha_min"], 1.0)
    }
    assert d["alpha_min"] == 2.0**-5
    assert abs(j[d["alpha_min"]] - j[0.0]) > 0.1 and abs(j[1.0] - j[d["alpha_min"]]) < 1e-4  # the jump itself
    assert d["J_alpha0"] == pytest.approx(j[0.0], abs=0.05)
    assert d["J_alpha_min"] == pytest.approx(j[d["alpha_min"]], abs=0.05)
    assert abs(d["sum_scores"]) < 0.05 and abs(d["gap"]) > 0.1


def test_component_path_is_the_single_component_ablation_and_pg_its_first_order_term(tiny):
    """The per-component path (ipg.component_path): its score is f(1) - f(beta_i = 0) of the surrogate f,
    exactly; PG is f'(1), the limit of [f(1) - f(1 - eps)] / eps; the sampled estimate matches enumeration."""
    from enumeration import exact_surrogate

    from ipg.attribution import AttributionConfig
    from ipg.component_path import component_path_scores
    from ipg.components import Site

    model, tok = tiny
    width, layer = 16, 0
    ones = torch.ones(width, dtype=torch.float64)

    def f(i, value):
        beta = ones.clone()
        beta[i] = value
        return exact_surrogate(model, tok, layer, "residual", beta, width).item()

    pg = exact_gradient(model, tok, layer, "residual", 1.0, width).numpy()  # f'(1) = dJ/dbeta at 1
    exact_cp = np.array([f(i, 1.0) - f(i, 0.0) for i in range(width)])
    # PG is the first-order term: the secant slope [f(1) - f(1 - eps)] / eps tends to it (the model's RMSNorm
    # runs in float32, so eps stays well above its rounding)
    secant = {eps: np.array([(f(i, 1.0) - f(i, 1.0 - eps)) / eps for i in range(width)]) for eps in (0.1, 0.0125)}
    errors = [_rel_err(exact_cp, pg), _rel_err(secant[0.1], pg), _rel_err(secant[0.0125], pg)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01, errors
    assert _rel_err(exact_cp, pg) > 0.05  # yet on the whole path they differ: curvature along the coordinate
    j1 = exact_J(model, tok, layer, "residual", ones).item()
    rollouts = weighted_rollouts(model, tok, layer, "residual", 1.0, width, center=j1)  # f centres R at J(1)
    cfg = AttributionConfig(method="ipg", layers=(layer,), completeness=False)
    site = Site(layer, "residual")
    est = component_path_scores(model, rollouts, site, list(range(width)), cfg, torch.zeros(width, dtype=torch.float64))
    assert est.shape == (1, width) and _rel_err(est[0], exact_cp) < EXACT, _rel_err(est[0], exact_cp)
