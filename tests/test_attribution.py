"""Behaviour of ipg.attribute beyond exactness: determinism, batching, hooks, outputs, bad inputs."""

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ipg.attribution import attribute
from ipg.components import Site, decoder_layers, edit
from ipg.errors import ExampleError, InputError
from ipg.scores import SCHEMA, dice, select, write_scores

pytestmark = pytest.mark.unit

EXAMPLES = [{"id": f"e{i}", "prompt": f"{10 + 7 * i}+{21 + 3 * i}\n", "answer": "1"} for i in range(4)]
FAST = dict(method="ipg", q=3, n_samples=4, max_new_tokens=8, temperature=1.0, top_p=1.0, completeness=False)


def checksum(completion, example):
    """Varies between samples of a random model (a count of one character would be 0 almost always)."""
    return float(sum(map(ord, completion)) % 7)


def _scores(res):
    return np.array(res.table.column("score").to_pylist())


def test_deterministic_under_a_seed_and_seed_sensitive(tiny_random):
    model, tok = tiny_random
    a = _scores(attribute(model, tok, EXAMPLES, signal=checksum, layers=[0, 1], seed=3, **FAST))
    assert np.abs(a).max() > 0
    b = _scores(attribute(model, tok, EXAMPLES, signal=checksum, layers=[0, 1], seed=3, **FAST))
    c = _scores(attribute(model, tok, EXAMPLES, signal=checksum, layers=[0, 1], seed=4, **FAST))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("kind", ["residual", "mlp", "attn"])
def test_invariant_to_micro_batch_size(tiny_random, kind):
    model, tok = tiny_random
    big = _scores(
        attribute(model, tok, EXAMPLES, signal=checksum, layers=[0, 1], kind=kind, batch_tokens=100_000, **FAST)
    )
    small = _scores(attribute(model, tok, EXAMPLES, signal=checksum, layers=[0, 1], kind=kind, batch_tokens=20, **FAST))
    assert np.abs(big).max() > 0
    np.testing.assert_allclose(small, big, rtol=1e-5, atol=1e-7 * np.abs(big).max())


def test_layers_in_one_call_equal_separate_calls(tiny_random):
    model, tok = tiny_random
    both = attribute(model, tok, EXAMPLES, signal=checksum, layers=[0, 1], **FAST)
    only1 = attribute(model, tok, EXAMPLES, signal=checksum, layers=[1], **FAST)
    np.testing.assert_allclose(both.scores(1), only1.scores(1), rtol=1e-6)


def test_hooks_removed_after_an_exception_and_outputs_unchanged(tiny_random):
    model, tok = tiny_random
    ids = torch.tensor([tok("12+34\n")["input_ids"]])
    before = model(ids).logits.clone()
    blocks = list(decoder_layers(model))

    def boom(completion, example):
        raise RuntimeError("signal failed")

    with pytest.raises(ExampleError, match=r"signal 'boom' failed on example '.*': RuntimeError: signal failed") as err:
        attribute(model, tok, EXAMPLES, signal=boom, layers=[0], **FAST)
    assert err.value.example_id == EXAMPLES[0].get("id", "example-0")
    with pytest.raises(RuntimeError, match="inside"):
        with edit(model, Site(1, "mlp"), lambda h: 0 * h):
            raise RuntimeError("inside")
    attribute(model, tok, EXAMPLES, signal=checksum, layers=[0, 1], kind="mlp", resample=True, **FAST)
    assert list(decoder_layers(model)) == blocks  # stand-ins swapped back
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert torch.equal(model(ids).logits, before)


def test_zero_advantage_groups_count_as_zero(tiny_random):
    model, tok = tiny_random
    res = attribute(model, tok, EXAMPLES, signal=lambda c, e: 1.0, layers=[0], **FAST)
    assert np.all(_scores(res) == 0.0)
    assert set(res.table.column("n_prompts").to_pylist()) == {4}


