import pytest
import torch

from ipg.errors import InputError
from ipg.generation import SamplingParams, generate

pytestmark = pytest.mark.unit

EXAMPLES = [{"id": f"e{i}", "prompt": "12+" * (i % 3) + "34\n"} for i in range(7)]  # mixed prompt lengths


def _ids(groups):
    return [[s.completion_ids for s in g] for g in groups]


def test_samples_do_not_depend_on_batching_or_neighbours(tiny_random):
    model, tok = tiny_random
    params = SamplingParams(n=3, greedy=False, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=1)
    full = _ids(generate(model, tok, EXAMPLES, params, batch_size=21))
    assert _ids(generate(model, tok, EXAMPLES, params, batch_size=4)) == full
    assert _ids(generate(model, tok, EXAMPLES[3:], params, batch_size=2)) == full[3:]
    other_seed = _ids(generate(model, tok, EXAMPLES, SamplingParams(**{**params.__dict__, "seed": 2}), batch_size=21))
    assert other_seed != full
    assert all(len(set(map(tuple, g))) > 1 for g in full)  # samples of one prompt differ


def test_greedy_equals_hf_generate(tiny_random):
    model, tok = tiny_random
    ours = generate(model, tok, EXAMPLES, SamplingParams(max_new_tokens=10), batch_size=3)
    for ex, (s,) in zip(EXAMPLES, ours):
        ids = torch.tensor([tok(ex["prompt"])["input_ids"]])
        ref = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=10,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        assert s.completion_ids == ref[0, ids.shape[1] :].tolist()


def test_logprobs_are_the_raw_policy_under_teacher_forcing(tiny_random):
    model, tok = tiny_random
    params = SamplingParams(n=2, greedy=False, temperature=0.7, top_p=0.8, max_new_tokens=8, seed=3)
    for s in (x for g in generate(model, tok, EXAMPLES[:3], params) for x in g):
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        lp = torch.log_softmax(model(ids).logits[0].float(), -1)  # (T, V)
        L = len(s.prompt_ids)
        ref = [lp[L - 1 + t, tok_id].item() for t, tok_id in enumerate(s.completion_ids)]
        assert s.logprobs == pytest.approx(ref, abs=1e-4)
        assert len(s.logprobs) == s.n_tokens


def test_top_p_keeps_only_the_nucleus(tiny_random):
    model, tok = tiny_random
    ex = [{"id": "x", "prompt": "1+1\n"}]
    samples = generate(
        model, tok, ex, SamplingParams(n=40, greedy=False, temperature=1.0, top_p=1e-6, max_new_tokens=4), batch_size=40
    )[0]
    greedy = generate(model, tok, ex, SamplingParams(max_new_tokens=4))[0][0]
    assert all(s.completion_ids == greedy.completion_ids for s in samples)  # tiny top-p == greedy


@pytest.mark.parametrize(
    "field, kwargs",
    [
        ("n", {"n": 0}),
        ("top_p", {"top_p": 0.0}),
        ("temperature", {"greedy": False, "temperature": 0.0}),
        ("max_new_tokens", {"max_new_tokens": 0}),
    ],
)
def test_bad_sampling_values_name_the_field(field, kwargs):
    with pytest.raises(InputError, match=f"sampling.{field}"):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("spread", [4.0, 0.3])  # a nucleus within the scanned candidates; one of most of the vocabulary
def test_the_nucleus_search_draws_what_a_full_sort_draws(spread, monkeypatch):
    import ipg.generation as gen

    logits = torch.randn(16, 5000, generator=torch.Generator().manual_seed(0)) * spread
    params = SamplingParams(n=1, greedy=False, temperature=0.6, top_p=0.8)

    def draws():
        return gen._pick(logits, params, [torch.Generator().manual_seed(i) for i in range(16)])

    scanned = draws()
    monkeypatch.setattr(gen, "NUCLEUS_SCAN", 0)  # always the full sort
    assert torch.equal(scanned, draws())
