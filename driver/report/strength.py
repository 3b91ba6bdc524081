"""The report's reasoning-strength section: how far each selection moves trace length, and at what cost.

From the per-prompt outcomes of a control experiment (``length``, ``reflection``), for each layer:

- **Length range** of a selection: mean generated tokens at the largest gamma minus at gamma 0, same
  selection, same prompts; compared with random's range on the same prompts (paired). The verdict says
  whether the run's own selection's range has a 95% interval above random's, and how large it is; if
  not, which selection comes closest.
- **Trade-off** per gamma: tokens and accuracy against the unsteered model on the same prompts (paired),
  the share of traces cut off at the token limit, and the share that still state an answer. A shorter
  trace that no longer answers, or a longer one that only runs into the limit, is not control of
  reasoning; these columns show which it is.

Every figure carries a 95% bootstrap interval over eval prompts and seeds (``ipg.intervals``); gamma 1 is
the unsteered model.
"""

from __future__ import annotations

from ipg.driver.report.headline import control_range, method_order, outcome_matrices
from ipg.intervals import Interval, difference_interval, mean_interval


def _fmt(i: Interval | None, scale: float = 1.0, signed: bool = False) -> str:
    """``Interval.fmt`` in tokens by default; ``signed``: a + before a non-negative estimate; None: '-'."""
    if i is None:
        return "-"
    return ("+" if signed and i.estimate >= 0 else "") + i.fmt(scale)


def _matrices(items: list[dict], experiment: str) -> dict[str, dict]:
    fields = {"length": "length", "correct": "correct", "answered": "answered"}
    out = {name: outcome_matrices(items, experiment, field=f) for name, f in fields.items()}
    if all("finished" in r and r["finished"] is not None for r in items if r["experiment"] == experiment):
        out["cut"] = {k: 1.0 - m for k, m in outcome_matrices(items, experiment, field="finished").items()}
    return out


def length_ranges(items: list[dict], experiment: str = "length") -> list[dict]:
    """One record per (layer, method): its length range (tokens at the largest gamma minus at gamma 0) and
    that range minus random's, paired on prompts."""
    lengths = outcome_matrices(items, experiment, field="length")
    records = []
    for layer, p in sorted({(k[1], k[2]) for k in lengths}):
        gammas = sorted({k[3] for k in lengths if k[1] == layer})
        if len(gammas) < 2:
            continue
        lo, hi = gammas[0], gammas[-1]
        rnd = control_range(lengths, "random", layer, p, hi, lo)
        for method in method_order({k[0] for k in lengths if k[1] == layer}):
            d = control_range(lengths, method, layer, p, hi, lo)
            if d is None:
                continue
            vs = difference_interval(d, rnd) if rnd is not None and method != "random" else None
            records.append(
                {
                    "layer": layer,
                    "p": p,
                    "method": method,
                    "lo": lo,
                    "hi": hi,
                    "range": mean_interval(d),
                    "vs_random": vs,
                }
            )
    return records


def verdict(records: list[dict], main: str) -> list[str]:
    """Whether the run's own selection's length range beats random's, plainly; if not, the closest."""
    mine = [r for r in records if r["method"] == main and r["vs_random"] is not None]
    if not mine:
        return [f"No length range of {main} against random was evaluated."]
    out = []
    for r in mine:
        vs, rng = r["vs_random"], r["range"]
        where = (
            f"layer {r['layer']}, p {r['p']}: {main}'s length range (gamma {r['hi']:g} minus gamma {r['lo']:g}) "
            f"is {_fmt(rng, signed=True)} tokens, {_fmt(vs, signed=True)} beyond random's"
        )
        if vs.low > 0:
            out.append(f"- **{where}: its 95% paired interval lies above random's.**")
            continue
        others = [o for o in records if o["layer"] == r["layer"] and o["vs_random"] is not None and o["method"] != main]
        closest = max(others, key=lambda o: o["vs_random"].low, default=None)
        tail = (
            (
                f" Closest: {closest['method']}, {_fmt(closest['vs_random'], signed=True)} beyond random"
                + (" (above random)" if closest["vs_random"].low > 0 else "")
                + "."
            )
            if closest
            else ""
        )
        out.append(f"- **{where}: not above random's** (the interval reaches {vs.low:.1f}).{tail}")
    return out


