"""The report's headline: how far each selection controls accuracy, with intervals, against random.

The measure is the **control range**: accuracy with the selection enhanced (the largest enhancing gamma of
the run) minus accuracy with it suppressed (the smallest suppressing gamma, 0 by default), per eval prompt
and seed. A selection that carries the behaviour moves accuracy both ways and has a wide range. A
selection that only breaks the model (zeroing or doubling it hurts alike, as with massive-activation
coordinates) has a range near zero or below, though its suppression alone looks strong. Both gammas are
fixed by the config before any result is seen, so nothing here is chosen on the eval split.

Every number carries a 95% bootstrap interval over eval prompts and seeds (``ipg.intervals``). Each
method's range is compared with random's on the same prompts (paired). Random's spread over its draws is
shown beside it.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ipg.intervals import difference_interval, mean_interval

Key = tuple  # (method, layer, p, gamma)
FLOOR = 0.3  # below this original accuracy the report says that suppression can only show a floor


def method_order(names) -> list[str]:
    """The built-in methods in the report's order, then a run's named variants alphabetically."""
    names = set(names)
    return [m for m in METHOD_ORDER if m in names] + sorted(names - set(METHOD_ORDER))


METHOD_ORDER = [
    "original",
    "component",
    "component_sae",
    "ipg",
    "ipg_sae",
    "pg",
    "pg_sae",
    "random",
    "activation",
    "concept_tokens",
    "reason_score",
    "control_vector",
]


def outcome_matrices(items: list[dict], experiment: str = "accuracy", field: str = "correct") -> dict[Key, np.ndarray]:
    """(method, layer, p, gamma) -> matrix (replicates, prompts): a replicate is a seed, or a seed's random
    draw; prompts in one order for every key, so two matrices can be paired."""
    prompts = sorted({r["example_id"] for r in items if r["experiment"] == experiment})
    column = {e: i for i, e in enumerate(prompts)}
    cells: dict[Key, dict[tuple, np.ndarray]] = defaultdict(dict)
    for r in items:
        if r["experiment"] != experiment:
            continue
        key = (r["method"], r["layer"], r["p"], r["gamma"])
        rep = (r["seed"], r.get("draw", 0) or 0)
        row = cells[key].setdefault(rep, np.full(len(prompts), np.nan))
        row[column[r["example_id"]]] = float(r[field])
    out = {}
    for key, reps in cells.items():
        m = np.stack([reps[k] for k in sorted(reps)])
        if np.isnan(m).any():  # an evaluation that skipped prompts cannot be paired; leave it out
            continue
        out[key] = m
    return out


def control_gammas(keys) -> tuple[float, float] | None:
    """The largest enhancing and the smallest suppressing gamma the run evaluated."""
    gammas = {k[3] for k in keys if k[0] not in ("original", "control_vector")}
    up, down = [g for g in gammas if g > 1], [g for g in gammas if g < 1]
    return (max(up), min(down)) if up and down else None


def control_range(matrices, method, layer, p, hi, lo) -> np.ndarray | None:
    """Per replicate and prompt: the outcome at gamma ``hi`` minus at ``lo`` of one selection."""
    a, b = matrices.get((method, layer, p, hi)), matrices.get((method, layer, p, lo))
    if a is None or b is None or a.shape != b.shape:
        return None
    return a - b  # the same selection (seed, draw) both ways: paired per prompt and replicate


def headline(items: list[dict], flags: dict | None = None) -> tuple[list[str], list[dict]]:
    """Markdown lines and one record per (layer, p, method). ``flags``: (method, layer, p) -> share of the
    method's selections holding a massive-activation coordinate."""
    matrices = outcome_matrices(items)
    answered = outcome_matrices(items, field="answered")
    gammas = control_gammas(matrices)
    if gammas is None:
        return ["(the run has no enhancing and suppressing gamma pair: no control range)"], []
    hi, lo = gammas
    original = next((m for k, m in matrices.items() if k[0] == "original"), None)
    n_prompts = next(iter(matrices.values())).shape[1]
    lines = [
        f"Control range = accuracy at gamma {hi:g} minus accuracy at gamma {lo:g}, same selection, same prompts "
        f"(percentage points). 95% bootstrap intervals over {n_prompts} eval prompts and the seeds (random: its "
        "draws). 'vs random' is the paired difference of ranges."
    ]
    if original is not None:
        base = mean_interval(original[:1])
        lines.append(f"Original accuracy {base.fmt()}%.")
        if base.estimate < FLOOR:
            lines.append(
                f"The original accuracy is low: suppression can lower it by at most {100 * base.estimate:.0f} points, "
                "so a floor says little. Read the enhanced column, and the answered share at the suppressing "
                "gamma (outputs that still state an answer: damage that does not depend on accuracy)."
            )
    records = []
    settings = sorted({(k[1], k[2]) for k in matrices if k[0] not in ("original", "control_vector")})
    for layer, p in settings:
        rnd = control_range(matrices, "random", layer, p, hi, lo)
        lines += [
            f"\n**Layer {layer}, p = {p}**\n",
            f"| method | control range | vs random | accuracy at gamma {lo:g} | accuracy at gamma {hi:g} | "
            f"answered at gamma {lo:g} | with a massive coordinate |",
            "|---|---|---|---|---|---|---|",
        ]
        for method in [m for m in method_order(k[0] for k in matrices) if m not in ("original", "control_vector")]:
            d = control_range(matrices, method, layer, p, hi, lo)
            if d is None:
                continue
            rng = mean_interval(d)
            vs = difference_interval(d, rnd) if rnd is not None and method != "random" else None
            low, high = mean_interval(matrices[(method, layer, p, lo)]), mean_interval(matrices[(method, layer, p, hi)])
            ans = answered.get((method, layer, p, lo))
            share = (flags or {}).get((method, layer, p))
            spread = ""
            if method == "random" and d.shape[0] > 1:
                per_draw = 100 * d.mean(axis=1)
                spread = f" (draws {per_draw.min():+.1f} to {per_draw.max():+.1f})"
            lines.append(
                f"| {method} | {rng.fmt()}{spread} | {vs.fmt() if vs else '-'} | {low.fmt()} | {high.fmt()} | "
                f"{mean_interval(ans).fmt() if ans is not None else '-'} | "
                f"{f'{100 * share:.0f}%' if share is not None else '-'} |"
            )
            records.append(
                {
                    "layer": layer,
                    "p": p,
                    "method": method,
                    "range": rng,
                    "vs_random": vs,
                    "suppressed": low,
                    "enhanced": high,
                }
            )
    lines += ["", *glance(records), "", *verdict(records)]
    return lines, records


