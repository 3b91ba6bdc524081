"""report.md and plots for a run directory, rebuilt from its Parquet files alone (``ipg report RUN_DIR``).

The headline (``driver.report.headline``) gives each selection's control range against random with 95%
bootstrap intervals over eval prompts and seeds; the plots draw the same intervals as error bars. The
tables after it follow the paper: Table 1 (enhance / suppress accuracy per method, mean and standard
deviation over seeds), the length-control and the reflection-control tables, and the evidence section,
which checks the paper's claims against the numbers.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ipg.driver.report.headline import headline, method_order, verdict
from ipg.driver.report.html import signal_of, write_html
from ipg.driver.report.plots import group as _group
from ipg.driver.report.plots import mean as _mean
from ipg.driver.report.plots import plots
from ipg.driver.report.plots import sd as _sd
from ipg.driver.report.steered_texts import markdown_lines, panels
from ipg.driver.report.strength import detail_lines, length_ranges, strength_section, summary_lines
from ipg.errors import InputError
from ipg.files import atomic_write_text
from ipg.interventions import INTERVENTIONS
from ipg.methods import METHODS, PAPER
from ipg.sites import ComponentId


def _ms(values: list[float], pct: bool = True) -> str:
    k = 100 if pct else 1
    if len(values) == 1:
        return f"{k * values[0]:.1f}"
    return f"{k * statistics.mean(values):.1f} ± {k * statistics.stdev(values):.1f}"


def _load(run_dir: Path):
    for name in ("eval.parquet", "scores.parquet"):
        if not (run_dir / name).is_file():
            raise InputError(f"report: {run_dir / name} not found; RUN_DIR must be the output of `ipg run`")
    table = pq.read_table(run_dir / "eval.parquet")
    evals = table.to_pylist()
    scores = pq.read_table(run_dir / "scores.parquet").to_pylist()
    optional = {
        name: pq.read_table(run_dir / f"{name}.parquet").to_pylist() if (run_dir / f"{name}.parquet").is_file() else []
        for name in ("stability", "eval_items", "selections", "massive", "cards", "card_terms", "completions")
    }
    setup = json.loads((table.schema.metadata or {}).get(b"ipg.setup", b"{}"))
    return evals, scores, setup, optional


def _setup(setup: dict) -> list[str]:
    """What was run on what: the model, how examples became its input, and how answers were scored."""
    if not setup:
        return []
    p, a, d = setup.get("prompt", {}), setup.get("answers", {}), setup.get("data", {})
    fmt = p.get("format")
    chosen = f"`{fmt}`" + (f", resolved to `{p.get('resolved')}`" if fmt == "auto" else "")
    lines = [
        "\n## Setup\n",
        f"- Model: `{setup.get('model')}`; signal: `{setup.get('signal')}`.",
        f"- Prompt format: {chosen}"
        + (f"; system message: {p['system']!r}" if p.get("system") else "")
        + (f"; user message: {p['user']!r}" if p.get("user") else "")
        + ".",
        f"- Answer extraction: formats {a.get('formats')} in this order"
        + (f", after the pattern `{a['pattern']}`" if a.get("pattern") else "")
        + "; references read as "
        f"`{d.get('reference')}`" + (f"; fields {d['fields']}" if d.get("fields") else "") + ".",
        f"- Data: support `{d.get('support')}`, eval `{d.get('eval')}`.",
    ]
    if p.get("example") is not None:
        lines += ["\nThe first eval prompt as the model sees it:\n", "```", p["example"].rstrip("\n"), "```"]
    return lines


def _control_lines(evals: list[dict], experiment: str, main: str, setup: dict) -> list[str]:
    """A control experiment's table, after how gamma acted on its selections (runs before interventions were
    named: scaling)."""
    table = _control_table(evals, experiment, main)
    if not table:
        return ["(not run)"]
    name = setup.get("interventions", {}).get(experiment, "scale")
    how = INTERVENTIONS.get(name, "intervention").describe
    return [f"\nGamma acts on every selection here, random's included, by `{name}`: {how}.\n", *table]


def _selection(setup: dict) -> list[str]:
    """The report's first line: which attribution variant chose the components."""
    a = setup.get("attribution")
    if not a:
        return []
    variant = METHODS[a["method"] if a["method"] in METHODS else PAPER].describe(a)
    return [f"Selection: {variant}" + (f" ({a['why']})" if a.get("why") else "") + ".", ""]


