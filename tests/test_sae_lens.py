"""SAELens's on-disk layout, written here by hand from its documentation (cfg.json + sae_weights.safetensors,
W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc, b_dec, threshold), so the loader is checked against the
layout and not against our own exporter."""

import json

import pytest
import torch
from safetensors.torch import save_file

from ipg.errors import InputError
from ipg.models import ORGANISM_PATH
from ipg.sae import SAE
from ipg.sae_lens import export

load = SAE.load

pytestmark = pytest.mark.unit

D_IN, D_SAE = 16, 40


def _weights(seed=0, jumprelu=False):
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
    }
    if jumprelu:
        w["threshold"] = torch.rand(D_SAE, generator=g)
    return w


def _write(path, cfg, weights):
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(path / "sae_weights.safetensors"))
    return path


def _v6(architecture, hook="blocks.3.hook_resid_post", **extra):
    return {
        "architecture": architecture,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.12.0", "model_name": "gpt2-small", "hook_name": hook},
        **extra,
    }


def _reference(w, x, architecture, k=None, rescale=False):
    """SAELens's documented forward: f = act((x - b_dec) @ W_enc + b_enc), x_hat = f @ W_dec + b_dec."""
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    norm = w["W_dec"].norm(dim=-1)
    if architecture == "standard":
        f = pre.relu()
    elif architecture == "jumprelu":
        f = pre.relu() * (pre > w["threshold"])
    else:
        pre = pre * norm if rescale else pre
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    return f, (f / norm if rescale else f) @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize(
    "architecture,extra",
    [("standard", {}), ("jumprelu", {}), ("topk", {"k": 5}), ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True})],
)
def test_loads_each_architecture_as_documented(tmp_path, architecture, extra):
    w = _weights(jumprelu=architecture == "jumprelu")
    sae = load(_write(tmp_path / "sae", _v6(architecture, **extra), w))
    assert (sae.layer, sae.d_model, sae.n_features, sae.model) == (3, D_IN, D_SAE, "gpt2-small")
    x = torch.randn(7, D_IN)
    f_ref, x_hat_ref = _reference(w, x, architecture, extra.get("k"), extra.get("rescale_acts_by_decoder_norm", False))
    f = sae.encode(x)
    assert torch.allclose(f, f_ref, atol=1e-4) and torch.allclose(sae.decode(f), x_hat_ref, atol=1e-4)
    if architecture == "topk":
        assert ((f > 0).sum(-1) <= 5).all()
    assert SAE.header(tmp_path / "sae")["layer"] == "3"  # SAE.header and SAE.load take the directory too
    assert torch.equal(SAE.load(tmp_path / "sae").encode(x), f)


def test_pre_6_configs_and_resid_pre_hooks(tmp_path):
    w = _weights(1)
    old = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_point": "blocks.4.hook_resid_pre",
        "hook_layer": 4,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
        "model_name": "gpt2-small",
        "apply_b_dec_to_input": False,
        "normalize_activations": False,
    }
    sae = load(_write(tmp_path / "old", old, w))
    # resid_pre of block 4 is block 3's output; no b_dec subtraction when apply_b_dec_to_input is false
    assert (sae.layer, sae.architecture, sae.k, sae.subtract_b_pre) == (3, "topk", 3, False)
    x = torch.randn(4, D_IN)
    pre = x @ w["W_enc"] + w["b_enc"]
    top = pre.topk(3, dim=-1)
    assert torch.allclose(sae.encode(x), torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()), atol=1e-5)


def test_export_round_trip_of_the_organism_sae(tmp_path):
    sae = SAE.load(ORGANISM_PATH.parent / "saes" / "layer2.safetensors")
    out = export(sae, tmp_path / "organism-layer2")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == sae.k and cfg["d_in"] == sae.d_model
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post" and cfg["normalize_activations"] == "none"
    from safetensors.torch import load_file

    w = load_file(str(out / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (sae.d_model, sae.n_features) and w["W_dec"].shape == (sae.n_features, sae.d_model)
    x = torch.randn(9, sae.d_model) * 3
    f_ref, x_hat_ref = _reference(w, x, "topk", sae.k)  # the exported files read by the documented equations
    assert torch.allclose(sae.encode(x), f_ref, atol=1e-5) and torch.allclose(
        sae.decode(sae.encode(x)), x_hat_ref, atol=1e-4
    )
    back = load(out)
    assert torch.equal(back.encode(x), sae.encode(x))
    (tmp_path / "organism-layer2" / "stale").write_text("x")
    export(back, out)  # replaces the directory whole
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["organism-layer2"]  # no temporary directory left


def test_jumprelu_export_round_trip(tmp_path):
    sae = load(_write(tmp_path / "in", _v6("jumprelu"), _weights(2, jumprelu=True)))
    back = load(export(sae, tmp_path / "out"))
    x = torch.randn(5, D_IN)
    assert torch.equal(back.encode(x), sae.encode(x)) and torch.equal(back.threshold, sae.threshold)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda p: (p / "sae_weights.safetensors").unlink(), "sae_weights.safetensors is missing"),
        (lambda p: _rewrite(p, hook="blocks.3.hook_mlp_out"), "residual output"),
        (lambda p: _rewrite(p, normalize_activations="expected_average_only_in"), "normalize_activations"),
        (lambda p: _rewrite(p, architecture="gated"), "architecture 'gated'"),
        (lambda p: _rewrite(p, d_sae=D_SAE + 1), "W_enc' has shape"),
        (lambda p: (p / "cfg.json").write_text("{"), "not JSON"),
    ],
)
def test_bad_directories_get_one_clear_error(tmp_path, change, match):
    path = _write(tmp_path / "sae", _v6("standard"), _weights())
    change(path)
    with pytest.raises(InputError, match=match):
        SAE.load(path)


def _rewrite(path, hook=None, **fields):
    cfg = json.loads((path / "cfg.json").read_text())
    cfg.update(fields)
    if hook:
        cfg["metadata"]["hook_name"] = hook
    (path / "cfg.json").write_text(json.dumps(cfg))


def test_an_organism_attribution_reads_the_sae_from_either_layout_alike(tmp_path):
    import pyarrow.parquet as pq

    from ipg.driver.cli import main

    shipped = ORGANISM_PATH.parent / "saes" / "layer2.safetensors"
    lens = main(["sae", "export", str(shipped), str(tmp_path / "lens")])
    assert lens == 0 and (tmp_path / "lens" / "cfg.json").is_file()
    scores = {}
    for name, sae in (("ipg", shipped), ("lens", tmp_path / "lens")):
        assert (
            main(
                [
                    "attribute",
                    "--model",
                    "organism",
                    "--limit",
                    "4",
                    "--layers",
                    "2",
                    "--sae",
                    str(sae),
                    "--attribution.kind=sae",
                    "--attribution.method=pg",
                    "--attribution.n_samples=3",
                    "--out",
                    str(tmp_path / name),
                    "--quiet",
                ]
            )
            == 0
        )
        scores[name] = pq.read_table(tmp_path / name / "scores.parquet").column("score").to_pylist()
    assert len(scores["ipg"]) == SAE.load(shipped).n_features and scores["ipg"] == scores["lens"]
