"""A sweep's outcome pushed to a Pushgateway (the batch-job convention), against a stand-in on loopback:
success, failure, an unreachable gateway, and the spec's validation."""

import time

import pytest
import yaml
from pushgateway_standin import pushed_values, pushgateway

from ipg.driver.sweep import Sweep, load_spec
from ipg.driver.sweep_push import Pushgateway
from ipg.errors import InputError

pytestmark = pytest.mark.unit

SPEC = {"name": "nightly", "models": ["organism"], "signals": ["accuracy"], "layers": [1, 2], "out": "unused"}


def _sweep(tmp_path, address, outcome):
    """A sweep whose cells 'finish' as ``outcome`` says (status files written as a run writes them)."""
    path = tmp_path / "spec.yaml"
    path.write_text(
        yaml.safe_dump(
            {**SPEC, "out": str(tmp_path / "out"), "pushgateway": {"address": address, "job": "ipg_nightly"}}
        )
    )
    sweep = Sweep(load_spec(str(path)), log=lambda line: None)

    def run():
        cells = sweep.spec.cells()
        sweep._write_status(cells[0], "done", scores="scores/x.parquet")
        sweep.store.write_text("scores/x.parquet", "x")
        if outcome == "fail":
            sweep._write_status(cells[1], "failed", error="boom")
            raise RuntimeError("a cell failed")
        sweep._write_status(cells[1], "done", scores="scores/x.parquet")
        return "summary"

    sweep._run = run
    return sweep


def test_a_finished_sweep_pushes_its_success_cells_and_duration(tmp_path):
    with pushgateway() as (address, received):
        before = time.time()
        assert _sweep(tmp_path, address, "ok").run() == "summary"
    [(method, path, body)] = received
    assert method == "POST" and path == "/metrics/job/ipg_nightly/sweep/nightly"  # pushadd: a failure keeps the success
    values = pushed_values(body)
    assert values[("ipg_sweep_success", ())] == 1.0
    assert before - 1 <= values[("ipg_sweep_last_success_timestamp_seconds", ())] <= time.time() + 1
    assert (
        values[("ipg_sweep_last_run_timestamp_seconds", ())] == values[("ipg_sweep_last_success_timestamp_seconds", ())]
    )
    assert values[("ipg_sweep_cells", (("status", "done"),))] == 2.0
    assert (
        values[("ipg_sweep_cells", (("status", "failed"),))] == 0.0 and values[("ipg_sweep_duration_seconds", ())] >= 0
    )


def test_a_failed_sweep_pushes_its_failure_without_a_success_time(tmp_path):
    with pushgateway() as (address, received):
        with pytest.raises(RuntimeError, match="a cell failed"):
            _sweep(tmp_path, address, "fail").run()
    [(method, _, body)] = received
    values = pushed_values(body)
    assert method == "POST" and values[("ipg_sweep_success", ())] == 0.0
    assert not any(name == "ipg_sweep_last_success_timestamp_seconds" for name, _ in values)
    assert (
        values[("ipg_sweep_cells", (("status", "done"),))] == 1.0
        and values[("ipg_sweep_cells", (("status", "failed"),))] == 1.0
    )


def test_an_unreachable_gateway_is_logged_and_the_sweep_stands(tmp_path):
    from raytools import free_port

    lines = []
    gateway = Pushgateway(f"127.0.0.1:{free_port()}", timeout_s=2)
    assert gateway.push("nightly", {"done": 1}, 1.0, True, log=lines.append) is False
    assert lines[0].startswith("warning: pushgateway: could not push sweep nightly's outcome to 127.0.0.1:")


@pytest.mark.parametrize(
    "value, message",
    [
        ({"adress": "x:9091"}, "pushgateway: expected {address: host:port"),
        ({"address": "x:9091", "timeout_s": 0}, "pushgateway.timeout_s: must be a number of seconds > 0"),
        ({"address": 9091}, "pushgateway: address and job must be strings"),
    ],
)
def test_bad_pushgateway_settings_name_the_key(tmp_path, value, message):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "pushgateway": value}))
    with pytest.raises(InputError, match=None) as e:
        load_spec(str(path))
    assert message in str(e.value)


def test_a_pushgateway_given_as_an_address_alone_takes_the_defaults(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "pushgateway": "gw:9091"}))
    assert load_spec(str(path)).pushgateway == Pushgateway("gw:9091", job="ipg_sweep", timeout_s=10.0)
    path.write_text(yaml.safe_dump(SPEC))
    assert load_spec(str(path)).pushgateway is None
