"""report.html: the run's report as one self-contained page, beside report.md.

The page is built from the same sections as report.md (so it holds the same numbers), rendered with
markdown-it, with what a page can show that Markdown cannot:

- every table sortable by a click on its header (numbers sort by their leading value, intervals by their
  estimate);
- the plots inline as PNG data URIs;
- the steered completions side by side (``driver.report.steered_texts``);
- component cards with each token shaded: top contexts by the component's activation at that position,
  support traces by the per-position term of its score (``ipg.cards``).

Nothing is fetched: no script, style, font or image comes from anywhere but the file itself.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections import defaultdict
from pathlib import Path

from markdown_it import MarkdownIt

from ipg.driver.report.headline import METHOD_ORDER
from ipg.driver.report.plots import color_of
from ipg.driver.report.steered_texts import Panel, verdict
from ipg.files import atomic_write_text

# shading: a positive value is orange, a negative one blue, with opacity |value| / the largest |value| of its
# group (one context set or one trace), so the strongest token of a group is fully coloured
POSITIVE, NEGATIVE = (230, 97, 0), (33, 102, 172)
TRACES_PER_CARD = 2


def shade(value: float, vmax: float) -> str:
    """The background colour of a token of ``value`` in a group whose largest |value| is ``vmax``."""
    alpha = min(1.0, abs(value) / vmax) if vmax > 0 else 0.0
    r, g, b = POSITIVE if value >= 0 else NEGATIVE
    return f"rgba({r}, {g}, {b}, {alpha:.3f})"


def _tokens(pairs: list[tuple[str, float]], focus: int | None = None) -> str:
    vmax = max((abs(v) for _, v in pairs), default=0.0)
    spans = []
    for i, (text, v) in enumerate(pairs):
        shown = html.escape(text).replace("\n", "⏎<br>") or "&#8203;"
        cls = "tok focus" if i == focus else "tok"
        spans.append(
            f'<span class="{cls}" data-v="{v:.6g}" data-vmax="{vmax:.6g}" style="background: {shade(v, vmax)}" '
            f'title="{v:+.4g}">{shown}</span>'
        )
    return "".join(spans)


def _md(lines: list[str], renderer: MarkdownIt, colours: dict[str, str]) -> str:
    """A Markdown section as HTML; a table cell that names a method gets the method's plot colour as a swatch."""
    out = renderer.render("\n".join(lines)).replace("<table>", '<table class="sortable">')
    return re.sub(
        r"<td>([\w.-]+)</td>",
        lambda m: (
            (f'<td><span class="swatch" style="background: {colours[m.group(1)]}"></span>{m.group(1)}</td>')
            if m.group(1) in colours
            else m.group(0)
        ),
        out,
    )


def method_colours(methods) -> dict[str, str]:
    """Each method's colour in the plots, as CSS."""
    from matplotlib.colors import to_hex

    variants = sorted(set(methods) - set(METHOD_ORDER))
    return {m: to_hex(color_of(m, variants)) for m in methods if m != "original"}


def _plots(run_dir: Path, made: list[str]) -> str:
    out = ["<h2>Plots</h2>"]
    for name in made:
        data = base64.b64encode((run_dir / "plots" / name).read_bytes()).decode()
        out.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    return "\n".join(out)


def _completions(found: list[Panel], colours: dict[str, str]) -> str:
    if not found:
        return ""
    out = [
        "<h2>Steered completions</h2>",
        "<p>Eval prompts of the first seed, unsteered and under each method's selection, suppressed beside "
        "enhanced, at one setting per experiment chosen by rule (report.md states it); a text equal to the "
        "original's is grey.</p>",
    ]

    def text(row: dict | None, original: dict | None = None) -> str:
        if row is None:
            return '<div class="completion missing">not evaluated</div>'
        mark = "ok" if row["correct"] else "bad"
        same = original is not None and row["completion"] == original["completion"]
        return (
            f'<div class="completion{" same" if same else ""}"><pre>{html.escape(row["completion"])}</pre>'
            f'<div class="verdict {mark}">{html.escape(verdict(row))}{" (the same text as the original)" if same else ""}'
            "</div></div>"
        )

    for panel in found:
        out.append(f'<section class="panel"><h3>{html.escape(panel.title)}</h3>')
        for position in panel.positions:
            o = panel.original[position]
            out += [
                f'<div class="prompt"><b>Prompt {position + 1}</b> <code>{html.escape(o["example_id"])}</code>'
                f"<pre>{html.escape(o['prompt'])}</pre></div>",
                f'<table class="sidebyside"><tr><th>original</th><td colspan="2">{text(o)}</td></tr>',
                f"<tr><th>method</th><th>gamma {panel.low:g}</th><th>gamma {panel.high:g}</th></tr>",
            ]
            for method in panel.methods:
                low, high = (panel.rows.get((method, g), {}).get(position) for g in (panel.low, panel.high))
                swatch = (
                    f'<span class="swatch" style="background: {colours[method]}"></span>' if method in colours else ""
                )
                out.append(
                    f"<tr><th>{swatch}{html.escape(method)}</th><td>{text(low, o)}</td><td>{text(high, o)}</td></tr>"
                )
            out.append("</table>")
        out.append("</section>")
    return "\n".join(out)


def signal_of(row: dict) -> str:
    """A card's (or card term's) signal; runs from before cards had a signal hold the accuracy signal's."""
    return row.get("signal") or "accuracy"


