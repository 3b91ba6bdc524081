"""The reasoning-strength study's results page (study.md), built from its summary (study.json) alone."""

from __future__ import annotations

import dataclasses
import statistics

from ipg.driver.strength_config import StudyConfig


def _iv(d: dict, signed: bool = True) -> str:
    f = "+.1f" if signed else ".1f"
    return f"{d['estimate']:{f}} [{d['low']:{f}}, {d['high']:{f}}]"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _g(x: float) -> str:
    return f"{x:g}"


def _checks(v: dict) -> list[str]:
    """The rule's tests of one setting, each with its number and verdict (``Study.verdict``'s ``checks``)."""
    lo, hi, base, ok = v["lo"], v["hi"], v["unsteered"], v["checks"]
    mark = lambda name: "yes" if ok[name] else "**no**"  # noqa: E731
    rows = [
        f"gamma {_g(lo)} shorter than unsteered: {_iv(v['shorter_vs_unsteered'])} tokens: {mark('shorter_vs_unsteered')}",
        f"gamma {_g(lo)} shorter than random at {_g(lo)}: {_iv(v['shorter_vs_random'])} tokens: {mark('shorter_vs_random')}",
        f"gamma {_g(hi)} longer than unsteered: {_iv(v['longer_vs_unsteered'])} tokens: {mark('longer_vs_unsteered')}",
        f"gamma {_g(hi)} longer than random at {_g(hi)}: {_iv(v['longer_vs_random'])} tokens: {mark('longer_vs_random')}",
    ]
    for end, g in (("lo", lo), ("hi", hi)):
        rows.append(
            f"gamma {_g(g)}: looping {_pct(v['loop_share'][end])} (unsteered {_pct(base['looped'])}): "
            f"{mark(f'loops_{end}')}; stating an answer {_pct(v['answered_share'][end])} "
            f"(unsteered {_pct(base['answered'])}): {mark(f'answers_{end}')}"
        )
    return [f"- {r}" for r in rows]


def _selected(r: dict) -> str:
    """A selection's components by index (by head for whole heads), with their scores where it has them."""
    units = [f"head {h}" for h in r["heads"]] if r.get("heads") else [c.split(":")[1] for c in r["components"]]
    if r["scores"] is None:
        return ", ".join(units)
    return ", ".join(f"{u} ({x:+.2g})" for u, x in zip(units, r["scores"]))


def _curve_table(curves: list[dict]) -> list[str]:
    """Mean tokens, looping and answering share of every setting at every gamma the split evaluated."""
    unsteered = next(c for c in curves if c["selection"] == "unsteered")
    head = ["selection", "intervention"] + [f"gamma {_g(g)}" for g in sorted({c["gamma"] for c in curves})]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cell = lambda c: f"{c['length']['estimate']:.0f} ({_pct(c['looped'])} loop, {_pct(c['answered'])} ans)"  # noqa: E731
    settings = []
    for c in curves:
        key = (c["selection"], c["intervention"])
        if c["selection"] != "unsteered" and key not in settings:
            settings.append(key)
    for sel, i in settings:
        row = {c["gamma"]: c for c in curves if (c["selection"], c["intervention"]) == (sel, i)}
        row[1.0] = unsteered
        lines.append(f"| {sel} | {i} | " + " | ".join(cell(row[g]) for g in sorted(row)) + " |")
    return lines


def command(sc: dict) -> str:
    """The command that ran the study: ``ipg study strength`` with every setting that is not the default."""
    listed = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 (study.json holds lists)
    defaults, parts = dataclasses.asdict(StudyConfig()), ["ipg study strength"]
    for name, value in sc.items():
        if name == "out" or listed(value) != listed(defaults[name]):
            value = listed(value)
            shown = (
                " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
                if isinstance(value, list)
                else value
            )
            parts.append(f"--{name.replace('_', '-')} {shown}")
    return " ".join(parts)


