import pytest
import torch

from ipg.components import Site, capture, edit
from ipg.errors import InputError
from ipg.sae import SAE, train_sae

pytestmark = pytest.mark.unit


def _random_sae(d, n=48, k=6, layer=1):
    torch.manual_seed(1)
    sae = SAE(d, n, k, layer=layer)
    for p in sae.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return sae.requires_grad_(False)


def test_encode_is_topk_and_decode_is_affine():
    sae = _random_sae(16)
    z = torch.randn(3, 5, 16)
    f = sae.encode(z)
    assert f.shape == (3, 5, 48) and ((f > 0).sum(-1) <= 6).all() and (f >= 0).all()
    assert torch.allclose(sae.decode(f), f @ sae.W_dec.T + sae.b_pre)
    assert torch.allclose(sae.decode_delta(f), sae.decode(f) - sae.b_pre, atol=1e-6)


def test_scale_by_one_leaves_block_outputs_bit_identical(tiny_random):
    model, tok = tiny_random
    sae = _random_sae(model.config.hidden_size)
    ids = torch.tensor([tok("12+34\n56+7=63\n")["input_ids"]])
    with capture(model, [Site(1, "residual")]) as plain:
        logits = model(ids).logits
    with (
        edit(model, Site(1, "sae"), lambda f: 1.0 * f, positions="all", saes={1: sae}),
        capture(model, [Site(1, "residual")]) as edited,
    ):
        logits_edited = model(ids).logits
    assert torch.equal(plain[Site(1, "residual")], edited[Site(1, "residual")])
    assert torch.equal(logits, logits_edited)
    with edit(model, Site(1, "sae"), lambda f: 0.0 * f, positions="all", saes={1: sae}):
        assert not torch.equal(model(ids).logits, logits)  # an actual edit does change the output


def test_save_load_round_trip_and_bad_files(tmp_path):
    sae = _random_sae(16, layer=3)
    path = sae.save(tmp_path / "sae.safetensors")
    back = SAE.load(path)
    assert (back.layer, back.k, back.n_features, back.d_model) == (3, 6, 48, 16)
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), back.state_dict().values()))
    with pytest.raises(InputError, match="not found"):
        SAE.load(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="not an ipg SAE file"):
        SAE.load(tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="sae.k"):
        SAE(16, 8, 9)


def test_training_explains_structured_activations():
    torch.manual_seed(0)
    atoms = torch.randn(32, 16)
    codes = (torch.rand(4000, 32) < 0.1).float() * torch.rand(4000, 32) * 3
    acts = codes @ atoms + 0.01 * torch.randn(4000, 16)
    sae, stats = train_sae(acts, n_features=64, k=6, steps=600, batch_size=256, lr=3e-3, log=lambda m: None)
    assert stats["fvu"] < 0.2, stats  # sparse structure is learned (a random SAE leaves fvu > 1)