def test_table_schema_parquet_and_selection(tiny_random, tmp_path):
    model, tok = tiny_random
    res = attribute(model, tok, EXAMPLES, signal=checksum, layers=[0, 1], run_id="r1", **FAST)
    assert res.table.schema == SCHEMA
    assert res.table.num_rows == 2 * model.config.hidden_size
    path = write_scores(tmp_path / "scores.parquet", res.table)
    back = pq.read_table(path)
    assert back.equals(res.table)
    layer1 = [r for r in back.to_pylist() if r["layer"] == 1]
    top = select(back, 5, layer=1, kind="residual")
    assert [c.index for c in top] == [r["index"] for r in sorted(layer1, key=lambda r: -r["score"])[:5]]
    assert {r["rank"] for r in layer1} == set(range(1, len(layer1) + 1))
    bottom = select(back, 5, by="bottom", layer=1, kind="residual")
    absolute = select(back, 5, by="abs", layer=1, kind="residual")
    assert set(bottom).isdisjoint(top) and len(set(absolute)) == 5
    assert dice(top, top) == 1.0 and dice(top, bottom) == 0.0 and dice(top[:4], top[1:]) == 0.75
    with pytest.raises(InputError, match="several sites"):
        select(back, 3)


def test_micro_batch_budget_by_device():
    from ipg.attribution import AttributionConfig

    assert AttributionConfig().budget("cpu") == 2048 and AttributionConfig().budget(torch.device("cuda")) == 8192
    assert (
        AttributionConfig(batch_tokens=300).budget("cpu") == 300 == AttributionConfig(batch_tokens=300).budget("cuda")
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(signal="nonsense"), r"signal: unknown 'nonsense'"),
        (dict(layers=[7]), r"layers: 7 is out of range for this 2-layer model; use 0..1"),
        (dict(layers=[]), r"layers: .* non-empty"),
        (dict(kind="heads"), r"kind: got 'heads'"),
        (dict(method="sgd"), r"method: got 'sgd'"),
        (dict(advantage="ppo"), r"advantage: got 'ppo'"),
        (dict(schedule="cubic"), r"schedule: got 'cubic'"),
        (dict(q=0), r"q: got 0"),
        (dict(kind="sae"), r"sae: kind 'sae' at layer 0 needs an SAE"),
        (dict(temperature=0.0), r"sampling.temperature"),
        (dict(batch_tokens=-1), r"batch_tokens: got -1; must be an integer >= 1, or 0 to size it by device"),
        (dict(share_prefix="yes"), r"share_prefix: got 'yes'; must be true or false"),
    ],
)
def test_bad_settings_name_the_field(tiny_random, kwargs, message):
    model, tok = tiny_random
    settings = {"signal": checksum, "layers": [0], **FAST, **kwargs}
    with pytest.raises(InputError, match=message):
        attribute(model, tok, EXAMPLES, **settings)


def test_bad_examples_and_rewards(tiny_random):
    model, tok = tiny_random
    with pytest.raises(InputError, match="examples: empty"):
        attribute(model, tok, [], signal=checksum, layers=[0], **FAST)
    with pytest.raises(InputError, match=r"example 'x': field 'answer' is missing; signal 'accuracy' needs it"):
        attribute(model, tok, [{"id": "x", "prompt": "1+1\n"}], signal="accuracy", layers=[0], **FAST)
    with pytest.raises(InputError, match=r"reward nan for example 'e0' sample 0 is not finite"):
        attribute(model, tok, EXAMPLES, signal=lambda c, e: float("nan"), layers=[0], **FAST)
    with pytest.raises(InputError, match="model: Linear has no model.layers"):
        attribute(torch.nn.Linear(2, 2), tok, EXAMPLES, signal=checksum, layers=[0], **FAST)


def test_partial_scores_merge_is_associative_commutative_with_identity():
    from ipg.scores import PartialScores

    rng = np.random.default_rng(0)
    sites = [Site(1, "residual"), Site(2, "residual")]

    def part(n):
        p = PartialScores()
        for _ in range(n):
            p.add_prompt(sites[rng.integers(2)], rng.normal(size=6), int(rng.integers(1, 6)))
        return p

    a, b, c = part(3), part(4), part(2)

    def same(x, y):
        assert set(x.sites) == set(y.sites)
        for s in x.sites:
            np.testing.assert_allclose(x.sites[s].total, y.sites[s].total, rtol=1e-12)
            np.testing.assert_allclose(x.sites[s].total_sq, y.sites[s].total_sq, rtol=1e-12)
            assert (x.sites[s].n_prompts, x.sites[s].n_trajectories) == (
                y.sites[s].n_prompts,
                y.sites[s].n_trajectories,
            )

    same(a.merge(b).merge(c), a.merge(b.merge(c)))
    same(a.merge(b), b.merge(a))
    same(a.merge(PartialScores()), a)
    same(PartialScores().merge(a), a)
    merged = a.merge(b).merge(c)
    meta = {"run_id": "m"}
    assert merged.table(meta).num_rows == 6 * len(merged.sites)