def page(s: dict) -> str:
    sc, chosen, test = s["config"], s["chosen"], s["test"]
    held = test["passes"]
    setting = f"`{chosen['selection']}` with intervention `{chosen['intervention']}`, gammas {_g(chosen['lo'])} and {_g(chosen['hi'])}"
    out = [
        "# Reasoning strength: which components set how long the model reasons",
        "",
        f"Model and task from `{sc['config']}`; seeds {list(sc['seeds'])}, {sc['n_support']} support prompts per seed, "
        f"p = {sc['p']} components, greedy, up to {sc['max_new_tokens']} new tokens. "
        f"{sc['n_dev']} development prompts choose; the next {sc['n_test']} eval prompts report.",
        "",
        "```",
        command(sc),
        "```",
        "",
        "**Answer.** "
        + (
            f"On the test prompts, {setting} shortens and lengthens traces beyond random without breaking them: every check below holds."
            if held
            else f"No candidate passes every check on the test prompts. The rule chose {setting} on the development "
            f"prompts ({chosen['tier']}); on the test prompts it fails the checks marked **no** below."
        ),
        "",
        "## The rule (fixed before the data)",
        "",
        s["rule"],
        "",
        f"A trace loops when one run of {s['loop_rule']['tokens']} generated tokens occurs {s['loop_rule']['repeats']} times or more.",
        "",
        "## Test prompts: the chosen setting",
        "",
        *_checks(test),
        "",
    ]
    shipped = s["shipped"]
    if (shipped["selection"], shipped["intervention"]) != (chosen["selection"], chosen["intervention"]):
        out += [
            f"The shipped default before this study (`{shipped['selection']}`, `{shipped['intervention']}`) "
            "on the same test prompts and gammas:",
            "",
            *_checks(s["shipped_test"]),
            "",
        ]
    out += [
        "Mean tokens per setting and gamma on the test prompts, with the looping share and the share stating an answer:",
        "",
        *_curve_table(s["curves"]["test"]),
        "",
        "## Development prompts: every candidate",
        "",
        "Each candidate's best gamma pair by the rule's margin (tokens beyond random, the weaker direction's "
        "interval bound). `moves`: both directions beyond random and the unsteered model; `keeps text`: looping "
        "and answering within 10 points.",
        "",
        "| selection | intervention | best pair | margin | moves | keeps text | shorter vs random | longer vs random |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best: dict = {}
    for v in s["dev"]:
        key = (v["selection"], v["intervention"])
        if key not in best or v["margin"] > best[key]["margin"]:
            best[key] = v
    for (sel, i), v in best.items():
        out.append(
            f"| {sel} | {i} | {_g(v['lo'])} / {_g(v['hi'])} | {v['margin']:+.1f} | {'yes' if v['moves'] else 'no'} | "
            f"{'yes' if v['keeps_text'] else 'no'} | {_iv(v['shorter_vs_random'])} | {_iv(v['longer_vs_random'])} |"
        )
    out += [
        "",
        "Mean tokens on the development prompts, every setting and gamma:",
        "",
        *_curve_table(s["curves"]["dev"]),
        "",
        "## Are the selected components massive activations?",
        "",
        "Each selected component's mean |activation| over its site's median component (support decision "
        "positions), per seed; a ratio of 10 or more is a massive activation (`ipg.massive`).",
        "",
        "| seed | selection | selected | ratios of the selected | site's largest | massive selected |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["selections"]:
        ratios = r["median_ratio"]
        shown = (
            ", ".join(f"{x:.1f}" for x in ratios)
            if len(ratios) <= 16
            else f"{min(ratios):.1f} to {max(ratios):.1f} (median {statistics.median(ratios):.1f})"  # whole heads
        )
        out.append(
            f"| {r['seed']} | {r['selection']} | {_selected(r)} | {shown} | {r['site_max_ratio']:.0f} | "
            f"{sum(x >= 10 for x in ratios)} of {len(ratios)} |"
        )
    t = s["timings"]
    out += [
        "",
        "## Time",
        "",
        f"Whole study {t['wall'] / 60:.1f} min: attribution {t['attribution'] / 60:.1f} min, development evaluation "
        f"{t['evaluation_dev'] / 60:.1f} min, test evaluation {t['evaluation_test'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(out)
