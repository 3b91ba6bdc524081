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
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000]
_metrics = None


class Metrics:
    def __init__(self):
        from ray.util.metrics import Counter, Gauge, Histogram

        stage = ("stage",)
        self.prompts = Counter("ipg_prompts_total", "prompts processed", tag_keys=stage)
        self.trajectories = Counter("ipg_trajectories_total", "trajectories processed", tag_keys=stage)
        self.tokens = Counter("ipg_tokens_total", "tokens processed", tag_keys=stage)
        self.shards = Counter("ipg_shards_total", "shards finished", tag_keys=stage)
        self.stage_seconds = Histogram("ipg_stage_seconds", "latency of one unit of work", boundaries=_BOUNDARIES,
                                       tag_keys=stage)
        self.reducer_lag = Gauge("ipg_reducer_lag_seconds", "partial table created -> merged")
        self.errors = Counter("ipg_errors_total", "failures by class", tag_keys=("error_class", "stage"))
        self.logprob_gap = Gauge("ipg_logprob_gap_max", "max |rollout-engine log-prob - torch log-prob| of the last shard")

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
