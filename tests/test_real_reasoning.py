"""Reasoning on the real model: SAEs trained on its step-by-step traces (named and built on first use, or
by `ipg sae train`), SAELens's layout for them, and the reasoning config reduced to minutes.

IPG_REAL=0 skips the tier (offline machines).
"""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

pytestmark = pytest.mark.real

if os.environ.get("IPG_REAL") == "0":
    pytest.skip("IPG_REAL=0: the real-model tier is skipped", allow_module_level=True)

from ipg.driver.cli import main  # noqa: E402
from ipg.errors import InputError  # noqa: E402
from ipg.sae import SAE  # noqa: E402

NAME = "smollm2-135m-instruct"
CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "configs" / "smollm2-135m-instruct-reasoning.yaml"


@pytest.fixture(scope="module")
def lens_sae(tmp_path_factory):
    """A small TopK SAE at layer 22, trained by `ipg sae train` on fresh word problems and written in
    SAELens's layout."""
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("sae") / "layer22"
    assert (
        main(
            [
                "sae",
                "train",
                "--model",
                NAME,
                "--layer",
                "22",
                "--features",
                "96",
                "--k",
                "8",
                "--prompts",
                "4",
                "--samples",
                "1",
                "--max-new-tokens",
                "32",
                "--steps",
                "40",
                "--format",
                "sae_lens",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_sae_lens_export_and_load_on_the_real_model(lens_sae):
    from safetensors.torch import load_file

    from ipg.components import Site, capture, edit
    from ipg.models import load_model

    cfg = json.loads((lens_sae / "cfg.json").read_text())
    assert (
        cfg["architecture"] == "topk"
        and cfg["d_in"] == 576
        and cfg["metadata"]["hook_name"] == "blocks.22.hook_resid_post"
    )
    fit = json.loads((lens_sae / "ipg_fit.json").read_text())
    assert 0 < fit["fvu"] < 1.0 and fit["n_activations"] > 100  # it learned something: below the mean's 1.0
    sae = SAE.load(lens_sae)
    w = load_file(str(lens_sae / "sae_weights.safetensors"))
    model, tok = load_model(NAME)
    ids = torch.tensor([tok("Sam has 3 apples. He buys 4 more.")["input_ids"]])
    with capture(model, [Site(22, "residual")]) as got:
        logits = model(ids).logits
    z = got[Site(22, "residual")][0]
    pre = (z - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # SAELens's documented encoder on the model's activations
    top = pre.topk(8, dim=-1)
    assert torch.allclose(sae.encode(z), torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()), atol=1e-4)
    with edit(model, Site(22, "sae"), lambda f: 1.0 * f, positions="all", saes={22: sae}):
        assert torch.equal(model(ids).logits, logits)  # an identity edit through the loaded SAE changes nothing


def test_named_sae_is_built_once_by_its_recipe_and_cached(monkeypatch, tmp_path):
    from ipg import catalog, named_saes

    models = catalog.models_dir()  # the model stays where the session built it; the SAE goes to a new cache
    monkeypatch.setenv("IPG_CACHE", str(tmp_path))
    monkeypatch.setattr(catalog, "models_dir", lambda: models)
    monkeypatch.setitem(
        named_saes.RECIPES,
        NAME,
        named_saes.SAERecipe(prompts=3, samples=1, max_new_tokens=16, features=64, k=4, steps=20, batch_size=64),
    )
    lines = []
    path = named_saes.named_sae_path(f"{NAME}:layer22", NAME, 22, log=lines.append)
    assert path.parent == tmp_path / "saes" / NAME and any("training it (once)" in m for m in lines)
    fit = named_saes.fit_of(path)
    assert fit["layer"] == 22 and fit["recipe"]["features"] == 64 and "dead_features" in fit and "fvu" in fit
    again = []
    assert named_saes.named_sae_path(f"{NAME}:layer22", NAME, 22, log=again.append) == path and not again  # cached
    with pytest.raises(InputError, match="list it under 22"):
        named_saes.named_sae_path(f"{NAME}:layer22", NAME, 20)
    with pytest.raises(InputError, match="belongs to model"):
        named_saes.named_sae_path(f"{NAME}:layer2", "organism", 2)


def test_reduced_reasoning_config_runs_every_selection_in_both_experiments(lens_sae, tmp_path):
    out = tmp_path / "run"
    flags = ("--seeds=[0] --data.n_support=3 --data.n_eval=4 --attribution.n_samples=3 --attribution.q=2 "
             "--attribution.candidates=8 --attribution.max_new_tokens=120 --evaluation.max_new_tokens=40 --cards.prompts=2 "
             "--length.gammas=[0,1,2]")  # fmt: skip
    code = main(["run", "--config", str(CONFIG), f"--out={out}", f"--model.saes={{22: '{lens_sae}'}}", *flags.split()])
    assert code == 0
    evals = pq.read_table(out / "eval.parquet").to_pylist()
    acc = {r["method"] for r in evals if r["experiment"] == "accuracy"}
    length = {(r["method"], r["gamma"]) for r in evals if r["experiment"] == "length"}
    assert acc == {"original", "component", "component_sae", "random"}
    assert length == {
        (m, g) for m in ("component", "component_sae", "ipg", "activation", "random") for g in (0.0, 1.0, 2.0)
    }
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["gradient"] > 0  # traces of up to 120 tokens differ in length: the length groups are mixed
    items = pq.read_table(out / "eval_items.parquet").to_pylist()
    assert all(i["finished"] is not None for i in items)
    report = (out / "report.md").read_text()
    summary = report.split("## Headline")[0]
    assert "**Reasoning strength**" in summary and "| gamma | tokens | vs unsteered |" in summary
    assert "## Component cards: length signal" in report and "Acts **" in report
    assert run["config"]["model"]["saes"] == {"22": str(lens_sae)}


def test_reduced_strength_study_chooses_on_dev_and_reports_on_test(lens_sae, tmp_path):
    """`ipg study strength` at toy size: every candidate and its random arm under every intervention on the
    development prompts, one choice by the rule, and that choice (with the shipped default) on the test
    prompts; the page shows the rule, the checks and the massive-activation ratios."""
    out = tmp_path / "study"
    flags = (f"--out {out} --config {CONFIG} --seeds 0 --n-support 2 --n-dev 2 --n-test 2 --p 4 --gammas 0 2 "
             "--candidates layers.22.residual:top layers.22.sae:top layers.22.attn:heads --interventions scale mean "
             "--max-new-tokens 24")  # fmt: skip
    assert main(["study", "strength", *flags.split()]) == 0
    summary = json.loads((out / "study.json").read_text())
    rows = pq.read_table(out / "items.parquet").to_pylist()
    dev = {(r["selection"], r["intervention"], r["gamma"]) for r in rows if r["split"] == "dev"}
    arms = ("layers.22.residual:top", "layers.22.sae:top", "layers.22.attn:heads")
    arms += ("layers.22.residual:random", "layers.22.sae:random", "layers.22.attn:random-heads")
    assert dev == {("unsteered", "none", 1.0)} | {
        (a, i, g) for a in arms for i in ("scale", "mean") for g in (0.0, 2.0)
    }
    assert len(rows) == 2 * len(dev) + 2 * (1 + 2 * len(summary["test_settings"]))  # 2 prompts each, 1 seed
    chosen = summary["chosen"]
    assert (chosen["selection"], chosen["intervention"]) == tuple(summary["test_settings"][0])
    assert chosen["tier"] in ("passes", "keeps the text", "largest margin")
    assert len(summary["dev"]) == 3 * 2  # candidates x interventions, one gamma pair
    assert {r["selection"] for r in summary["selections"]} == set(arms)
    for r in summary["selections"]:  # one whole head of SmolLM2's nine (64 coordinates of o_proj's input)
        if r["selection"].endswith("heads"):
            (head,) = r["heads"]
            assert r["components"] == [f"layers.22.attn:{i}" for i in range(64 * head, 64 * head + 64)]
    page = (out / "study.md").read_text()
    assert summary["rule"] in page and "## Are the selected components massive activations?" in page
    assert ("every check below holds" in page) == summary["test"]["passes"]
