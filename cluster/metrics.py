"""The project's metrics, defined once (``ray.util.metrics``: they reach the Ray dashboard and the
node's Prometheus endpoint without a port per actor). Ray prefixes every name with ``ray_``.

    ipg_prompts_total{stage}          prompts processed (stage: rollout | gradient)
    ipg_trajectories_total{stage}     sampled trajectories
    ipg_tokens_total{stage}           generated tokens (rollout) / teacher-forced tokens (gradient)
    ipg_stage_seconds{stage}          latency of one unit of work per stage (histogram)
    ipg_shards_total{stage}           shards finished per stage (rollout | gradient | merge)
    ipg_reducer_lag_seconds           time from a partial table's creation to its merge (last shard)
    ipg_errors_total{error_class,stage}   failures: item (one example) | fatal
    ipg_logprob_gap_max               vLLM vs torch per-token log-prob gap, max over the last shard

Stage names are shared with the driver's timers, so a timer's name is its metric's stage tag.

Every series also carries ``run`` (the run's name: its output directory, or a sweep's name) and ``job``
(the Ray job id of the run's driver, unique on the cluster), so that two runs sharing one cluster, and
one Ray session, never add into each other's series. A session sets the run in its driver
(``set_run``) and in every actor it starts (the ``IPG_RUN`` environment variable).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000]
_metrics = None
_run: str | None = None  # the driver's run name (set_run); actors read RUN_ENV
RUN_ENV = "IPG_RUN"
RUN_TAGS = ("run", "job")


def set_run(name: str) -> None:
    """This driver process's run name, carried by every series it records from now on."""
    global _run
    _run = name
    if _metrics is not None:
        _metrics.tag_all(run_tags())


def run_tags() -> dict[str, str]:
    """The run's tags in this process: its name, and the Ray job id (the driver's and its actors' alike)."""
    import ray

    job = ray.get_runtime_context().get_job_id() if ray.is_initialized() else ""
    return {"run": _run if _run is not None else os.environ.get(RUN_ENV, ""), "job": job or ""}


class Metrics:
    def __init__(self):
        from ray.util.metrics import Counter, Gauge, Histogram

        stage = ("stage", *RUN_TAGS)
        self.prompts = Counter("ipg_prompts_total", "prompts processed", tag_keys=stage)
        self.trajectories = Counter("ipg_trajectories_total", "trajectories processed", tag_keys=stage)
        self.tokens = Counter("ipg_tokens_total", "tokens processed", tag_keys=stage)
        self.shards = Counter("ipg_shards_total", "shards finished", tag_keys=stage)
        self.stage_seconds = Histogram(
            "ipg_stage_seconds", "latency of one unit of work", boundaries=_BOUNDARIES, tag_keys=stage
        )
        self.reducer_lag = Gauge("ipg_reducer_lag_seconds", "partial table created -> merged", tag_keys=RUN_TAGS)
        self.errors = Counter("ipg_errors_total", "failures by class", tag_keys=("error_class", "stage", *RUN_TAGS))
        self.logprob_gap = Gauge(
            "ipg_logprob_gap_max", "max |rollout-engine log-prob - torch log-prob| of the last shard", tag_keys=RUN_TAGS
        )
        self.tag_all(run_tags())

    def tag_all(self, tags: dict[str, str]) -> None:
        for metric in (
            self.prompts,
            self.trajectories,
            self.tokens,
            self.shards,
            self.stage_seconds,
            self.reducer_lag,
            self.errors,
            self.logprob_gap,
        ):
            metric.set_default_tags(tags)

    def count(self, stage: str, *, prompts: int = 0, trajectories: int = 0, tokens: int = 0) -> None:
        tags = {"stage": stage}
        for metric, n in ((self.prompts, prompts), (self.trajectories, trajectories), (self.tokens, tokens)):
            if n:
                metric.inc(n, tags=tags)
        self.shards.inc(1, tags=tags)

    def error(self, error_class: str, stage: str) -> None:
        self.errors.inc(1, tags={"error_class": error_class, "stage": stage})


def metrics() -> Metrics | None:
    """This process's metrics; None outside a Ray worker or driver (metrics are then not recorded).
    Ray is not imported here: a process that never loaded it records nothing and stays light."""
    global _metrics
    if _metrics is None:
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return None
        _metrics = Metrics()
    return _metrics


class StageTimer:
    """Named timers whose names are the metric stage tags: seconds add up per name, and each timed
    unit is observed in ``ipg_stage_seconds{stage=name}`` when Ray is up."""

    def __init__(self, observe: bool = True):
        self.seconds: dict[str, float] = {}
        self.observe = observe  # False: only add up seconds (a caller whose stages Ray workers already observe)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed
            m = metrics() if self.observe else None
            if m is not None:
                m.stage_seconds.observe(elapsed, tags={"stage": stage})
