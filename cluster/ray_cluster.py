"""Connect to a Ray cluster or start a local one; resources, placement groups, actor groups.

Local clusters: the dashboard binds to 127.0.0.1 and Ray 2.60's token authentication stays on (its
default). Note, measured with ``ss -ltn`` on Ray 2.60: ``ray.init`` and ``ray start`` resolve
127.0.0.1 to the host's address and the GCS/raylet gRPC ports listen on all interfaces whatever the
node address; token authentication is what guards them, which is why it is never turned off here.

Actor classes are plain classes from workers/; ``ray.remote`` and every actor option (CPUs, GPUs,
restarts, retries, runtime env, placement) are applied here, in ``actor_options``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import ray

from ipg.errors import InputError

# environment the actors need from the driver: offline hub settings, caches, and the project's own
# IPG_* switches (fault injection in tests, log level)
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE")


def connect(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True) -> dict:
    """Join ``address`` (or ``RAY_ADDRESS``); with neither, start a local cluster with the dashboard on
    127.0.0.1. Returns where things are: address, dashboard URL, and whether the cluster is local."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            reachable(address)
            try:
                with on_loopback(loopback_only(address)):
                    ray.init(address=address, log_to_driver=True)
            except ConnectionError as e:
                raise InputError(
                    f"ray.address: cannot connect to '{address}' ({e}); start a head with "
                    "`ray start --head` or unset RAY_ADDRESS to start a local cluster"
                ) from None
        else:
            with on_loopback():
                ray.init(
                    address="local",
                    _node_ip_address="127.0.0.1",
                    include_dashboard=dashboard,
                    dashboard_host="127.0.0.1",
                    num_cpus=num_cpus,
                    log_to_driver=False,
                )
            from ipg.cluster import watchdog

            watchdog.start(os.getpid())  # the cluster dies with this driver, even a killed one
    from ray._private.worker import get_dashboard_url

    return {
        "address": ray.get_runtime_context().gcs_address,
        "dashboard_url": get_dashboard_url() or None,
        "local": not address,
    }


@contextmanager
def on_loopback(enabled: bool = True):
    """While Ray starts or joins a cluster: keep it on 127.0.0.1. Ray rewrites a loopback node address to
    the host's own (so that other nodes could join), and a local cluster's servers then listen where every
    machine on the network can reach them, metrics endpoints included. A local cluster has no other
    nodes. The cluster's processes read Ray's single-machine switch from the environment when they start
    (so it is set only while they are started, not for this driver's other children), this driver from
    the constant it read at import."""
    if not enabled:
        yield
        return
    from ray._private import ray_constants

    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch for single-machine clusters
    before = os.environ.get(key)
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address ('host:port', 'ray://host:port'); None for 'auto' and the like."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def loopback_only(address: str) -> bool:
    """Whether ``address`` is a cluster that listens on loopback alone (one this project started): a
    client must then keep the loopback address too, which Ray would rewrite to the host's."""
    import socket

    where = _host_port(address)
    if where is None or where[0] not in ("127.0.0.1", "localhost"):
        return False
    port = where[1]
    try:
        own = socket.gethostbyname(socket.gethostname())
        if own.startswith("127."):
            return True
        socket.create_connection((own, port), timeout=2).close()
    except OSError:
        return True
    return False


def reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once, in one line, when nothing answers at a cluster address (``ray.init`` would wait on a
    cluster that is gone, for example the one a resumed run was started on). 'auto' and addresses
    without a port are left to Ray."""
    import socket

    where = _host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=timeout_s).close()
    except OSError as e:
        raise InputError(
            f"ray.address: nothing answers at '{address}' within {timeout_s:g} s ({e.strerror or e}); start "
            "the cluster (`ray start --head`), give the address of a running one, or unset ray.address / "
            "RAY_ADDRESS to start a local cluster"
        ) from None


def metrics_endpoints() -> list[str]:
    """The Prometheus endpoints of the cluster's nodes (where ``ipg_*`` metrics are exported)."""
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes() if n["Alive"]]


