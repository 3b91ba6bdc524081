"""Steered completions side by side: what steering does to the text, for the report.

The run keeps the completions of the first few eval prompts of every evaluation of its first seed
(completions.parquet, ``evaluation.completions``). The report shows, for each experiment, one setting
chosen by a fixed rule, never by what the texts say:

- accuracy: the (layer, p) at which the run's own method has the largest control range over random's
  (the headline's estimate), at the headline's two gammas (the smallest suppressing one, the largest
  enhancing one);
- a control experiment (length, reflection): its first layer, at its smallest and largest gamma.

Of the kept prompts, ``SHOWN`` are shown: first those where the run's own method changes the stated answer
either way, then the rest, each group in eval order. Every method evaluated at the setting is shown,
suppressed beside enhanced, under the unsteered completion, each with the answer it states, its verdict,
its length and whether it ran into the token limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipg.driver.report.headline import control_gammas, method_order

SHOWN = 3  # prompts per panel


@dataclass(frozen=True)
class Panel:
    """One experiment's side-by-side texts: ``rows`` maps (method, gamma) -> position -> completion row."""

    experiment: str
    layer: int
    p: int
    low: float
    high: float
    methods: list[str]
    original: dict  # position -> completion row
    rows: dict
    positions: list[int]  # the prompts shown, in order

    @property
    def title(self) -> str:
        return (
            f"{self.experiment} signal: layer {self.layer}, p = {self.p}, gamma {self.low:g} (suppressed) "
            f"and {self.high:g} (enhanced)"
        )


def panels(completions: list[dict], records: list[dict], main: str) -> list[Panel]:
    """The side-by-side panels of a run (see the module docstring); ``records``: the headline's."""
    original = {r["position"]: r for r in completions if r["method"] == "original" and r["experiment"] == "accuracy"}
    if not original:
        return []
    out = []
    for experiment in sorted(
        {r["experiment"] for r in completions} - {"validation"}, key=lambda e: (e != "accuracy", e)
    ):
        rows = [
            r
            for r in completions
            if r["experiment"] == experiment and r["method"] not in ("original", "control_vector")
        ]
        if not rows:
            continue
        if experiment == "accuracy":
            mine = [r for r in records if r["method"] == main and r["vs_random"] is not None]
            best = max(mine, key=lambda r: r["vs_random"].estimate) if mine else None
            layer, p = (best["layer"], best["p"]) if best else min((r["layer"], r["p"]) for r in rows)
        else:
            layer, p = min((r["layer"], r["p"]) for r in rows)
        here = [r for r in rows if (r["layer"], r["p"]) == (layer, p)]
        if experiment == "accuracy":  # the headline's pair
            pair = control_gammas([(r["method"], r["layer"], r["p"], r["gamma"]) for r in here])
            if pair is None:
                continue
            high, low = pair
        else:
            low, high = min(r["gamma"] for r in here), max(r["gamma"] for r in here)
        table: dict = {}
        for r in here:
            if r["gamma"] in (low, high):
                table.setdefault((r["method"], r["gamma"]), {})[r["position"]] = r
        methods = [m for m in method_order({m for m, _ in table}) if (m, low) in table or (m, high) in table]
        judge = main if main in methods else methods[0]

        changed = {k: _changed(original[k], [table.get((judge, g), {}).get(k) for g in (low, high)]) for k in original}
        shown = sorted(original, key=lambda k: (not changed[k], k))[:SHOWN]
        out.append(Panel(experiment, layer, p, low, high, methods, original, table, shown))
    return out


def _changed(original: dict, steered: list[dict | None]) -> bool:
    """Whether a steered completion states another answer, or the same one with another verdict."""
    said = (original["answer"], original["correct"])
    return any((r["answer"], r["correct"]) != said for r in steered if r is not None)


def verdict(row: dict) -> str:
    """The stated answer and what it is worth, as the report prints it."""
    said = (
        "no answer"
        if row["answer"] is None
        else f"answer {row['answer']!r}, {'correct' if row['correct'] else 'wrong'}"
    )
    return f"{said}; {row['length']} tokens" + ("" if row["finished"] else ", cut off at the token limit")


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ⏎ ").replace("`", "'")


def markdown_lines(found: list[Panel]) -> list[str]:
    """The side-by-side section of report.md."""
    if not found:
        return []
    lines = [
        "\n## Steered completions\n",
        f"Eval prompts of the first seed (random: its first draw), unsteered and under each method's selection at "
        "one setting per experiment, chosen by rule: for accuracy, where the run's method has its largest control "
        "range over random's, at the headline's gammas; for a control experiment, its first layer at its smallest "
        f"and largest gamma. Of the first `evaluation.completions` eval prompts, {SHOWN} are shown: first those where "
        "the run's method changes the stated answer, then the rest, in eval order. ⏎ marks a line break.",
    ]
    for panel in found:
        lines.append(f"\n### {panel.title}\n")
        for position in panel.positions:
            o = panel.original[position]
            lines += [
                f"**Prompt {position + 1}** (`{o['example_id']}`): {_cell(o['prompt'])}\n",
                "| steering | completion | stated answer and length |",
                "|---|---|---|",
                f"| original | {_cell(o['completion'])} | {verdict(o)} |",
            ]
            for method in panel.methods:
                for gamma in (panel.low, panel.high):
                    r = panel.rows.get((method, gamma), {}).get(position)
                    if r is not None:
                        lines.append(f"| {method}, gamma {gamma:g} | {_cell(r['completion'])} | {verdict(r)} |")
            lines.append("")
    return lines
