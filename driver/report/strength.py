"""The report's reasoning-strength section: how far each selection moves trace length, and at what cost.

From the per-prompt outcomes of a control experiment (``length``, ``reflection``), for each layer:

- **Length range** of a selection: mean generated tokens at the largest gamma minus at gamma 0, same
  selection, same prompts; compared with random's range on the same prompts (paired). The verdict says
  whether the run's own selection's range has a 95% interval above random's, and how large it is; if
  not, which selection comes closest.
- **Trade-off** per gamma: tokens and accuracy against the unsteered model on the same prompts (paired),
  the share of traces cut off at the token limit, the share that loop (``ipg.evaluation.loops``: a run of
  8 tokens repeated 3 times or more), and the share that still state an answer. A shorter trace that no
  longer answers, or a longer one that only loops or runs into the limit, is not control of reasoning.
- **Breakage**: a selection whose looping share moves more than ``BREAKAGE`` (10 points) from the
  unsteered model's at either end of its range, or whose share stating an answer falls by more than that,
  is reported as breaking the model, not as controlling how long it reasons, whatever its range.

Every figure carries a 95% bootstrap interval over eval prompts and seeds (``ipg.intervals``); gamma 1 is
the unsteered model.
"""

from __future__ import annotations

from ipg.driver.report.headline import control_range, method_order, outcome_matrices
from ipg.evaluation import LOOP_REPEATS, LOOP_TOKENS
from ipg.intervals import Interval, difference_interval, mean_interval

BREAKAGE = 0.10  # a move of the looping or answering share beyond this (either end of the range) is breakage


def _fmt(i: Interval | None, scale: float = 1.0, signed: bool = False) -> str:
    """``Interval.fmt`` in tokens by default; ``signed``: a + before a non-negative estimate; None: '-'."""
    if i is None:
        return "-"
    return ("+" if signed and i.estimate >= 0 else "") + i.fmt(scale)


def _matrices(items: list[dict], experiment: str) -> dict[str, dict]:
    fields = {"length": "length", "correct": "correct", "answered": "answered"}
    out = {name: outcome_matrices(items, experiment, field=f) for name, f in fields.items()}
    mine = [r for r in items if r["experiment"] == experiment]
    if all(r.get("finished") is not None for r in mine):
        out["cut"] = {k: 1.0 - m for k, m in outcome_matrices(items, experiment, field="finished").items()}
    if all(r.get("looped") is not None for r in mine):  # runs before the loop measure have no such column
        out["loop"] = outcome_matrices(items, experiment, field="looped")
    return out


def _share(m: dict, name: str, key) -> str:
    """A share's mean with its interval, in percent; '-' where the run did not measure it."""
    return _fmt(mean_interval(m[name][key]), 100) + "%" if name in m and key in m[name] else "-"


def breakage(m: dict, method: str, layer: int, p: int, ends: tuple[float, ...]) -> str | None:
    """Why ``method``'s steering at ``ends`` (gammas) breaks the model rather than controlling it, or None:
    its looping share moves, or its share stating an answer falls, by more than ``BREAKAGE`` from the
    unsteered model's (gamma 1, same selection, same prompts)."""
    base = (method, layer, p, 1.0)
    found = []
    for g in ends:
        key = (method, layer, p, g)
        if "loop" in m and key in m["loop"] and base in m["loop"]:
            before, after = float(m["loop"][base].mean()), float(m["loop"][key].mean())
            if abs(after - before) > BREAKAGE:
                found.append(f"at gamma {g:g} {100 * after:.0f}% of traces loop (unsteered {100 * before:.0f}%)")
        if key in m["answered"] and base in m["answered"]:
            before, after = float(m["answered"][base].mean()), float(m["answered"][key].mean())
            if before - after > BREAKAGE:
                found.append(f"at gamma {g:g} {100 * after:.0f}% state an answer (unsteered {100 * before:.0f}%)")
    return "; ".join(found) or None


def length_ranges(items: list[dict], experiment: str = "length") -> list[dict]:
    """One record per (layer, method): its length range (tokens at the largest gamma minus at gamma 0) and
    that range minus random's, paired on prompts."""
    m = _matrices(items, experiment)
    lengths = m["length"]
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
                    "breakage": breakage(m, method, layer, p, (lo, hi)),
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
        if r.get("breakage"):
            out.append(f"- **{where}, but that is breakage, not control**: {r['breakage']}.")
            continue
        if vs.low > 0:
            out.append(f"- **{where}: its 95% paired interval lies above random's.**")
            continue
        others = [o for o in records if o["layer"] == r["layer"] and o["vs_random"] is not None and o["method"] != main]
        closest = max(others, key=lambda o: (not o.get("breakage"), o["vs_random"].low), default=None)
        tail = (
            (
                f" Closest: {closest['method']}, {_fmt(closest['vs_random'], signed=True)} beyond random"
                + (" (above random)" if closest["vs_random"].low > 0 else "")
                + (" (breakage)" if closest.get("breakage") else "")
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
            + (f", {_fmt(mean_interval(base['loop']), 100)}% loop" if base.get("loop") is not None else "")
            + ")\n",
            "| gamma | tokens | vs unsteered | vs random (paired) | accuracy vs unsteered (pts) | cut off | loop | "
            "states an answer |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for g in gammas:
            key = (main, layer, p, g)
            tok = lengths[key]
            rnd = lengths.get(("random", layer, p, g))
            d_base = difference_interval(tok, base["length"]) if g != 1.0 else None
            d_rnd = difference_interval(tok, rnd) if rnd is not None and g != 1.0 else None
            d_acc = difference_interval(m["correct"][key], base["correct"]) if g != 1.0 else None
            out.append(
                f"| {g:g} | {_fmt(mean_interval(tok))} | {_fmt(d_base, signed=True)} | {_fmt(d_rnd, signed=True)} | "
                f"{_fmt(d_acc, 100, signed=True)} | {_share(m, 'cut', key)} | {_share(m, 'loop', key)} | "
                f"{_share(m, 'answered', key)} |"
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
            "| selection | gamma | tokens | vs random (paired) | cut off | loop | accuracy | states an answer |",
            "|---|---|---|---|---|---|---|---|",
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
                out.append(
                    f"| {method} | {g:g} | {_fmt(mean_interval(lengths[key]))} | {_fmt(vs, signed=True)} | "
                    f"{_share(m, 'cut', key)} | {_share(m, 'loop', key)} | {_share(m, 'correct', key)} | "
                    f"{_share(m, 'answered', key)} |"
                )
    return out


def range_table(records: list[dict]) -> list[str]:
    if not records:
        return []
    out = [
        "| layer | selection | length range (tokens) | vs random (paired) | breakage |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        vs = r["vs_random"]
        cell = "-" if vs is None else (f"**{_fmt(vs, signed=True)}**" if vs.low > 0 else _fmt(vs, signed=True))
        out.append(
            f"| {r['layer']} | {r['method']} | {_fmt(r['range'], signed=True)} | {cell} | {r.get('breakage') or '-'} |"
        )
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
        "'vs random' is the paired difference of ranges (bold: 95% interval above 0). Breakage: where the share of "
        f"traces that loop (a run of {LOOP_TOKENS} tokens repeated {LOOP_REPEATS} times or more) moves, or the share "
        f"stating an answer falls, by more than {100 * BREAKAGE:.0f} points from the unsteered model's; such a range "
        "is not control. Every selection at every gamma is in the length-control section.\n",
        *range_table(records),
    ]