def _cards(cards: list[dict], terms: list[dict], selections: list[dict]) -> str:
    if not cards:
        return ""
    chose = defaultdict(set)
    for s in selections:
        chose[(s["experiment"], s["layer"], s["kind"], s["index"])].add(s["method"])
    by_component = defaultdict(list)
    for t in terms:
        by_component[(signal_of(t), t["layer"], t["kind"], t["component"])].append(t)
    out = [
        "<h2>Component cards</h2>",
        "<p>Contexts: the support positions where the component is most active, each token shaded by the "
        "component's activation there. Traces: support completions, each generated token shaded by the term of "
        "the component's score at the position that produced it (where in the reasoning it acts). Orange: "
        "positive, blue: negative; the strongest token of each line is fully coloured.</p>",
    ]
    for c in sorted(cards, key=lambda c: (signal_of(c) != "accuracy", signal_of(c), c["layer"], c["rank"])):
        signal = signal_of(c)
        methods = sorted(chose.get((signal, c["layer"], c["kind"], c["index"]), set()))
        ratio = c.get("median_ratio")
        head = f"{signal} signal · layer {c['layer']} {c['kind']} {c['index']} (rank {c['rank'] + 1} of {c['method']})"
        facts = [
            f"mean |activation| {ratio:.1f}x the layer's median" if ratio is not None else "no activation ratio",
            "selected by " + (", ".join(methods) if methods else "no evaluated selection"),
        ]
        out.append(
            f'<section class="card" data-component="{c["layer"]}/{c["kind"]}/{c["index"]}/{html.escape(signal)}">'
            f"<h3>{html.escape(head)}</h3><p>{html.escape('; '.join(facts))}.</p><h4>Top contexts</h4>"
        )
        for ctx in json.loads(c["contexts"]):
            if "tokens" in ctx:
                out.append(
                    f'<div class="context">{_tokens([(t, v) for t, v in ctx["tokens"]], ctx.get("focus"))}</div>'
                )
            else:  # a run from before contexts kept each token's activation
                out.append(
                    f'<div class="context">{html.escape(ctx["before"])}<b>{html.escape(ctx["token"])}</b>'
                    f"{html.escape(ctx['after'])} ({ctx['value']:+.2f})</div>"
                )
        mine = by_component.get((signal, c["layer"], c["kind"], c["index"]), [])
        traces = defaultdict(list)
        for t in mine:
            traces[(t["example_id"], t["sample"])].append(t)
        usable = [k for k in traces if all(t.get("token") is not None for t in traces[k])]
        firsts = []  # one trace per prompt first
        for k in usable:
            if all(k[0] != f[0] for f in firsts):
                firsts.append(k)
        shown = (firsts + [k for k in usable if k not in firsts])[:TRACES_PER_CARD]
        if shown:
            out.append("<h4>Where its score lands</h4>")
        for key in shown:
            steps = sorted(traces[key], key=lambda t: t["step"])
            out.append(
                f'<div class="trace"><div class="label">{html.escape(key[0])}, sample {key[1]}: score terms sum to '
                f"{sum(t['term'] for t in steps):+.4g}</div>{_tokens([(t['token'], t['term']) for t in steps])}</div>"
            )
        out.append("</section>")
    return "\n".join(out)


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; vertical-align: top; }
table.sortable th { cursor: pointer; background: #f3f3f3; user-select: none; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
figure { display: inline-block; margin: 0.5em; } figure img { max-width: 560px; }
pre { white-space: pre-wrap; margin: 0; font-size: 12px; }
.sidebyside td { width: 45%; } .verdict { font-size: 12px; margin-top: 4px; }
.completion.same pre { color: #999; } .verdict.ok { color: #1a7f37; } .verdict.bad { color: #b3261e; } .missing { color: #888; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.3em 1em 0.8em; margin: 1em 0; }
.context, .trace { font: 13px/1.9 ui-monospace, monospace; margin: 4px 0; }
.tok { padding: 1px 0; border-radius: 2px; white-space: pre-wrap; } .tok.focus { outline: 2px solid #222; }
.label { font: 12px system-ui, sans-serif; color: #555; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 5px; border-radius: 2px; }
"""

SORT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var head = table.tHead ? table.tHead.rows[0] : table.rows[0];
  Array.prototype.forEach.call(head.cells, function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var up = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(head.cells, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      function key(row) {
        var t = row.cells[col] ? row.cells[col].textContent.trim() : "";
        var m = t.match(/^[-+]?\\d+(\\.\\d+)?/);
        return m ? parseFloat(m[0]) : t;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = typeof x === "number", ny = typeof y === "number";
        var c = nx && ny ? x - y : nx ? -1 : ny ? 1 : String(x).localeCompare(String(y));
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def write_html(
    run_dir: Path,
    sections: list[tuple[str, list[str]]],
    made: list[str],
    found: list[Panel],
    cards: list[dict],
    terms: list[dict],
    selections: list[dict],
    methods,
) -> Path:
    """Write run_dir/report.html from report.md's ``sections`` (key, Markdown lines), the plots ``made``,
    the side-by-side panels and the cards' tables; the visual parts replace their Markdown sections.
    ``methods``: the run's methods (their plot colours mark them in the tables)."""
    colours = method_colours(methods)
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    visual = {
        "plots": lambda: _plots(run_dir, made),
        "completions": lambda: _completions(found, colours),
        "cards": lambda: _cards(cards, terms, selections),
    }
    markdown = dict(sections)
    order = ["intro", "summary", "headline", "strength", "plots", "completions", "cards"]
    keys = [k for k in order if k in markdown or k in visual] + [k for k in markdown if k not in order]
    body = [visual[key]() if key in visual else _md(markdown[key], renderer, colours) for key in keys]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>IPG report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{SORT}</script>\n</body></html>\n"
    )
    return atomic_write_text(run_dir / "report.html", page)