@pytest.mark.parametrize("resample", [False, True])
def test_on_error_skip_leaves_the_failing_example_out_and_counts_it(tiny_random, resample):
    model, tok = tiny_random
    calls = {"n": 0}

    def flaky(completion, example):  # fails on e2 only; in resample mode only on the path (alpha < 1)
        calls["n"] += 1
        if example["id"] == "e2" and (not resample or calls["n"] > 16):
            raise ValueError("bad example")
        return float(len(completion) % 3)

    res = attribute(model, tok, EXAMPLES, signal=flaky, layers=[0], resample=resample, on_error="skip", **FAST)
    assert list(res.diagnostics["skipped"]) == ["e2"] and "ValueError: bad example" in res.diagnostics["skipped"]["e2"]
    assert res.diagnostics["n_prompts"] == 3 and set(res.table.column("n_prompts").to_pylist()) == {3}
    rest = [ex for ex in EXAMPLES if ex["id"] != "e2"]
    expected = attribute(
        model, tok, rest, signal=lambda c, ex: float(len(c) % 3), layers=[0], resample=resample, **FAST
    )
    np.testing.assert_allclose(
        res.table.column("score").to_pylist(), expected.table.column("score").to_pylist(), rtol=1e-5, atol=1e-9
    )
    with pytest.raises(InputError, match="on_error: got 'ignore'"):
        attribute(model, tok, EXAMPLES, signal=flaky, layers=[0], on_error="ignore", **FAST)


@pytest.mark.parametrize("kind", ["residual", "mlp", "attn"])
def test_lockstep_padding_changes_no_score(organism, kind):
    """A ZeRO-3 rank pads to the busiest rank's number of calls with zero-advantage dummies."""
    from ipg.attribution import AttributionConfig, sample_rollouts, shard_scores
    from ipg.components import Site
    from ipg.organism.card import splits
    from ipg.signals import make_signal

    model, tok = organism
    cfg = AttributionConfig(
        method="ipg", layers=(1,), kind=kind, q=2, n_samples=4, max_new_tokens=64, batch_tokens=600, completeness=False
    )
    sig = make_signal("accuracy")
    rollouts = sample_rollouts(model, tok, splits()["support"][:5], sig, cfg)
    width = {"residual": 128, "mlp": 512, "attn": 128}[kind]
    base = {Site(1, kind): torch.zeros(width)}
    whole = dataclasses.replace(cfg, share_prefix=False)  # as a ZeRO-3 rank runs: whole sequences
    plain = shard_scores(model, tok, rollouts, sig, whole, [Site(1, kind)], base).partial.means(Site(1, kind))
    calls = []
    padded = shard_scores(
        model, tok, rollouts, sig, cfg, [Site(1, kind)], base, agree=lambda n: calls.append(n) or n + 2
    ).partial.means(Site(1, kind))
    # the chunk count, then per chunk (2 of them padding: dummy captures) its micro-batch count, each padded by 2
    assert len(calls) == 1 + calls[0] + 2 and calls[1] > 0 and calls[-2:] == [0, 0]
    np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-7 * np.abs(plain).max())


def test_a_rollout_cache_shares_the_sampled_traces_and_changes_no_score(tiny_random, monkeypatch):
    """Attributions of another signal or method on the same prompts and seed score the same trajectories:
    with a shared cache they are sampled once, and every score equals the uncached attribution's."""
    import ipg.rollouts

    model, tok = tiny_random
    plain = {
        sig: _scores(attribute(model, tok, EXAMPLES, signal=sig, layers=[1], seed=3, **FAST))
        for sig in (checksum, "length")
    }
    calls = []
    real = ipg.rollouts.generate
    monkeypatch.setattr(ipg.rollouts, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = {}
    cached = {
        sig: attribute(model, tok, EXAMPLES, signal=sig, layers=[1], seed=3, rollout_cache=cache, **FAST)
        for sig in (checksum, "length")
    }
    assert len(calls) == 1 and len(cache) == 1
    assert [s.completion_ids for r in cached[checksum].rollouts for s in r.samples] == [
        s.completion_ids for r in cached["length"].rollouts for s in r.samples
    ]
    for sig, res in cached.items():
        assert np.array_equal(_scores(res), plain[sig])
    attribute(model, tok, EXAMPLES, signal="length", layers=[1], seed=4, rollout_cache=cache, **FAST)
    assert len(calls) == 2  # another seed samples anew
