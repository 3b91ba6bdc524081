"""Connect to a Ray cluster, or start a local one on loopback, and spawn actor groups.

Local clusters bind to 127.0.0.1 and keep Ray 2.60's token authentication on (the default). Actor
classes are plain classes from workers/; ``ray.remote`` is applied here, with their options.
"""

from __future__ import annotations

import os

import ray

from ipg.errors import InputError


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``); with neither, start a local cluster on 127.0.0.1."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=num_cpus, log_to_driver=False)


def spawn(cls, n: int, *args, num_cpus: float = 1.0, max_restarts: int = 2, **kwargs) -> list:
    """``n`` actors of a plain class; restarted by Ray if their process dies (tasks retried by the driver)."""
    actor = ray.remote(num_cpus=num_cpus, max_restarts=max_restarts, max_task_retries=2)(cls)
    return [actor.remote(*args, **kwargs) for _ in range(n)]


def check_resources(needed: dict[str, float]) -> None:
    """Fail before placing actors when the cluster cannot hold them (actors would wait forever)."""
    total = ray.cluster_resources()
    missing = {k: (v, total.get(k, 0.0)) for k, v in needed.items() if total.get(k, 0.0) < v}
    if missing:
        per_node = [{k: n["Resources"].get(k, 0.0) for k in needed} for n in ray.nodes() if n["Alive"]]
        raise InputError("ray: the cluster lacks resources for the actors: " +
                         ", ".join(f"{k} needs {v:g}, has {h:g}" for k, (v, h) in missing.items()) +
                         f"; per node: {per_node}. Lower the worker counts or ray.cpus_per_actor, or add nodes")
