"""The reasoning-strength report from per-prompt outcomes: length ranges against random's, the verdict,
the trade-off table (tokens and accuracy against the unsteered model, cut-offs, answers)."""

import numpy as np
import pytest

from ipg.driver.report.strength import detail_lines, length_ranges, summary_lines, tradeoff_lines, verdict

pytestmark = pytest.mark.unit
GAMMAS = (0.0, 0.5, 1.0, 2.0)


def _items(slope: dict, n=40, seeds=(0, 1), limit=192):
    """Length = 100 + slope * (gamma - 1) * 50 + per-prompt noise; the unsteered model at gamma 1."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 140, n)
    out = []
    for method, k in slope.items():
        for seed in seeds:
            for g in GAMMAS:
                noise = rng.normal(0, 5, n) if g != 1.0 else np.zeros(n)
                lengths = np.clip(base + k * (g - 1) * 50 + noise, 1, limit).astype(int)
                for i, length in enumerate(lengths):
                    out.append(
                        {
                            "experiment": "length",
                            "method": method,
                            "layer": 22,
                            "p": 8,
                            "gamma": g,
                            "seed": seed,
                            "draw": 0,
                            "example_id": f"e{i}",
                            "correct": bool(i % 5 == 0 and length < 150),
                            "answered": bool(length < limit),
                            "length": int(length),
                            "finished": bool(length < limit),
                        }
                    )
    return out


def test_a_selection_that_moves_length_beats_random_and_one_that_does_not_is_named_closest():
    items = _items({"component": 1.0, "random": 0.0, "ipg": 0.0})
    records = length_ranges(items)
    by = {r["method"]: r for r in records}
    assert by["component"]["vs_random"].low > 40 and by["random"]["vs_random"] is None
    assert (
        abs(by["component"]["range"].estimate - by["component"]["vs_random"].estimate - by["random"]["range"].estimate)
        < 1e-9
    )
    assert "its 95% paired interval lies above random's" in verdict(records, "component")[0]
    weak = verdict(records, "ipg")[0]
    assert "not above random's" in weak and "Closest: component" in weak


def test_tradeoff_against_the_unsteered_model_with_cut_offs_and_answers():
    items = _items({"component": 1.0, "random": 0.0}, limit=160)
    lines = tradeoff_lines(items, "length", "component")
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and line[2].isdigit()}
    assert set(rows) == {"0", "0.5", "1", "2"}
    assert rows["0"].split(" | ")[2].startswith("-")  # shorter than unsteered
    assert rows["2"].split(" | ")[2].startswith("+") and rows["1"].split(" | ")[2] == "-"
    cut_at_2 = float(rows["2"].split(" | ")[5].split(" ")[0])
    assert cut_at_2 > float(rows["0"].split(" | ")[5].split(" ")[0])  # longer traces reach the limit more often
    summary = summary_lines(items, "component")
    assert summary[0].startswith("**Reasoning strength**") and any("unsteered" in line for line in summary)


def test_runs_without_a_cut_off_column_still_report():
    items = [{k: v for k, v in r.items() if k != "finished"} for r in _items({"component": 1.0, "random": 0.0})]
    lines = detail_lines(items, "length")
    assert any(line.startswith("| component | 2 |") and " - | " in line for line in lines)
    assert summary_lines([], "component") == []


def test_the_summary_adds_the_selection_that_beats_random_when_the_runs_does_not():
    items = _items({"component": 0.0, "random": 0.0, "component_sae": 1.0})
    summary = "\n".join(summary_lines(items, "component"))
    assert "not above random's" in summary and "Closest: component_sae" in summary
    assert "Length steering of component's top 8" in summary and "Length steering of component_sae's top 8" in summary
    assert "component_sae's top" not in "\n".join(
        summary_lines(_items({"component": 1.0, "random": 0.0, "component_sae": 1.0}), "component")
    )


def test_a_repeated_run_of_tokens_is_a_loop():
    from ipg.evaluation import loops

    assert loops(list(range(8)) * 3) and not loops(list(range(8)) * 2 + list(range(100, 140)))
    assert not loops(list(range(7)) * 3) and loops(list(range(7)) * 4)  # a 7-token cycle: its 8-runs repeat 3x in 28
    assert not loops(list(range(200)))


def test_a_length_range_made_of_loops_is_breakage_not_control():
    items = _items({"component": 1.0, "random": 0.0, "ipg": 0.5})
    for r in items:  # component loops once it is enhanced; ipg's loops stay near the unsteered model's
        i = int(r["example_id"][1:])
        r["looped"] = (r["method"] == "component" and r["gamma"] == 2.0 and i % 5 != 0) or i % 10 == 0
    records = length_ranges(items)
    by = {r["method"]: r for r in records}
    assert by["component"]["vs_random"].low > 40 and by["ipg"]["breakage"] is None
    assert by["component"]["breakage"] == "at gamma 2 90% of traces loop (unsteered 10%)"
    said = verdict(records, "component")[0]
    assert "but that is breakage, not control**: at gamma 2 90% of traces loop (unsteered 10%)" in said
    assert "its 95% paired interval lies above random's" not in said
    rows = [line for line in detail_lines(items, "length") if line.startswith("| component | 2 |")]
    assert rows and rows[0].split(" | ")[5].startswith("90.0")  # the loop column


@pytest.mark.parametrize(
    "curve, verdict_text",
    [
        ((29.88, 29.85, 31.0, 45.0), "monotone increasing"),  # a 0.03-token dip prints as 29.9, 29.9: flat
        ((60.0, 40.0, 40.2, 20.0), "monotone decreasing"),
        ((30.0, 30.2, 29.9, 30.1), "flat"),
        ((30.0, 25.0, 31.0, 40.0), "NOT monotone"),
    ],
)
def test_the_length_evidence_allows_steps_below_its_printed_precision(curve, verdict_text):
    from ipg.driver.report.write import monotone_lines

    evals = [
        {"experiment": "length", "method": "component", "layer": 1, "gamma": g, "mean_length": v}
        for g, v in zip(GAMMAS, curve)
    ]
    (line,) = monotone_lines(evals, "length", "component")
    assert f"**{verdict_text}**" in line
