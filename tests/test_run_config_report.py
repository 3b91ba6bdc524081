import json
import re

import pyarrow.parquet as pq
import pytest

from ipg.driver.cli import main
from ipg.driver.config import load_config
from ipg.errors import InputError

pytestmark = pytest.mark.unit


# the smallest run that still attributes, selects and steers: one seed, 4 support and 6 eval prompts
TINY = ["--seeds=[0]", "--data.n_support=4", "--data.n_eval=6", "--attribution.layers=[2]", "--attribution.q=2",
        "--attribution.n_samples=2", "--evaluation.p=[4]", "--evaluation.random_draws=1"]  # fmt: skip


def test_defaults_serve_the_organism_and_overrides_apply(tmp_path):
    cfg = load_config(None, ["--attribution.q=4", "--seeds=[1,2]", "--evaluation.p=[4, 8]"])
    assert (
        cfg.model.name == "organism" and cfg.attribution.q == 4 and cfg.seeds == [1, 2] and cfg.evaluation.p == [4, 8]
    )
    f = tmp_path / "c.yaml"
    f.write_text("attribution:\n  layers: [2]\n  n_samples: 3\n")
    cfg = load_config(str(f), ["--attribution.n_samples=4"])
    assert cfg.attribution.layers == (2,) and cfg.attribution.n_samples == 4  # the flag wins over the file
    assert load_config("deploy/configs/organism.yaml") == load_config(None)  # the shipped file states the defaults


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("attribution:\n  qq: 3\n", [], r"attribution.qq: unknown key"),
        ("", ["--evaluation.p=[0]"], r"evaluation.p: a non-empty list"),
        ("", ["--attribution.q=ten"], r"attribution.q: expected int, got 'ten'"),
        ("", ["--attribution.kind=heads"], r"attribution.kind: got 'heads'"),
        ("", ["--baselines.methods=[random, magic]"], r"baselines.methods: unknown 'magic'"),
        ("", ["--evaluation.enhance_gammas=[0.5]"], r"enhance_gammas must be >= 1"),
        ("model: [1]\n", [], r"model: expected a mapping"),
        ("", ["--data.n_eval=0"], r"data.n_eval: must be >= 1"),
        ("variants:\n  pg: {baseline: mean}\n", [], r"variants.pg: a variant needs its own name"),
        ("variants:\n  v: {baseline: meen}\n", [], r"variants.v.baseline: got 'meen'"),
        ("variants:\n  v: {layers: [1]}\n", [], r"variants.v.layers: not a path setting"),
    ],
)
def test_bad_keys_and_values_name_the_dotted_key(tmp_path, text, overrides, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(str(f), overrides)


def test_cli_reports_config_errors_and_unknown_flags(capsys, tmp_path):
    assert main(["run", "--attribution.layers=[9]", "--data.n_eval=2", f"--out={tmp_path / 'r'}"]) == 2
    assert "layers: 9 is out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "x", "--attribution.q=3"])  # overrides belong to `ipg run` only


def test_small_run_writes_outputs_and_report_rebuilds_from_parquet(tmp_path):
    out = tmp_path / "run"
    flags = ("--seeds=[0,1] --data.n_support=6 --data.n_eval=12 --attribution.layers=[2] --attribution.q=2 "
             "--attribution.n_samples=3 --evaluation.p=[4] --baselines.methods=[random,activation,reason_score,ipg] "
             "--length.layers=[2] --length.gammas=[0,1,2] --length.methods=[random,activation,sae] "
             "--reflection.enabled=false --stability.p=4 --evaluation.random_draws=3")  # fmt: skip
    code = main(["run", f"--out={out}", *flags.split(), "--variants={mean_baseline: {baseline: mean}}"])
    assert code == 0
    evals = pq.read_table(out / "eval.parquet").to_pylist()
    assert {"method", "layer", "p", "gamma", "seed", "draw", "accuracy", "mean_length", "n", "cut_off_share",
            "loop_share", "answered_share"} <= set(evals[0])  # fmt: skip
    methods = {r["method"] for r in evals if r["experiment"] == "accuracy"}
    # the default selection (component) with PG (its candidates) and the paper's IPG beside it
    assert methods == {
        "original",
        "component",
        "component_sae",
        "ipg",
        "random",
        "activation",
        "reason_score",
        "mean_baseline",
    }
    run_ids = set(pq.read_table(out / "scores.parquet").column("run_id").to_pylist())
    assert {
        "accuracy-component-residual-seed0-mean_baseline",
        "accuracy-pg-residual-seed1",
        "accuracy-component-sae-seed1",
        "accuracy-ipg-residual-seed1",
    } <= run_ids
    # per prompt: every evaluation's 12 prompts, and its accuracy is their mean
    items = pq.read_table(out / "eval_items.parquet").to_pylist()
    for r in evals:
        mine = [
            i
            for i in items
            if all(i[k] == r[k] for k in ("experiment", "method", "layer", "p", "gamma", "seed", "draw"))
        ]
        assert len(mine) == 12 and sum(i["correct"] for i in mine) / 12 == r["accuracy"]
        assert (
            sum(i["looped"] for i in mine) / 12 == r["loop_share"]
            and sum(i["answered"] for i in mine) / 12 == r["answered_share"]
        )
    rnd = {(r["seed"], r["draw"]) for r in evals if r["method"] == "random" and r["experiment"] == "accuracy"}
    assert rnd == {(s, d) for s in (0, 1) for d in range(3)}
    selections = pq.read_table(out / "selections.parquet").to_pylist()
    chosen = {(r["method"], r["seed"], r["draw"]) for r in selections if r["experiment"] == "accuracy"}
    assert ("component", 0, 0) in chosen and ("random", 1, 2) in chosen
    assert all(r["median_ratio"] > 0 for r in selections if r["kind"] == "residual")
    assert {r["seed"] for r in evals} == {0, 1} and all(r["n"] == 12 for r in evals)
    assert {(r["method"], r["gamma"]) for r in evals if r["experiment"] == "length"} == {
        (m, g) for m in ("component", "random", "activation", "component_sae") for g in (0.0, 1.0, 2.0)
    }
    # gamma 1 is the unsteered model: its outcomes are the original evaluation's, prompt by prompt
    original = {i["example_id"]: i for i in items if i["method"] == "original" and i["seed"] == 1}
    for i in items:
        if i["experiment"] == "length" and i["gamma"] == 1.0:
            o = original[i["example_id"]]
            assert (i["length"], i["correct"], i["finished"]) == (o["length"], o["correct"], o["finished"])
    stability = pq.read_table(out / "stability.parquet").to_pylist()
    assert {r["comparison"] for r in stability} == {"seeds", "support subsets"}
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["seeds"] == [0, 1] and {"attribute", "evaluation", "report"} <= set(run["timings"])
    stages = run["stages"]  # in one process the stages are in sequence: they and the rest sum to the wall
    assert all(stages[k] > 0 for k in ("rollout", "gradient", "baseline_statistics", "evaluation"))
    assert (
        abs(
            sum(stages[k] for k in ("rollout", "gradient", "baseline_statistics", "evaluation", "other"))
            - stages["wall"]
        )
        < 0.1
    )
    # run.json's seconds are rounded to 0.1 and the stages to 0.01: they may differ by 0.055, plus float error
    assert stages["evaluation"] == run["timings"]["evaluation"] and abs(stages["wall"] - run["seconds"]) <= 0.06
    report = (out / "report.md").read_text()
    assert "## Table 1" in report and "| reason_score |" in report and "## Evidence" in report
    assert report.index("## Headline") < report.index("## Table 1") and report.startswith(
        "# IPG experiment report\n\nSelection: the per-component path"
    )
    assert "chosen by measurement" in report.split("\n")[2]
    assert "| ipg |" in report.split("## Headline")[1] and "| mean_baseline |" in report.split("## Table 1")[1]
    assert "| component |" in report.split("## Headline")[1] and "beyond random" in report
    cards = pq.read_table(out / "cards.parquet").to_pylist()
    assert [(c["signal"], c["rank"]) for c in cards] == [(s, r) for s in ("accuracy", "length") for r in range(4)]
    assert all(json.loads(c["contexts"]) for c in cards)
    assert "## Component cards: accuracy signal" in report and "## Component cards: length signal" in report
    assert "Share of |contribution| by line of the trace" in report and "Acts **" in report
    assert (
        report.index("## Summary") < report.index("## Headline")
        and "**Reasoning strength**" in report.split("## Headline")[0]
    )
    assert "## Headline: reasoning strength" in report and "| 22 |" not in report
    # the side-by-side texts: the first 8 eval prompts of every first-seed evaluation (random: its first draw)
    kept = pq.read_table(out / "completions.parquet").to_pylist()
    assert {(r["seed"], r["draw"]) for r in kept} == {(0, 0)} and {r["position"] for r in kept} == set(range(8))
    assert {(r["experiment"], r["method"]) for r in kept} >= {
        ("accuracy", "original"),
        ("accuracy", "component"),
        ("length", "random"),
    }
    assert report.index("## Steered completions") < report.index("## Component cards")
    assert "### accuracy signal: layer 2, p = 4, gamma 0 (suppressed) and 1.5 (enhanced)" in report
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script src" not in page  # nothing fetched
    assert page.count('class="card"') == len(cards) and "data:image/png;base64," in page
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert {
        "accuracy_vs_gamma.png",
        "accuracy_vs_p.png",
        "length_vs_gamma.png",
        "top_components.png",
        "dice.png",
    } <= set(plots)
    (out / "report.md").unlink()
    for p in (out / "plots").iterdir():
        p.unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report
    inline = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")  # the plots' bytes may differ by build
    assert inline.sub("", (out / "report.html").read_text()) == inline.sub("", page)
    assert sorted(p.name for p in (out / "plots").iterdir()) == plots


def test_report_on_a_directory_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "eval.parquet not found" in capsys.readouterr().err


def test_best_enhancing_gamma_is_chosen_on_validation_prompts(tmp_path, capsys):
    out = tmp_path / "run"
    small = [
        f"--out={out}",
        *TINY,
        "--evaluation.enhance_gammas=[1.5, 3.0]",
        "--baselines.methods=[random]",
        "--length.enabled=false",
        "--reflection.enabled=false",
        "--stability.enabled=false",
        "--cards.enabled=false",
    ]
    assert main(["run", *small, "--data.n_validation=5", "--attribution.candidates=3"]) == 0
    said = capsys.readouterr()
    # method 'component' selects among its candidates: raised to the largest p, and the log says so once
    assert (said.out + said.err).count("attribution.candidates: raised from 3 to 4") == 1
    evals = pq.read_table(out / "eval.parquet").to_pylist()
    validation = [r for r in evals if r["experiment"] == "validation"]
    assert {(r["method"], r["gamma"]) for r in validation} == {
        (m, g) for m in ("component", "component_sae", "random") for g in (1.5, 3.0)
    }
    assert all(r["n"] == 5 for r in validation)
    items = pq.read_table(out / "eval_items.parquet").to_pylist()
    held = {i["example_id"] for i in items if i["experiment"] == "validation"}
    assert len(held) == 5 and not held & {i["example_id"] for i in items if i["experiment"] == "accuracy"}
    assert "chosen on 5 validation prompts that the eval split does not hold" in (out / "report.md").read_text()
    # an eval file with nothing after n_eval cannot choose: one clear error before any work
    assert main(["run", *small, f"--out={tmp_path / 'b'}", "--data.n_eval=500"]) == 2
    assert (
        "error: data.n_validation: choosing among enhance gammas [1.5, 3.0] needs validation prompts"
        in capsys.readouterr().err
    )


def test_the_paper_preset_sets_the_papers_attribution_and_flags_still_win():
    from ipg.driver.config import PRESETS

    cfg = load_config(None, ["--attribution.q=4"], preset="paper")
    a = cfg.attribution
    assert (a.method, a.baseline, a.schedule, a.n_samples, a.temperature, a.top_p, a.resample, a.advantage) == (
        "ipg",
        "zero",
        "uniform",
        5,
        0.6,
        0.8,
        False,
        "grpo",
    ) and a.q == 4  # the flag wins over the preset
    assert all(k.startswith("attribution.") for k in PRESETS["paper"])
    with pytest.raises(InputError, match=r"--preset: unknown 'papr'; use one of \['paper'\]"):
        load_config(None, [], preset="papr")


def test_pg_as_the_runs_method_with_the_papers_ipg_as_a_baseline(tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                f"--out={out}",
                *TINY,
                "--attribution.method=pg",
                "--baselines.methods=[ipg, random]",
                "--length.layers=[2]",
                "--length.gammas=[0, 2]",
                "--reflection.enabled=false",
                "--stability.p=4",
                "--cards.components=2",
                "--model.saes={}",
            ]
        )
        == 0
    )
    evals = pq.read_table(out / "eval.parquet").to_pylist()
    assert {r["method"] for r in evals if r["experiment"] == "accuracy"} == {"original", "pg", "ipg", "random"}
    assert {r["method"] for r in evals if r["experiment"] == "length"} == {"pg", "random"}
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    assert {r["run_id"] for r in scores} >= {
        "accuracy-pg-residual-seed0",
        "accuracy-ipg-residual-seed0",
        "accuracy-pg-residual-seed0-halfA",
    }
    assert {c["method"] for c in pq.read_table(out / "cards.parquet").to_pylist()} == {"pg"}
    report = (out / "report.md").read_text()
    assert report.startswith("# IPG experiment report\n\nSelection: PG (the policy gradient times the activation")
    assert (
        "| gamma | pg length | pg accuracy |" in report
        and "| selection | gamma | tokens | vs random (paired) |" in report
    )
    assert (
        "pg's length range (gamma 2 minus gamma 0)" in report.split("## Headline")[0]
    )  # the run's method, on the first screen
