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
    defined = set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(ipg_[a-z_]+)"', source))
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


def test_sweep_alert_rules_read_pushed_metrics_and_outlast_the_schedule():
    import math

    import yaml
    from croniter import croniter

    rules = yaml.safe_load((ROOT / "deploy" / "dashboards" / "ipg-alerts.yaml").read_text())
    source = (ROOT / "driver" / "sweep_push.py").read_text()
    pushed = set(re.findall(r'Gauge\(\s*"(ipg_sweep_[a-z_]+)"', source))
    assert {"ipg_sweep_last_success_timestamp_seconds", "ipg_sweep_success", "ipg_sweep_cells"} <= pushed
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"IpgSweepNoRecentSuccess", "IpgSweepFailed"}
    for rule in alerts.values():
        assert set(re.findall(r"\b(ipg_[a-z_]+)", rule["expr"])) <= pushed, rule["expr"]
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]
    # the staleness bound: at least one schedule period plus the scheduled run's deadline
    factors = re.search(r">\s*([\d\s*]+)$", alerts["IpgSweepNoRecentSuccess"]["expr"]).group(1).split("*")
    bound = math.prod(int(f) for f in factors)
    cron = yaml.safe_load((ROOT / "k8s" / "base" / "raycronjob.yaml").read_text())["spec"]
    it = croniter(cron["schedule"])
    first = it.get_next(float)
    period = it.get_next(float) - first
    assert bound >= period + cron["jobTemplate"]["activeDeadlineSeconds"], (bound, period)
