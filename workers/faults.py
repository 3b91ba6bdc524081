"""Fault injection for tests of a distributed run (inert unless IPG_FAULTS is set).

``IPG_FAULTS=rollout@shard-00001,gradient@shard-00002,reducer@shard-00003`` makes the worker process
handling that stage of that shard exit abruptly (``os._exit``, as a crash or an OOM kill would), once:
a marker file in ``IPG_FAULTS_DIR`` records that the fault fired, so the restarted actor goes on. The
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
    if key not in spec.split(","):
        return
    marker = Path(os.environ.get("IPG_FAULTS_DIR", "/tmp")) / key
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # fired before: this is the restarted actor
    os.close(fd)
    os._exit(17)