def massive_shares(selections: list[dict]) -> dict:
    """(method, layer, p) -> share of its evaluated selections (seeds, draws) that hold a massive coordinate."""
    sets = defaultdict(bool)
    for r in selections:
        if r["experiment"] == "accuracy" and r["kind"] == "residual":
            key = (r["method"], r["layer"], r["p"], r["seed"], r["draw"])
            sets[key] = sets[key] or bool(r["massive"])
    shares = defaultdict(list)
    for (method, layer, p, _, _), hit in sets.items():
        shares[(method, layer, p)].append(hit)
    return {k: sum(v) / len(v) for k, v in shares.items()}


def _massive(massive: list[dict], selections: list[dict]) -> list[str]:
    """The flagged coordinates of each layer, and which methods select them."""
    if not massive:
        return []
    lines = [
        "\nMassive-activation coordinates (mean |activation| at least 10x the layer's median on the support "
        "trajectories; scaling one either way can break the model):"
    ]
    for (layer,), rows in sorted(_group(massive, "layer").items()):
        ratio = defaultdict(list)
        for r in rows:
            ratio[r["index"]].append(r["median_ratio"])
        picked = defaultdict(set)
        for r in selections:
            if (
                r["layer"] == layer
                and r["kind"] == "residual"
                and r["index"] in ratio
                and r["experiment"] == "accuracy"
            ):
                picked[r["index"]].add(r["method"])
        lines.append(
            f"- layer {layer}: "
            + ", ".join(
                f"{i} ({_mean(v):.0f}x; selected by {', '.join(sorted(picked[i])) or 'none'})"
                for i, v in sorted(ratio.items())
            )
        )
    return lines


def card_lines(
    component: ComponentId, contexts: list[dict], terms: list[dict], ratio: float | None = None
) -> list[str]:
    """A card in Markdown: contexts with the token in bold, and the share of |contribution| by line and by
    fifth of the trace."""
    head = f"**{component}**" + (f" (mean |activation| {ratio:.1f}x the layer's median)" if ratio is not None else "")
    lines = [head, ""]
    for c in contexts:
        before, token, after = (x.replace("\n", "⏎").replace("|", "\\|") for x in (c["before"], c["token"], c["after"]))
        lines.append(f"- `{c['value']:+.2f}` …{before}**{token}**{after}…")
    mine = [t for t in terms if t["component"] == component.index]
    total = sum(abs(t["term"]) for t in mine)
    if total > 0:
        by_line, by_fifth = np.zeros(1 + max(t["line"] for t in mine)), np.zeros(5)
        signed_fifth = np.zeros(5)
        for t in mine:
            by_line[t["line"]] += abs(t["term"])
            by_fifth[t["fifth"]] += abs(t["term"])
            signed_fifth[t["fifth"]] += t["term"]
        first = ", ".join(f"line {i + 1}: {100 * v / total:.0f}%" for i, v in enumerate(by_line[:6]))
        early, late = by_fifth[:2].sum() / total, by_fifth[3:].sum() / total
        when = "early" if early > 0.5 else "late" if late > 0.5 else "throughout the trace"
        lines += [
            "",
            f"Acts **{when}**: {100 * early:.0f}% of |contribution| in the first two fifths of the trace, "
            f"{100 * late:.0f}% in the last two.",
            f"Share of |contribution| by line of the trace: {first}"
            + (f", later lines {100 * by_line[6:].sum() / total:.0f}%" if len(by_line) > 6 else "")
            + ".",
            "By fifth of the trace (start to end): "
            + ", ".join(f"{100 * v / total:.0f}%" for v in by_fifth)
            + "; signed sum per fifth: "
            + ", ".join(f"{v:+.3g}" for v in signed_fifth)
            + ".",
        ]
    return lines


