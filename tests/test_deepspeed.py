"""The DeepSpeed gradient backend: a ZeRO-3 group of 2 ranks on CPU (gloo) gives the torch backend's
scores, with each rank holding half of the parameters. Skipped where deepspeed is not installed."""

import pytest

pytest.importorskip("deepspeed")

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.engines

from raytools import assert_same_scores, small_ray  # noqa: E402

from ipg.attribution import AttributionConfig, attribute  # noqa: E402
from ipg.driver.config import DeepSpeedConfig  # noqa: E402
from ipg.driver.orchestration.pipeline import RaySession  # noqa: E402
from ipg.organism.card import splits  # noqa: E402


def test_zero3_group_of_two_ranks_equals_the_torch_backend(local_ray, organism, tmp_path):
    model, tok = organism
    examples = splits()["support"][40:47]  # 7 prompts, shards of 3: the ranks get unequal shares (2 + 1, 1 + 0)
    cfg = small_ray(1, gradient_backend="deepspeed", deepspeed=DeepSpeedConfig(ranks=2))
    logs = []
    with RaySession("organism", cfg, log=logs.append) as session:
        memory = session.info["zero3"]
        for settings in (dict(layers=(1, 2), kind="residual"), dict(layers=(1,), kind="mlp", baseline="mean")):
            a = AttributionConfig(
                method="ipg", q=3, n_samples=4, max_new_tokens=96, seed=11, completeness=False, **settings
            )
            reference = attribute(model, tok, examples, signal="accuracy", **{**a.__dict__, "layers": list(a.layers)})
            res = session.attribute(examples, a, out_dir=tmp_path / a.kind)
            # other micro-batch shapes than in-process (a rank's share, padded calls): float rounding differs;
            # scores agree to 1e-5 of the largest score (measured 1.1e-6)
            assert_same_scores(res.table, reference.table, scale_rtol=1e-5)
            assert res.diagnostics["n_prompts"] == 7
    full = sum(p.numel() for p in model.parameters())
    assert [m["rank"] for m in memory] == [0, 1] and all(m["full_params"] == full for m in memory)
    assert sum(m["local_params"] for m in memory) >= full
    for m in memory:  # about half each (ZeRO-3 pads partitions to equal size)
        assert 0.45 * full <= m["local_params"] <= 0.55 * full, m
    assert any("zero3 rank 1" in line for line in logs)


def test_resample_is_refused_on_a_zero3_group(local_ray, tmp_path):
    from ipg.errors import InputError

    cfg = small_ray(1, gradient_backend="deepspeed", deepspeed=DeepSpeedConfig(ranks=2))
    with RaySession("organism", cfg) as session:
        with pytest.raises(InputError, match="attribution.resample: not available with the deepspeed gradient backend"):
            session.attribute(
                splits()["support"][:3],
                AttributionConfig(method="ipg", layers=(1,), q=2, n_samples=2, resample=True, completeness=False),
                out_dir=tmp_path,
            )


def test_vllm_rollouts_with_a_zero3_group_measure_the_log_prob_gap(local_ray, tmp_path):
    """The Llama config's pairing: vLLM samples, ZeRO-3 ranks re-score them in lockstep."""
    pytest.importorskip("vllm")
    from ipg.driver.config import VLLMConfig

    cfg = small_ray(
        1,
        gradient_backend="deepspeed",
        deepspeed=DeepSpeedConfig(ranks=2),
        rollout_backend="vllm",
        vllm=VLLMConfig(max_model_len=256),
    )
    with RaySession("organism", cfg) as session:
        res = session.attribute(
            splits()["support"][50:55],
            AttributionConfig(method="ipg", layers=(2,), q=2, n_samples=3, max_new_tokens=64, completeness=False),
            out_dir=tmp_path,
        )
    gap = res.diagnostics["logprob_gap"]
    assert res.diagnostics["n_prompts"] == 5 and gap["n_tokens"] == round(res.diagnostics["mean_generated_tokens"] * 15)
    assert gap["max_abs"] < 1e-4, gap


def test_a_zero3_group_that_samples_too_equals_the_in_process_run(local_ray, organism, tmp_path):
    """ray.rollout_backend 'deepspeed': no rollout actor; each rank samples its share of a shard, decoding in
    lockstep with the other rank (unequal shares, samples that end at different steps), and the run gives
    the in-process rollouts, scores, completeness points and steered generations."""
    from ipg.generation import SamplingParams, generate
    from ipg.packing import Job
    from ipg.workers.model_ops import ModelOps

    model, tok = organism
    examples = splits()["support"][60:67]
    cfg = small_ray(1, gradient_backend="deepspeed", rollout_backend="deepspeed", deepspeed=DeepSpeedConfig(ranks=2))
    # 64 new tokens: most samples end before the cap, at different steps (96 cost half again, for no coverage)
    a = AttributionConfig(
        method="ipg", layers=(2,), q=3, n_samples=3, max_new_tokens=64, seed=4, generation_batch_size=2
    )
    reference = attribute(model, tok, examples, signal="accuracy", **{**a.__dict__, "layers": list(a.layers)})
    steering = {"scale": ["layers.2.residual:5", "layers.2.residual:9"], "gamma": 0.0, "positions": "all"}
    params = SamplingParams(max_new_tokens=48, seed=3)
    with RaySession("organism", cfg) as session:
        assert session.rollout is None and len(session.sampler) == 1
        res = session.attribute(examples, a, out_dir=tmp_path)
        support = session.rollouts(examples, a, "accuracy", {})
        steered = session.steered_generate(examples, params, steering)
        # packed evaluations: shares of 4 and 3 prompts in batches of 3 rows, so one rank idles a batch
        unsteered_too = [Job(examples, None), Job(examples, {k: v for k, v in steering.items() if k != "positions"})]
        packed = session.steered_generate_many(unsteered_too, params, "all", 3, 10**5)
    assert_same_scores(res.table, reference.table, scale_rtol=1e-5)
    for k in ("J_alpha0", "J_alpha_min", "J_alpha1"):
        assert res.diagnostics["sites"]["layers.2.residual"][k] == pytest.approx(
            reference.diagnostics["sites"]["layers.2.residual"][k], abs=1e-12
        )
    ops = ModelOps(model, tok)
    assert [[s.completion_ids for s in r.samples] for r in support] == [
        [s.completion_ids for s in r.samples] for r in ops.rollouts(examples, a, "accuracy", {})
    ]
    assert [[s.completion_ids for s in g] for g in steered] == [
        [s.completion_ids for s in g] for g in ops.generate(examples, params, steering)
    ]
    assert steered != generate(model, tok, examples, params)  # the steering took effect
    assert [[[s.completion_ids for s in g] for g in job] for job in packed] == [
        [[s.completion_ids for s in g] for g in groups] for groups in (generate(model, tok, examples, params), steered)
    ]


def test_deepspeed_sampling_needs_the_deepspeed_gradient_backend():
    from ipg.driver.config import RayConfig
    from ipg.errors import InputError

    with pytest.raises(InputError, match="rollout_backend: 'deepspeed' samples in the ZeRO-3 gradient groups"):
        RayConfig(rollout_backend="deepspeed")
