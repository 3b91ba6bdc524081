"""Interventions: each is the identity at gamma 1; mean ablation puts the mean in place, a step along the mean
adds it; ``ipg.steering.scale`` applies them on the model and refuses a missing or misshapen centre."""

import pytest
import torch

from ipg.components import ComponentId, Site, capture
from ipg.errors import InputError
from ipg.interventions import DEFAULT, INTERVENTIONS, affine, centres
from ipg.steering import scale

pytestmark = pytest.mark.unit

H = torch.tensor([3.0, -2.0, 0.5])
MU = [1.0, -4.0, 2.0]


def _apply(name, gamma):
    factor, offset = affine(name, gamma, MU, 3)
    return H * factor + (0 if offset is None else offset)


@pytest.mark.parametrize("name", list(INTERVENTIONS))
def test_every_intervention_is_the_identity_at_gamma_one(name):
    assert torch.equal(_apply(name, 1.0), H)


def test_each_intervention_maps_an_activation_as_its_formula_says():
    mu = torch.tensor(MU)
    assert torch.equal(_apply("scale", 0.0), torch.zeros(3))  # zero ablation
    assert torch.equal(_apply("mean", 0.0), mu)  # mean ablation
    assert torch.allclose(_apply("mean", 2.0), mu + 2 * (H - mu))
    assert torch.allclose(_apply("add", 0.0), H - mu)
    assert torch.allclose(_apply("add", 3.0), H + 2 * mu)
    assert DEFAULT == "scale" and affine("scale", 0.5) == (0.5, None)  # needs no centre


def test_centre_errors_name_the_field_and_the_fix():
    with pytest.raises(InputError, match="steering.centre: intervention 'mean'.*pass centre="):
        affine("mean", 0.0)
    with pytest.raises(InputError, match=r"steering.centre: needs one mean per component \(3\), got \(2,\)"):
        affine("add", 0.0, [1.0, 2.0], 3)
    with pytest.raises(InputError, match="steering.intervention: unknown 'zero'"):
        affine("zero", 0.0)
    with pytest.raises(InputError, match="steering.gamma: must be >= 0"):
        affine("mean", -1.0, MU, 3)
    with pytest.raises(InputError, match="no mean for site layers.1.residual"):
        centres({}, [ComponentId(1, "residual", 0)])


def test_mean_ablation_on_the_model_puts_each_components_mean_in_place(tiny_random):
    model, tok = tiny_random
    ids = torch.tensor([tok("12+7=")["input_ids"]])
    comps = [ComponentId(1, "residual", i) for i in (3, 9, 40)]
    means = {Site(1, "residual"): torch.arange(64, dtype=torch.float32) / 10}
    mu = centres(means, comps)
    with torch.no_grad(), scale(model, comps, 0.0, positions="all", intervention="mean", centre=mu):
        with capture(model, [Site(1, "residual")]) as store:
            model(input_ids=ids)
    h = store[Site(1, "residual")]
    assert torch.allclose(h[..., [3, 9, 40]], torch.tensor(mu).expand(1, ids.shape[1], 3))
    with torch.no_grad(), capture(model, [Site(1, "residual")]) as plain:
        model(input_ids=ids)
    others = [i for i in range(64) if i not in (3, 9, 40)]
    assert torch.equal(h[..., others], plain[Site(1, "residual")][..., others])
    with pytest.raises(InputError, match="steering.centre"):
        with scale(model, comps, 0.0, intervention="mean"):
            pass


def test_a_runs_length_experiment_steers_about_the_support_mean_when_asked(tmp_path, monkeypatch):
    """``length.intervention: mean``: every selection of the length experiment, random's too, is steered about
    each component's support mean (the per-row tables then apply it, tested above and in test_packing); the
    report says how gamma acted; an unknown name is refused with the field."""
    import math

    from ipg.driver.config import load_config
    from ipg.driver.experiment import Experiment, run_experiment

    queued = []
    real_queue = Experiment.queue

    def spy(self, steering, examples=None, **kw):
        queued.append((kw, steering))
        return real_queue(self, steering, examples, **kw)

    monkeypatch.setattr(Experiment, "queue", spy)
    flags = ["--length.enabled=true", "--length.layers=[2]", "--length.gammas=[0, 1, 2]", "--length.methods=[random]",
             "--cards.enabled=false", "--length.intervention=mean", f"--out={tmp_path / 'run'}"]  # fmt: skip
    out = run_experiment(load_config("deploy/configs/smoke.yaml", flags), log=lambda m: None)
    length = [(kw, st) for kw, st in queued if kw.get("experiment") == "length"]
    assert {kw["method"] for kw, _ in length} == {"component", "random"} and {kw["gamma"] for kw, _ in length} == {0, 2}
    means = {}
    for _, st in length:
        assert st["intervention"] == "mean" and len(st["centre"]) == len(st["scale"])
        for c, mu in zip(st["scale"], st["centre"]):
            assert math.isfinite(mu) and means.setdefault(str(c), mu) == mu  # one centre per component
    assert any(abs(mu) > 0.1 for mu in means.values())
    accuracy = [st for kw, st in queued if kw.get("experiment") == "accuracy" and st and "scale" in st]
    assert accuracy and all("intervention" not in st for st in accuracy)  # accuracy scales about zero
    assert "by `mean`: h -> mu + gamma (h - mu)" in (out / "report.md").read_text()
    with pytest.raises(InputError, match="length.intervention: unknown 'zero'"):
        load_config("deploy/configs/smoke.yaml", ["--length.intervention=zero"])