def _cards(cards: list[dict], terms: list[dict]) -> list[str]:
    """Component cards per signal: top-activating contexts and where each component's score lands in the trace."""
    if not cards:
        return []
    lines = []
    for signal in sorted({signal_of(c) for c in cards}, key=lambda s: (s != "accuracy", s)):
        mine = [c for c in cards if signal_of(c) == signal]
        lines += [
            f"\n## Component cards: {signal} signal\n",
            f"The top {max(c['rank'] for c in mine) + 1} components of the selection method per layer for the {signal} "
            "signal (first seed). Contexts: the support positions where the component is most active. Contributions: "
            "the per-position terms of its score on a few support prompts, grouped by line of the trace and by fifth "
            "of it (early: the first two fifths; late: the last two).\n",
        ]
        for c in sorted(mine, key=lambda c: (c["layer"], c["rank"])):
            site_terms = [
                t for t in terms if t["layer"] == c["layer"] and t["kind"] == c["kind"] and signal_of(t) == signal
            ]
            lines += card_lines(
                ComponentId(c["layer"], c["kind"], c["index"]), json.loads(c["contexts"]), site_terms, c["median_ratio"]
            ) + [""]
    return lines


def _table1(evals) -> tuple[list[str], list[dict]]:
    acc = [r for r in evals if r["experiment"] == "accuracy"]
    # the best enhancing gamma of each selection, chosen on the validation prompts when the run has them
    validation = {
        (m, layer, p): max(rs, key=lambda g: _mean(rs[g]))
        for (m, layer, p), rs in _by_gamma([r for r in evals if r["experiment"] == "validation"]).items()
    }
    original = [r["accuracy"] for r in acc if r["method"] == "original"]
    lines, findings = [], []
    settings = sorted({(r["layer"], r["p"]) for r in acc if r["method"] not in ("original", "control_vector")})
    for layer, p in settings:
        lines += [
            f"\n**Layer {layer}, p = {p}** (greedy accuracy %, mean ± std over seeds; original {_ms(original)})\n",
            "| method | enhance (best gamma) | suppress gamma = 0 | suppress drop vs original |",
            "|---|---|---|---|",
        ]
        by_method = _group(
            [r for r in acc if r["layer"] == layer and (r["p"] == p or r["method"] == "control_vector")], "method"
        )
        for method in method_order(m for (m,) in by_method):
            rows = by_method[(method,)]
            by_gamma = _group(rows, "gamma")
            enh = {g: [r["accuracy"] for r in rs] for (g,), rs in by_gamma.items() if g > 1}
            best = validation.get((method, layer, p)) or (max(enh, key=lambda g: _mean(enh[g])) if enh else None)
            sup = [r["accuracy"] for r in by_gamma.get((0.0,), [])]
            drop = _mean(original) - _mean(sup) if sup else float("nan")
            enhance = f"{_ms(enh[best])} (gamma {best:g})" if best is not None else "-"
            suppress = (_ms(sup), f"{100 * drop:.1f}") if sup else ("-", "-")
            lines.append(f"| {method} | {enhance} | {suppress[0]} | {suppress[1]} |")
            findings.append(
                {
                    "layer": layer,
                    "p": p,
                    "method": method,
                    "suppress": sup,
                    "drop": drop,
                    "enhance_best": enh.get(best, []),
                    "best_gamma": best,
                }
            )
    return lines, findings


def _gamma_note(evals) -> str:
    n = next((r["n"] for r in evals if r["experiment"] == "validation"), None)
    if n:
        return (
            f"\nThe best enhancing gamma of each selection is chosen on {n} validation prompts that the eval split "
            "does not hold; the table shows its eval accuracy."
        )
    gammas = {r["gamma"] for r in evals if r["experiment"] == "accuracy" and r["gamma"] > 1}
    if len(gammas) > 1:
        return "\nThe best enhancing gamma is chosen on the eval split itself; treat it as optimistic."
    return "\nOne enhancing gamma was evaluated, so nothing is chosen on the eval split."


def _by_gamma(rows) -> dict:
    """(method, layer, p) -> gamma -> accuracies."""
    out = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[(r["method"], r["layer"], r["p"])][r["gamma"]].append(r["accuracy"])
    return out