def runtime_env(threads: int | None = None, py_modules: tuple[str, ...] = (), extra_env: dict | None = None) -> dict:
    """The runtime env of every actor: forwarded hub/cache settings and IPG_* variables, thread counts
    pinned to the actor's CPU share (no oversubscription of a node's cores), and the local modules the
    actors must import that no installed package provides (a user's signal), uploaded by Ray."""
    env = {k: v for k, v in os.environ.items() if k in FORWARDED_ENV or k.startswith("IPG_")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    out = {"env_vars": {**env, **(extra_env or {})}}
    if py_modules:
        out["py_modules"] = list(py_modules)
    return out


def upload_modules(paths: list[str]) -> tuple[str, ...]:
    """Local module folders or .py files as package URIs in the cluster's object store, for actors'
    ``py_modules``. An actor's runtime env accepts URIs only (Ray uploads local paths for a job's own env,
    at ``ray.init``), so the driver uploads them the way ``ray.init`` does; the packages are keyed by
    their content, so an unchanged module uploads once."""
    if not paths:
        return ()
    import tempfile

    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    env = upload_py_modules_if_needed(
        {"py_modules": list(paths)}, include_gitignore=True, scratch_dir=tempfile.gettempdir()
    )
    return tuple(env["py_modules"])


@dataclass(frozen=True)
class ActorSpec:
    """What one actor of a group needs; the single place where actor options are decided."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 2  # a dead actor process is restarted (its constructor re-runs: the reducer restores)
    max_task_retries: int = 2  # a task lost with its actor is retried on the restarted actor
    threads: int | None = None
    py_modules: tuple[str, ...] = ()  # package URIs of modules shipped to the actor (upload_modules)
    # custom resources (e.g. {"ipg_rollout": 1}) that only some nodes declare: pins the actor to them
    resources: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # environment variables of this group's actors (over the forwarded ones)
    extra: dict = field(default_factory=dict)

    def bundle(self) -> dict[str, float]:
        base = {k: v for k, v in (("CPU", self.num_cpus), ("GPU", self.num_gpus)) if v}
        return {**base, **{k: float(v) for k, v in self.resources.items()}}


def actor_options(spec: ActorSpec, placement_group=None, bundle_index: int = -1) -> dict:
    options = dict(
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
        max_restarts=spec.max_restarts,
        max_task_retries=spec.max_task_retries,
        runtime_env=runtime_env(spec.threads, spec.py_modules, spec.env),
        **spec.extra,
    )
    if spec.resources:
        options["resources"] = {k: float(v) for k, v in spec.resources.items()}
    if placement_group is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=placement_group, placement_group_bundle_index=bundle_index
        )
    return options


def typed_constructor(cls):
    """``cls`` whose constructor's exception is kept and raised by the actor's first method call instead.
    A failing constructor reaches the driver as Ray's text only (ActorDiedError carries no exception
    object); a failing method call carries the worker's exception, typed (an InputError stays one). The
    actor stays up, so a constructor that can never succeed is not restarted in vain."""

    import functools
    import inspect

    def checked(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            error = self.__dict__.get("_constructor_error")
            if error is not None:
                raise error
            return method(self, *args, **kwargs)

        return call

    def __init__(self, *args, **kwargs):
        try:
            cls.__init__(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every constructor failure is re-raised by the next call
            self.__dict__["_constructor_error"] = e

    # Ray looks methods up on the class: each public one checks first
    methods = {
        name: checked(fn) for name, fn in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")
    }
    Actor = type(cls.__name__, (cls,), {"__init__": __init__, **methods})
    Actor.__qualname__, Actor.__doc__ = cls.__qualname__, cls.__doc__
    return Actor


class ActorGroup:
    """``n`` actors of one plain class, with their options; picked round-robin by shard number."""

    def __init__(
        self,
        cls,
        n: int,
        spec: ActorSpec,
        *args,
        placement_group=None,
        first_bundle: int = 0,
        per_actor: list[dict] | None = None,
        **kwargs,
    ):
        if n < 1:
            raise InputError(f"ray: a group of {cls.__name__} needs at least 1 actor, got {n}")
        remote_cls = ray.remote(typed_constructor(cls))
        self.name, self.spec = cls.__name__, spec
        self.actors = [
            remote_cls.options(
                **actor_options(spec, placement_group, first_bundle + i if placement_group else -1)
            ).remote(*args, **kwargs, **(per_actor[i] if per_actor else {}))
            for i in range(n)
        ]

    def __len__(self) -> int:
        return len(self.actors)

    def pick(self, k: int):
        return self.actors[k % len(self.actors)]

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)


def check_resources(groups: dict[str, tuple[int, ActorSpec]]) -> None:
    """Fail before placing actors when the cluster cannot hold them (they would wait forever). The
    error lists, per resource, what is needed and what each node has."""
    needed: dict[str, float] = {}
    for n, spec in groups.values():
        for k, v in spec.bundle().items():
            needed[k] = needed.get(k, 0.0) + n * v
    total = ray.cluster_resources()
    missing = {k: (v, total.get(k, 0.0)) for k, v in needed.items() if total.get(k, 0.0) < v - 1e-9}
    if missing:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        per_node = "; ".join(
            f"node {n['NodeManagerAddress']}: " + ", ".join(f"{k} {n['Resources'].get(k, 0.0):g}" for k in needed)
            for n in nodes
        )
        want = ", ".join(f"{name} {n} x {spec.bundle()}" for name, (n, spec) in groups.items())
        raise InputError(
            "ray: the cluster lacks resources for the actors: "
            + ", ".join(f"{k} needs {v:g}, has {h:g}" for k, (v, h) in missing.items())
            + f" (actors: {want}; {per_node}). Lower ray.rollout_workers / ray.gradient_workers or "
            "ray.cpus_per_actor / ray.gpus_per_actor, check that the nodes declare the custom resources of "
            "ray.rollout_resources / ray.gradient_resources, or add nodes"
        )


def reserve(groups: dict[str, tuple[int, ActorSpec]], strategy: str = "PACK", timeout_s: float = 120.0, log=None):
    """A placement group with one bundle per actor (in the order of ``groups``), ready or an error.
    Returns (placement group, {group name: first bundle index}). On a shared cluster other jobs may hold
    the resources: it waits up to ``timeout_s``, saying so in the log every 30 s."""
    import time

    from ray.util.placement_group import placement_group, remove_placement_group

    if strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise InputError(f"ray.placement_strategy: '{strategy}'; use PACK, SPREAD, STRICT_PACK or STRICT_SPREAD")
    check_resources(groups)
    bundles, first = [], {}
    for name, (n, spec) in groups.items():
        first[name] = len(bundles)
        bundles += [spec.bundle() or {"CPU": 0.001}] * n
    pg = placement_group(bundles, strategy=strategy)
    start = time.monotonic()
    while True:
        ready, _ = ray.wait([pg.ready()], timeout=min(30.0, max(0.0, timeout_s - (time.monotonic() - start))))
        if ready:
            return pg, first
        busy = _held_elsewhere(bundles)
        waited = time.monotonic() - start
        if waited >= timeout_s:
            break
        if log is not None:
            log(
                f"ray: waiting for the actors' resources ({waited:.0f} of ray.placement_timeout_s={timeout_s:g} s)"
                + (f": {busy}" if busy else "")
            )
    remove_placement_group(pg)
    if busy:
        raise InputError(
            f"ray.placement_timeout_s: the actors' resources stayed in use by other jobs for {timeout_s:g} s "
            f"({busy}); wait for them to end, raise ray.placement_timeout_s to queue behind them, or lower "
            "ray.rollout_workers / ray.gradient_workers / ray.cpus_per_actor"
        )
    raise InputError(
        f"ray.placement_strategy: {strategy} could not place {len(bundles)} bundles {bundles} within "
        f"{timeout_s:.0f} s (the resources exist but not in that shape); use PACK or SPREAD, or add nodes"
    )


def _held_elsewhere(bundles: list[dict]) -> str:
    """What of ``bundles``' resources the cluster has but other jobs hold now ('' when nothing is)."""
    needed: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            needed[k] = needed.get(k, 0.0) + v
    total, free = ray.cluster_resources(), ray.available_resources()
    short = {k: (v, free.get(k, 0.0), total.get(k, 0.0)) for k, v in needed.items() if free.get(k, 0.0) < v - 1e-9}
    return ", ".join(f"{k} needs {v:g}, {f:g} of {t:g} free" for k, (v, f, t) in short.items())
