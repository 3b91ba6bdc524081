"""report.html in a real browser: headless Chromium (Debian's package) opens a small run's page from disk
with the network blocked. The page must load with no console error and no request, hold the numbers of
report.md, sort a table on a click, and shade each token with the colour its value implies."""

import re

import pyarrow.parquet as pq
import pytest
from page import chromium, opened

from ipg.driver.cli import main
from ipg.driver.report.html import shade

pytestmark = pytest.mark.browser

if chromium() is None:
    pytest.skip(
        "no Chromium: `make test` installs Debian's chromium package where it can (root and apt-get); "
        "without it the browser tier is skipped",
        allow_module_level=True,
    )
pytest.importorskip("playwright", reason="playwright (the dev extra) drives the browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "run"
    assert (
        main(
            [
                "run",
                f"--out={out}",
                "--seeds=[0]",
                "--data.n_support=6",
                "--data.n_eval=8",
                "--attribution.layers=[2]",
                "--attribution.q=2",
                "--attribution.n_samples=3",
                "--evaluation.p=[4]",
                "--evaluation.random_draws=2",
                "--baselines.methods=[random, activation]",
                "--length.layers=[2]",
                "--length.gammas=[0, 1, 2]",
                "--reflection.enabled=false",
                "--stability.enabled=false",
                "--cards.components=2",
            ]
        )
        == 0
    )
    return out


def _md_rows(report: str, section_end: str = "## Steered completions") -> list[tuple[str, ...]]:
    """Every row of report.md's tables before the side-by-side texts, as the page shows their cells."""
    rows = []
    for line in report[: report.find(section_end) if section_end in report else None].splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip().replace("**", "").replace("`", "") for c in line.strip("|").split(" | ")]
            rows.append(tuple(cells))
    return rows


def test_page_loads_offline_and_holds_the_reports_numbers(run, tmp_path):
    report = (run / "report.md").read_text()
    with opened(run / "report.html") as (page, problems):
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        tables = page.eval_on_selector_all(
            "table.sortable",
            "ts => ts.map(t => Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.textContent.trim())))",
        )
        titles = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent.trim())")
    assert problems == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert [t for t in titles if t != "Summary"][0].startswith("Headline: control of accuracy")  # the headline first
    shown = {tuple(r) for t in tables for r in t}
    wanted = _md_rows(report)
    assert wanted and all(row in shown for row in wanted), [r for r in wanted if r not in shown][:3]
    # the headline table's numbers are the run's: component's control range, from its eval items
    items = pq.read_table(run / "eval_items.parquet").to_pylist()
    from ipg.driver.report.headline import headline as compute

    _, records = compute(items)
    first = next(r for r in records if r["method"] == "component")
    assert any(row[0] == "component" and row[1] == first["range"].fmt() for t in tables for row in t)


def test_a_click_sorts_a_table(run):
    with opened(run / "report.html") as (page, problems):
        table = page.locator("table.sortable", has=page.locator("th", has_text="control range")).first  # the headline's
        column = [h.strip() for h in table.locator("tr").nth(0).locator("th").all_text_contents()].index(
            "control range"
        )

        def values():
            cells = table.locator("tbody tr").evaluate_all(f"rs => rs.map(r => r.cells[{column}].textContent)")
            return [float(re.match(r"[-+]?\d+(\.\d+)?", c.strip()).group(0)) for c in cells]

        before = values()
        table.locator("th").nth(column).click()
        up = values()
        table.locator("th").nth(column).click()
        down = values()
    assert problems == []
    assert up == sorted(before) and down == sorted(before, reverse=True)
    assert len(set(before)) > 1 and (before != up or before != down)  # the clicks changed the order


def test_shaded_tokens_have_the_colours_their_values_imply(run):
    with opened(run / "report.html") as (page, problems):
        tokens = page.eval_on_selector_all(
            ".card .tok", "ts => ts.map(t => [t.dataset.v, t.dataset.vmax, getComputedStyle(t).backgroundColor])"
        )
        cards = page.locator(".card").count()
    assert problems == []
    assert cards >= 2 and len(tokens) > 20
    seen = set()
    for v, vmax, colour in tokens:
        want = [float(x) for x in re.findall(r"[\d.]+", shade(float(v), float(vmax)))]
        got = [float(x) for x in re.findall(r"[\d.]+", colour)]
        if len(got) == 3:  # the browser writes an opaque colour as rgb()
            got.append(1.0)
        if want[3] == 0:  # a transparent background: the browser writes rgba(0, 0, 0, 0)
            assert got[3] == 0
            continue
        assert got[:3] == want[:3] and abs(got[3] - want[3]) < 0.01, (v, vmax, colour)
        seen.add("positive" if float(v) > 0 else "negative")
    assert seen == {"positive", "negative"}  # activations and score terms of both signs are drawn