def _control_table(evals, experiment: str, main: str = PAPER) -> list[str]:
    rows = [r for r in evals if r["experiment"] == experiment]
    if not rows:
        return []
    original = [r for r in evals if r["method"] == "original"]
    out = []
    for layer in sorted({r["layer"] for r in rows}):
        out += [
            f"\n**{experiment} signal, layer {layer}, p = {rows[0]['p']}** (mean generated tokens / accuracy % / "
            f"reflection share %; original {_mean([r['mean_length'] for r in original]):.1f} / {_ms([r['accuracy'] for r in original])})\n",
            f"| gamma | {main} length | {main} accuracy | {main} reflection | random length | random accuracy |",
            "|---|---|---|---|---|---|",
        ]
        g = _group([r for r in rows if r["layer"] == layer], "method", "gamma")
        for gamma in sorted({r["gamma"] for r in rows}):
            ipg, rnd = g.get((main, gamma), []), g.get(("random", gamma), [])
            out.append(
                f"| {gamma:g} | {_ms([r['mean_length'] for r in ipg], False)} | {_ms([r['accuracy'] for r in ipg])} | "
                f"{_ms([r['reflection_share'] for r in ipg])} | {_ms([r['mean_length'] for r in rnd], False)} | "
                f"{_ms([r['accuracy'] for r in rnd])} |"
            )
    return out


# Steps of a length curve this small are neither rises nor dips: the curve prints to 0.1 token, and a
# 0.03-token dip between two printed 29.9s must not read as "NOT monotone".
FLAT_TOKENS = 0.5


def monotone_lines(evals, experiment: str, main: str = PAPER) -> list[str]:
    """The evidence lines: per layer, whether mean length rises or falls with gamma (see FLAT_TOKENS)."""
    out = []
    rows = [r for r in evals if r["experiment"] == experiment and r["method"] == main]
    for layer in sorted({r["layer"] for r in rows}):
        g = _group([r for r in rows if r["layer"] == layer], "gamma")
        curve = [(gamma, _mean([r["mean_length"] for r in rs])) for (gamma,), rs in sorted(g.items())]
        steps = [b - a for (_, a), (_, b) in zip(curve, curve[1:])]
        up, down = all(d >= -FLAT_TOKENS for d in steps), all(d <= FLAT_TOKENS for d in steps)
        verdict = {
            (True, True): "flat",
            (True, False): "monotone increasing",
            (False, True): "monotone decreasing",
            (False, False): "NOT monotone",
        }[up, down]
        out.append(
            f"- {experiment} steering, layer {layer}: mean length over gamma "
            f"{', '.join(f'{g:g}: {v:.1f}' for g, v in curve)} -> **{verdict}** "
            f"(a step within {FLAT_TOKENS:g} tokens either way counts as flat)"
        )
    return out


def _evidence(findings, evals, main: str = PAPER) -> list[str]:
    out = ["\n## Evidence (claims of the experiment, checked on these numbers)\n"]
    by = {(f["layer"], f["p"], f["method"]): f for f in findings}
    held = []
    for (layer, p, method), f in sorted(by.items()):
        if method != PAPER or not f["suppress"]:
            continue
        rnd, act = by.get((layer, p, "random")), by.get((layer, p, "activation"))
        if not rnd or not act:
            continue
        # seed noise of the IPG - random difference: a 'drop' within it is no evidence either way
        noise = 2 * (_sd(f["suppress"]) ** 2 + _sd(rnd["suppress"]) ** 2) ** 0.5
        ok = f["drop"] >= 2 * max(rnd["drop"], 0) and f["drop"] > act["drop"] and f["drop"] - rnd["drop"] > noise
        held.append(ok)
        out.append(
            f"- layer {layer}, p {p}: suppression drop IPG {100 * f['drop']:.1f} pts vs random {100 * rnd['drop']:.1f} "
            f"and activation {100 * act['drop']:.1f} (2-sd seed noise of IPG - random: {100 * noise:.1f}) -> "
            f"{'**holds**' if ok else 'does not hold'}"
        )
    out.insert(
        1,
        f"- Suppression claim (IPG drop >= 2x random, > activation, and beyond 2 sd of seed noise) holds at "
        f"{sum(held)} of {len(held)} (layer, p) settings.",
    )
    original = _mean([r["accuracy"] for r in evals if r["method"] == "original"])
    for f in findings:
        if f["method"] in (PAPER, f"{PAPER}_sae") and f["enhance_best"]:
            delta = _mean(f["enhance_best"]) - original
            out.append(
                f"- enhancement {f['method']} layer {f['layer']} p {f['p']} at its best gamma {f['best_gamma']:g}: "
                f"{100 * delta:+.1f} pts (seed sd {100 * _sd(f['enhance_best']):.1f}) vs original -> "
                f"{'does not lower accuracy' if delta >= 0 else '**lowers accuracy**'}"
            )
    out += monotone_lines(evals, "length", main)
    return out