def glance(records: list[dict]) -> list[str]:
    """One row per method, one column per (layer, p): its control range minus random's (paired), with the
    interval; an interval above 0 in bold."""
    settings = sorted({(r["layer"], r["p"]) for r in records})
    methods = method_order({r["method"] for r in records} - {"random"})
    by = {(r["method"], r["layer"], r["p"]): r for r in records}
    lines = [
        "**At a glance**: control range minus random's, percentage points (95% interval; bold: above 0).\n",
        "| method | " + " | ".join(f"layer {layer}, p {p}" for layer, p in settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for m in methods:
        cells = []
        for layer, p in settings:
            vs = by.get((m, layer, p), {}).get("vs_random")
            cells.append("-" if vs is None else f"**{vs.fmt()}**" if vs.low > 0 else vs.fmt())
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def verdict(records: list[dict]) -> list[str]:
    """Which selections control accuracy beyond random, plainly; if none, which comes closest."""
    scored = [r for r in records if r["vs_random"] is not None]
    if not scored:
        return ["No random baseline was evaluated, so no selection can be compared with chance."]
    beat = [r for r in scored if r["vs_random"].low > 0]
    if not beat:
        best = max(scored, key=lambda r: r["vs_random"].estimate)
        return [
            f"**No selection controls accuracy beyond random** (no paired interval lies above 0). Closest: "
            f"{best['method']} at layer {best['layer']}, p {best['p']}: {best['vs_random'].fmt()} pts over random."
        ]
    parts = []
    for m in method_order({r["method"] for r in beat}):
        mine = [r for r in beat if r["method"] == m]
        top = max(mine, key=lambda r: r["vs_random"].estimate)
        evaluated = sum(r["method"] == m for r in scored)
        parts.append(
            f"{m} at {len(mine)} of {evaluated} settings (largest: layer {top['layer']}, p {top['p']}, "
            f"{top['vs_random'].fmt()} pts)"
        )
    best = max(beat, key=lambda r: r["vs_random"].estimate)
    return [
        "Control range beyond random's (paired interval above 0): " + "; ".join(parts) + ".",
        f"Strongest: {best['method']} at layer {best['layer']}, p {best['p']}.",
    ]
