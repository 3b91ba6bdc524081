"""Fault injection for tests of a distributed run (inert unless IPG_FAULTS is set).

``IPG_FAULTS=rollout@shard-00001,gradient@shard-00002,reducer@shard-00003`` makes the worker process
handling that stage of that shard exit abruptly (``os._exit``, as a crash or an OOM kill would), once:
a marker file in ``IPG_FAULTS_DIR`` records that the fault fired, so the restarted actor goes on
(``gradient@shard-00002*3``: the process handling it dies 3 times, the restart included). The
variables reach actors through the runtime env (cluster.ray_cluster forwards IPG_*).
"""

from __future__ import annotations

import os
from pathlib import Path


def maybe_crash(stage: str, shard_id: str) -> None:
    spec = os.environ.get("IPG_FAULTS")
    if not spec:
        return
    key = f"{stage}@{shard_id}"
    times = {k: int(n or 1) for k, _, n in (item.partition("*") for item in spec.split(","))}.get(key)
    if times is None:
        return
    for i in range(times):  # the i-th death leaves the i-th marker; the restarted actor goes on to the next
        marker = Path(os.environ.get("IPG_FAULTS_DIR", "/tmp")) / (key if i == 0 else f"{key}*{i + 1}")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue  # fired before
        os.close(fd)
        os._exit(17)