def tradeoff_lines(items: list[dict], experiment: str, main: str, layers: set | None = None) -> list[str]:
    """The first-screen table: per gamma, the ``main`` selection against the unsteered model and random
    (at ``layers``, default all)."""
    m = _matrices(items, experiment)
    lengths = m["length"]
    out = []
    for layer, p in sorted({(k[1], k[2]) for k in lengths if layers is None or k[1] in layers}):
        gammas = sorted({k[3] for k in lengths if k[1] == layer and k[0] == main})
        base = {name: m[name].get((main, layer, p, 1.0)) for name in m}
        if not gammas or base["length"] is None:
            continue
        unsteered = mean_interval(base["length"])
        out += [
            f"\n**{experiment.capitalize()} steering of {main}'s top {p} at layer {layer}** (unsteered: "
            f"{_fmt(unsteered)} tokens, accuracy {_fmt(mean_interval(base['correct']), 100)}%"
            + (f", {_fmt(mean_interval(base['cut']), 100)}% cut off" if "cut" in m else "")
            + ")\n",
            "| gamma | tokens | vs unsteered | vs random (paired) | accuracy vs unsteered (pts) | cut off | states an answer |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in gammas:
            key = (main, layer, p, g)
            tok = lengths[key]
            rnd = lengths.get(("random", layer, p, g))
            d_base = difference_interval(tok, base["length"]) if g != 1.0 else None
            d_rnd = difference_interval(tok, rnd) if rnd is not None and g != 1.0 else None
            d_acc = difference_interval(m["correct"][key], base["correct"]) if g != 1.0 else None
            cut = _fmt(mean_interval(m["cut"][key]), 100) + "%" if "cut" in m else "-"
            out.append(
                f"| {g:g} | {_fmt(mean_interval(tok))} | {_fmt(d_base, signed=True)} | {_fmt(d_rnd, signed=True)} | "
                f"{_fmt(d_acc, 100, signed=True)} | {cut} | {_fmt(mean_interval(m['answered'][key]), 100)}% |"
            )
    return out


def detail_lines(items: list[dict], experiment: str) -> list[str]:
    """Every selection at every gamma: tokens, tokens against random (paired), cut-off share, accuracy,
    answered share."""
    m = _matrices(items, experiment)
    lengths = m["length"]
    out = []
    for layer, p in sorted({(k[1], k[2]) for k in lengths}):
        keys = sorted(k for k in lengths if k[1] == layer)
        methods = method_order({k[0] for k in keys})
        out += [
            f"\n**{experiment} signal, layer {layer}, p = {p}**: every selection (95% intervals over prompts and "
            "seeds; random: its draws)\n",
            "| selection | gamma | tokens | vs random (paired) | cut off | accuracy | states an answer |",
            "|---|---|---|---|---|---|---|",
        ]
        for method in methods:
            for g in sorted(k[3] for k in keys if k[0] == method):
                key = (method, layer, p, g)
                rnd = lengths.get(("random", layer, p, g))
                vs = (
                    difference_interval(lengths[key], rnd)
                    if rnd is not None and method != "random" and g != 1.0
                    else None
                )
                cut = _fmt(mean_interval(m["cut"][key]), 100) + "%" if "cut" in m else "-"
                out.append(
                    f"| {method} | {g:g} | {_fmt(mean_interval(lengths[key]))} | {_fmt(vs, signed=True)} | {cut} | "
                    f"{_fmt(mean_interval(m['correct'][key]), 100)}% | {_fmt(mean_interval(m['answered'][key]), 100)}% |"
                )
    return out


def range_table(records: list[dict]) -> list[str]:
    if not records:
        return []
    out = ["| layer | selection | length range (tokens) | vs random (paired) |", "|---|---|---|---|"]
    for r in records:
        vs = r["vs_random"]
        cell = "-" if vs is None else (f"**{_fmt(vs, signed=True)}**" if vs.low > 0 else _fmt(vs, signed=True))
        out.append(f"| {r['layer']} | {r['method']} | {_fmt(r['range'], signed=True)} | {cell} |")
    return out


def summary_lines(items: list[dict], main: str, records: list[dict] | None = None) -> list[str]:
    """For the report's first screen: the length verdict and the run's selection's trade-off per gamma.
    ``records``: ``length_ranges(items)`` when the caller has them already."""
    if not any(r["experiment"] == "length" for r in items):
        return []
    records = length_ranges(items) if records is None else records
    lines = [
        "**Reasoning strength** (trace length; length range = mean tokens at the largest gamma minus at gamma 0, "
        "same prompts):",
        *verdict(records, main),
        *tradeoff_lines(items, "length", main),
    ]
    for r in records:  # where the run's selection is not above random, the strongest one that is, beside it
        if r["method"] != main or r["vs_random"] is None or r["vs_random"].low > 0:
            continue
        better = [
            o for o in records if o["layer"] == r["layer"] and o["vs_random"] is not None and o["vs_random"].low > 0
        ]
        if better:
            best = max(better, key=lambda o: o["vs_random"].estimate)["method"]
            lines += tradeoff_lines(items, "length", best, {r["layer"]})
    return lines


def strength_section(records: list[dict]) -> list[str]:
    """Every selection's length range against random's (``length_ranges``)."""
    if not records:
        return []
    return [
        "\n## Headline: reasoning strength (trace length) against random\n",
        "Length range = mean generated tokens at the largest gamma minus at gamma 0, same selection, same prompts; "
        "'vs random' is the paired difference of ranges (bold: 95% interval above 0). Every selection at every "
        "gamma is in the length-control section.\n",
        *range_table(records),
    ]
