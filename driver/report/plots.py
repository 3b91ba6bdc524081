"""The report's plots: accuracy against gamma and p, the control range against p, length control, top
components and Dice overlap; one colour per method in every panel, 95% intervals as error bars."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

from ipg.driver.report.headline import METHOD_ORDER, control_gammas, control_range, method_order, outcome_matrices
from ipg.intervals import mean_interval

# one colour per method in every plot (matplotlib's tab10, in the report's method order); named variants
# take tab20's lighter shades in turn
METHOD_COLORS = {m: f"C{i}" for i, m in enumerate(m for m in METHOD_ORDER if m != "original")}


def color_of(method: str, variants: list[str]) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    import matplotlib

    return matplotlib.colormaps["tab20"](2 * (variants.index(method) % 10) + 1)


def sd(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean(values):
    return statistics.mean(values) if values else float("nan")


def group(rows, *keys):
    """Rows by the values of ``keys``."""
    out = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def plots(run_dir: Path, evals, scores, stability, items, main: str = "ipg") -> list[str]:
    """Write the run's plots under run_dir/plots; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    made = []

    def save(fig, name: str, tight: bool = True) -> None:
        if tight:
            fig.tight_layout()
        fig.savefig(plots / name, dpi=110)
        plt.close(fig)
        made.append(name)

    acc = [r for r in evals if r["experiment"] == "accuracy" and r["method"] != "original"]
    originals = [r for r in evals if r["method"] == "original"]
    original = mean([r["accuracy"] for r in originals])

    # error bars: 95% bootstrap intervals over eval prompts and seeds (random: its draws), from the per-prompt
    # outcomes; a run without them (older runs) falls back to one standard deviation over seeds
    correct = outcome_matrices(items, "accuracy", "correct") if items else {}
    lengths = {e: outcome_matrices(items, e, "length") for e in ("accuracy", "length")} if items else {}
    bar = "95% interval" if items else "1 sd"

    def point(rows, y: str, matrix, scale: float) -> tuple[float, float, float]:
        """(mean, lower bar, upper bar) of one plotted point."""
        if matrix is not None:
            iv = mean_interval(matrix)
            return scale * iv.estimate, scale * (iv.estimate - iv.low), scale * (iv.high - iv.estimate)
        m, spread = scale * mean([r[y] for r in rows]), scale * sd([r[y] for r in rows])
        return m, spread, spread

    def dodge(i: int, n: int, log: bool = False):
        """Method i of n drawn slightly to the side, so that equal curves and their bars stay visible."""
        d = (i - (n - 1) / 2) * 0.025
        return (lambda v: v * 2**d) if log else (lambda v: v + d * 3)

    def curve(ax, rows, x: str, y: str, label: str, color, matrices: dict, scale: float = 100.0, shift=None, **style):
        """One method's points along x (gamma or p), one colour per method, with error bars."""
        g = sorted(group(rows, x).items())
        pts = []
        for _, rs in g:
            r0 = rs[0]
            key = (
                ("original", -1, 0, 1.0)
                if r0["method"] == "original"
                else (r0["method"], r0["layer"], r0["p"], r0["gamma"])
            )
            m = matrices.get(key)
            pts.append(point(rs, y, m[:1] if m is not None and r0["method"] == "original" else m, scale))
        ax.errorbar(
            [(shift or (lambda v: v))(k[0]) for k, _ in g],
            [p[0] for p in pts],
            yerr=[[p[1] for p in pts], [p[2] for p in pts]],
            marker="o",
            capsize=3,
            label=label,
            color=color,
            **style,
        )

    variants = sorted({r["method"] for r in evals} - set(METHOD_ORDER))
    layers = sorted({r["layer"] for r in acc})
    if acc:
        p0 = min(r["p"] for r in acc if r["p"] > 0)
        fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
        for ax, layer in zip(axes[0], layers):
            groups = sorted(group([r for r in acc if r["layer"] == layer and r["p"] in (p0, 0)], "method").items())
            for i, ((method,), rows) in enumerate(groups):
                gamma_one = [{**r, "gamma": 1.0} for r in originals] if method != "control_vector" else []
                curve(
                    ax,
                    rows + gamma_one,
                    "gamma",
                    "accuracy",
                    method,
                    color_of(method, variants),
                    correct,
                    shift=dodge(i, len(groups)),
                )
            ax.axhline(100 * original, color="gray", ls="--", label="original")
            ax.set(title=f"layer {layer}, p = {p0}", xlabel="gamma", ylabel=f"greedy accuracy % (mean, {bar})")
            ax.legend(fontsize=7)
        save(fig, "accuracy_vs_gamma.png")
        fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
        for ax, layer in zip(axes[0], layers):
            groups = sorted(group([r for r in acc if r["layer"] == layer and r["gamma"] == 0.0], "method").items())
            for i, ((method,), rs) in enumerate(groups):
                curve(
                    ax,
                    rs,
                    "p",
                    "accuracy",
                    method,
                    color_of(method, variants),
                    correct,
                    shift=dodge(i, len(groups), log=True),
                )
            ax.axhline(100 * original, color="gray", ls="--", label="original")
            ax.set_xscale("log", base=2)
            ps = sorted({r["p"] for r in acc if r["layer"] == layer})
            ax.set_xticks(ps, [str(p) for p in ps])
            ax.set(title=f"suppression (gamma 0), layer {layer}", xlabel="p", ylabel=f"greedy accuracy % (mean, {bar})")
            ax.legend(fontsize=7)
        save(fig, "accuracy_vs_p.png")
        gammas = control_gammas(correct)
        if gammas:  # the headline's measure along p: doubled minus zeroed, with its interval
            hi, lo = gammas
            fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4), squeeze=False)
            for ax, layer in zip(axes[0], layers):
                methods = [
                    m
                    for m in method_order({k[0] for k in correct if k[1] == layer})
                    if m not in ("original", "control_vector")
                ]
                for i, method in enumerate(methods):
                    ps = sorted({k[2] for k in correct if k[0] == method and k[1] == layer})
                    pts = [(p, control_range(correct, method, layer, p, hi, lo)) for p in ps]
                    pts = [(p, mean_interval(d)) for p, d in pts if d is not None]
                    if not pts:
                        continue
                    shift = dodge(i, len(methods), log=True)
                    ax.errorbar(
                        [shift(p) for p, _ in pts],
                        [100 * iv.estimate for _, iv in pts],
                        yerr=[
                            [100 * (iv.estimate - iv.low) for _, iv in pts],
                            [100 * (iv.high - iv.estimate) for _, iv in pts],
                        ],
                        marker="o",
                        capsize=3,
                        label=method,
                        color=color_of(method, variants),
                    )
                ax.axhline(0, color="gray", lw=0.8)
                ax.set_xscale("log", base=2)
                ps = sorted({k[2] for k in correct if k[1] == layer})
                ax.set_xticks(ps, [str(p) for p in ps])
                ax.set(
                    title=f"control range (gamma {hi:g} minus gamma {lo:g}), layer {layer}",
                    xlabel="p",
                    ylabel="accuracy points (95% interval)",
                )
                ax.legend(fontsize=7)
            save(fig, "control_range_vs_p.png")
    length = [r for r in evals if r["experiment"] == "length"]
    if length:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        styles = ["-", "--", ":", "-."]
        for (method, layer), rows in sorted(group(length, "method", "layer").items()):
            gamma_one = [{**r, "gamma": 1.0} for r in originals]  # gamma 1 is the unsteered model
            layer_style = styles[sorted({r["layer"] for r in length}).index(layer) % len(styles)]
            curve(
                ax,
                rows + gamma_one,
                "gamma",
                "mean_length",
                f"{method} layer {layer}",
                color_of(method, variants),
                {
                    **lengths.get("length", {}),
                    **{k: v for k, v in lengths.get("accuracy", {}).items() if k[0] == "original"},
                },
                scale=1.0,
                ls=layer_style,
            )
        ax.set(title="length control", xlabel="gamma", ylabel=f"mean generated tokens (mean, {bar})")
        ax.legend(fontsize=7)
        save(fig, "length_vs_gamma.png")
    ipg = [
        r
        for r in scores
        if r["method"] == main
        and r["kind"] == "residual"
        and r["signal"] == "accuracy"
        and re.search(r"-seed\d+$", r["run_id"])
    ]  # the per-seed runs of the run's method: no halves, no variants
    if ipg:
        slayers = sorted({r["layer"] for r in ipg})
        fig, axes = plt.subplots(len(slayers), 1, figsize=(8, 2.6 * len(slayers)), squeeze=False)
        for ax, layer in zip(axes[:, 0], slayers):
            by_index = {
                i: mean([r["score"] for r in rs])
                for (i,), rs in group([r for r in ipg if r["layer"] == layer], "index").items()
            }
            top = sorted(by_index, key=lambda i: -by_index[i])[:16]
            ax.bar([str(i) for i in top], [by_index[i] for i in top])
            ax.set(title=f"layer {layer}: top {main} components (accuracy, mean over seeds)", ylabel="score")
        save(fig, "top_components.png")
    seeds = [r for r in stability if r["comparison"] == "seeds"]
    if seeds:
        slayers = sorted({r["layer"] for r in seeds})
        fig, axes = plt.subplots(1, len(slayers), figsize=(4 * len(slayers), 3.6), squeeze=False)
        for ax, layer in zip(axes[0], slayers):
            rows = [r for r in seeds if r["layer"] == layer]
            names = sorted({r["a"] for r in rows} | {r["b"] for r in rows})
            m = [
                [
                    1.0 if a == b else next((r["dice"] for r in rows if {r["a"], r["b"]} == {a, b}), float("nan"))
                    for b in names
                ]
                for a in names
            ]
            im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(j, i, f"{m[i][j]:.2f}", ha="center", va="center", color="w", fontsize=8)
            ax.set_title(f"Dice of top-{rows[0]['p']} IPG sets, layer {layer}", fontsize=9)
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
        save(fig, "dice.png", tight=False)  # colorbar spans the axes
    return made
