import pytest
import torch

from ipg.baselines import activation_scores, contrast_scores, control_vector, random_components, top_components
from ipg.components import ComponentId, Site, decoder_layers
from ipg.errors import InputError
from ipg.generation import SamplingParams, generate
from ipg.models import ORGANISM_PATH
from ipg.sae import SAE
from ipg.steering import add_vector, scale

pytestmark = pytest.mark.unit

EXAMPLES = [{"id": f"e{i}", "prompt": f"{10 + 7 * i}+{21 + 3 * i}\n"} for i in range(5)]
GREEDY = SamplingParams(max_new_tokens=24)
SAMPLED = SamplingParams(n=3, greedy=False, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=2)


def _ids(model, tok, params):
    return [[s.completion_ids for s in g] for g in generate(model, tok, EXAMPLES, params)]


@pytest.fixture(scope="module")
def sae(tiny_random):
    torch.manual_seed(3)
    s = SAE(tiny_random[0].config.hidden_size, 32, 4, layer=1)
    for p in s.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return s.requires_grad_(False)


# every third component; every head of block 2's attention (a third of them does not change the organism's
# greedy digits: its later blocks carry the sum)
@pytest.mark.parametrize(
    "kind, width, step", [("residual", 128, 3), ("mlp", 512, 3), ("sae", 256, 3), ("attn", 128, 1)]
)
def test_gamma_one_leaves_generations_identical(organism, kind, width, step):
    model, tok = organism  # trained, so an edit that matters does change what it writes
    saes = {2: SAE.load(ORGANISM_PATH.parent / "saes" / "layer2.safetensors")}
    comps = [ComponentId(2, kind, i) for i in range(0, width, step)]
    for params in (GREEDY, SAMPLED):
        plain = _ids(model, tok, params)
        with scale(model, comps, 1.0, saes=saes):
            assert _ids(model, tok, params) == plain
        with scale(model, comps, 0.0, saes=saes):
            changed = _ids(model, tok, params)
        assert changed != plain  # the same hooks do act when gamma != 1


def test_gamma_zero_on_a_whole_block_equals_zeroing_its_output(tiny_random):
    model, tok = tiny_random
    comps = [ComponentId(0, "residual", i) for i in range(model.config.hidden_size)]
    ids = torch.tensor([tok("12+34\n12+34=46\n")["input_ids"]])
    handle = decoder_layers(model)[0].register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    try:  # independent reference: a plain hook that zeroes the block output
        zeroed_logits = model(ids).logits
        zeroed_gen = _ids(model, tok, GREEDY)
    finally:
        handle.remove()
    with scale(model, comps, 0.0, positions="all"):
        assert torch.equal(model(ids).logits, zeroed_logits)
        assert _ids(model, tok, GREEDY) == zeroed_gen


def test_generated_positions_leave_the_prompt_untouched(tiny_random):
    model, tok = tiny_random
    comps = [ComponentId(1, "residual", i) for i in range(64)]
    ids = torch.tensor([tok("12+34\n")["input_ids"]])
    plain = model(ids).logits
    with scale(model, comps, 0.0):  # a prefill call: only the last (decision) position is edited
        edited = model(ids).logits
    assert torch.equal(edited[0, :-1], plain[0, :-1]) and not torch.equal(edited[0, -1], plain[0, -1])


def test_add_vector_zero_is_identity_and_bad_steering_inputs(tiny_random):
    model, tok = tiny_random
    plain = _ids(model, tok, GREEDY)
    with add_vector(model, 1, torch.randn(64), 0.0):
        assert _ids(model, tok, GREEDY) == plain
    with pytest.raises(InputError, match="no components"):
        with scale(model, [], 2.0):
            pass
    with pytest.raises(InputError, match="steering.gamma"):
        with scale(model, [ComponentId(0, "residual", 0)], -1.0):
            pass


def test_each_baseline_returns_p_distinct_valid_ids(tiny_random, sae):
    model, tok = tiny_random
    samples = [s for g in generate(model, tok, EXAMPLES, SAMPLED) for s in g]
    sequences = [(s.prompt_ids + s.completion_ids, len(s.prompt_ids)) for s in samples]
    sequences.append((tok("12+34\n12+34=46\nwait 12+34=46\n")["input_ids"], 6))  # words surely present
    site, sae_site = Site(1, "residual"), Site(1, "sae")
    selections = [
        random_components(64, site, 7, seed=0),
        top_components(activation_scores(model, sequences, site), site, 7),
        top_components(contrast_scores(model, tok, sequences, site, ("+", "=")), site, 7),
        top_components(contrast_scores(model, tok, sequences, sae_site, ("wait",), {1: sae}), sae_site, 7),
    ]
    for sel, s in zip(selections, (site, site, site, sae_site)):
        assert len(sel) == 7 and len(set(sel)) == 7
        assert all(c.site == s and 0 <= c.index < (32 if s.kind == "sae" else 64) for c in sel)
    assert random_components(64, site, 7, seed=0) == selections[0] != random_components(64, site, 7, seed=1)
    cots = [tok(t)["input_ids"] for t in ("12+34\n12+34=46\n#### 46\n", "51+8\n51+8=59\n#### 59\n")]
    v, separation = control_vector(model, tok, cots, 1)
    assert v.shape == (64,) and abs(float(v.norm()) - 1) < 1e-5 and separation > 0
    with pytest.raises(InputError, match="p: must be in 1..64"):
        random_components(64, site, 65, seed=0)
