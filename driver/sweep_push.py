"""A sweep's outcome pushed to a Prometheus Pushgateway when it ends.

A scheduled sweep (a RayCronJob) is a batch job: nothing is left to scrape once it is over, so it pushes
its outcome, the way Prometheus recommends for batch jobs. Configured in the sweep spec::

    pushgateway:
      address: prometheus-pushgateway.monitoring:9091   # host:port or http(s)://host:port
      job: ipg_sweep                                     # the push's job label (default ipg_sweep)
      timeout_s: 10

Pushed under the grouping key {job, sweep} (the sweep's name), with ``pushadd`` (HTTP POST), which
replaces only the metrics of this push, so a failed night keeps the last success time of the one before:

    ipg_sweep_last_success_timestamp_seconds   end of the last sweep whose cells all finished (success only)
    ipg_sweep_last_run_timestamp_seconds       end of the last sweep, whatever its outcome
    ipg_sweep_success                          1 when every cell finished, else 0
    ipg_sweep_duration_seconds                 the last sweep's wall time
    ipg_sweep_cells{status}                    cells done, failed and pending at its end

The alert on ``time() - ipg_sweep_last_success_timestamp_seconds`` is in deploy/dashboards. A push that
fails is logged and never fails the sweep: its results are written already, and the alert fires on the
missing success all the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ipg.errors import InputError

KEYS = {"address", "job", "timeout_s"}
STATUSES = ("done", "failed", "pending")


@dataclass(frozen=True)
class Pushgateway:
    address: str
    job: str = "ipg_sweep"
    timeout_s: float = 10.0

    @classmethod
    def from_spec(cls, value, where: str) -> Pushgateway | None:
        """The spec's ``pushgateway`` (None when absent), validated with the key named."""
        if value is None:
            return None
        if isinstance(value, str):
            value = {"address": value}
        if not isinstance(value, dict) or set(value) - KEYS or not value.get("address"):
            raise InputError(
                f"{where}: pushgateway: expected {{address: host:port, job: name, timeout_s: seconds}}, got {value!r}"
            )
        address, job, timeout = value["address"], value.get("job", "ipg_sweep"), value.get("timeout_s", 10.0)
        if not isinstance(address, str) or not isinstance(job, str) or not job:
            raise InputError(f"{where}: pushgateway: address and job must be strings, got {address!r} and {job!r}")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise InputError(f"{where}: pushgateway.timeout_s: must be a number of seconds > 0, got {timeout!r}")
        return cls(address=address, job=job, timeout_s=float(timeout))

    def push(self, sweep: str, counts: dict[str, int], seconds: float, succeeded: bool, log=print) -> bool:
        """Push one sweep's outcome; False (and a log line) when the gateway could not take it."""
        from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

        registry = CollectorRegistry()
        now = time.time()
        if succeeded:
            Gauge(
                "ipg_sweep_last_success_timestamp_seconds",
                "end of the last sweep whose cells all finished",
                registry=registry,
            ).set(now)
        Gauge(
            "ipg_sweep_last_run_timestamp_seconds", "end of the last sweep, whatever its outcome", registry=registry
        ).set(now)
        Gauge("ipg_sweep_success", "1 when every cell of the last sweep finished, else 0", registry=registry).set(
            int(succeeded)
        )
        Gauge("ipg_sweep_duration_seconds", "wall time of the last sweep", registry=registry).set(seconds)
        cells = Gauge("ipg_sweep_cells", "cells of the last sweep by status at its end", ["status"], registry=registry)
        for status in STATUSES:
            cells.labels(status=status).set(counts.get(status, 0))
        try:
            pushadd_to_gateway(
                self.address, job=self.job, registry=registry, grouping_key={"sweep": sweep}, timeout=self.timeout_s
            )
        except Exception as e:  # noqa: BLE001 - a monitoring outage must not fail a finished sweep
            log(
                f"warning: pushgateway: could not push sweep {sweep}'s outcome to {self.address} "
                f"({type(e).__name__}: {e}); its results are written, and the alert on its last success will fire"
            )
            return False
        log(
            f"pushgateway: pushed sweep {sweep}'s outcome to {self.address} (job {self.job}; "
            f"{'success' if succeeded else 'failure'}, {counts.get('done', 0)} done, {counts.get('failed', 0)} failed)"
        )
        return True
