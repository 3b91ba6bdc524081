"""The Grafana dashboard queries only metrics the project defines (a renamed metric breaks this test)."""

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_dashboard_queries_name_the_project_metrics():
    dash = json.loads((ROOT / "deploy" / "dashboards" / "ipg-grafana.json").read_text())
    source = (ROOT / "cluster" / "metrics.py").read_text()
    defined = set(re.findall(r'(?:Counter|Gauge|Histogram)\("(ipg_[a-z_]+)"', source))
    assert {"ipg_prompts_total", "ipg_stage_seconds", "ipg_reducer_lag_seconds", "ipg_errors_total"} <= defined
    used = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\bray_(ipg_[a-z_]+)", target["expr"]):
                used.add(re.sub(r"_bucket$", "", name))
    assert used <= defined, used - defined
    assert defined <= used, defined - used  # every metric has a panel
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