def _summary(items: list[dict], records: list[dict], lengths: list[dict], main: str) -> list[str]:
    """The first screen: whether any selection controls accuracy (``records``: the headline's), and reasoning
    strength's verdict and trade-off (``lengths``: ``length_ranges``)."""
    strength = summary_lines(items, main, lengths) if items else []
    if not records and not strength:
        return []
    return ["\n## Summary\n", *([f"**Accuracy**: {' '.join(verdict(records))}", ""] if records else []), *strength]


def write_report(run_dir: str | Path) -> Path:
    """report.md (and report.html beside it, the same sections as one self-contained page) from the run's
    Parquet files; returns report.md's path."""
    run_dir = Path(run_dir)
    evals, scores, setup, optional = _load(run_dir)
    stability, items, selections, massive = (optional[k] for k in ("stability", "eval_items", "selections", "massive"))
    main = setup.get("attribution", {}).get(
        "method", PAPER
    )  # the run's own selection method (before it was recorded: the paper's)
    table1, findings = _table1(evals)
    head, records = headline(items, massive_shares(selections)) if items else ([], [])
    lengths = length_ranges(items) if items else []
    found = panels(optional["completions"], records, main)
    stable = (
        ["| comparison | layer | p | a | b | Dice |", "|---|---|---|---|---|---|"]
        + [
            f"| {r['comparison']} | {r['layer']} | {r['p']} | {r['a']} | {r['b']} | {r['dice']:.2f} |"
            for r in stability
        ]
        if stability
        else ["(not run)"]
    )
    sections = [
        (
            "intro",
            [
                "# IPG experiment report",
                "",
                *_selection(setup),
                f"Run directory `{run_dir}`; rebuilt from its Parquet files by `ipg report`.",
                f"Seeds: {sorted({r['seed'] for r in evals})}; eval prompts per evaluation: {evals[0]['n'] if evals else 0}; "
                "greedy decoding; steering edits the decision positions of the selected components.",
            ],
        ),
        ("summary", _summary(items, records, lengths, main)),
        (
            "headline",
            [
                "\n## Headline: control of accuracy against random\n",
                *(
                    head
                    if items
                    else ["(this run has no per-prompt outcomes, eval_items.parquet: rerun it for intervals)"]
                ),
            ],
        ),
        ("strength", strength_section(lengths)),
        ("massive", _massive(massive, selections)),
        ("completions", markdown_lines(found)),
        ("cards", _cards(optional["cards"], optional["card_terms"])),
        ("setup", _setup(setup)),
        ("table1", ["\n## Table 1: enhance and suppress reasoning (accuracy signal)", *table1, _gamma_note(evals)]),
        (
            "length",
            [
                "\n## Length control",
                *_control_lines(evals, "length", main, setup),
                *(detail_lines(items, "length") if items else []),
            ],
        ),
        (
            "reflection",
            [
                "\n## Reflection control",
                *_control_lines(evals, "reflection", main, setup),
                *(detail_lines(items, "reflection") if items else []),
            ],
        ),
        ("stability", ["\n## Stability (Dice overlap of top-p IPG sets)", *stable]),
        ("evidence", _evidence(findings, evals, main)),
    ]
    made = plots(run_dir, evals, scores, stability, items, main)
    sections.append(("plots", ["\n## Plots", *[f"![{m}](plots/{m})" for m in made]]))
    write_html(
        run_dir,
        [(k, v) for k, v in sections if v],
        made,
        found,
        optional["cards"],
        optional["card_terms"],
        selections,
        {r["method"] for r in evals},
    )
    return atomic_write_text(run_dir / "report.md", "\n".join(line for _, v in sections for line in v) + "\n")
