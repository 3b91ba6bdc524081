"""Errors from Ray actors as this project reports them: one line, the right class (input, item, fatal)."""

from __future__ import annotations

import ray

from ipg.cluster.errors import FatalError, ItemError, cause
from ipg.errors import InputError


def worker_error(exc: BaseException, what: str, starting: bool = False) -> BaseException:
    """A worker's error as the driver reports it: per-item and input errors as InputError (one line,
    naming shard and example), anything else as FatalError with its class. ``starting``: the actors'
    start-up (model loading), where a dead actor means its constructor failed, not a spent restart budget."""
    inner = cause(exc)
    if isinstance(inner, (ItemError, InputError)):
        return InputError(str(inner))
    if starting:  # constructors' errors arrive typed through the first call (cluster.ray_cluster.typed_constructor)
        return FatalError(f"{what}: {type(inner).__name__}: {inner}")
    if isinstance(exc, ray.exceptions.RayActorError):
        return FatalError(f"{what}: an actor died more often than its restart budget allows ({exc})")
    return FatalError(f"{what}: {type(inner).__name__}: {inner}")


def get(refs, what: str):
    """``ray.get``, with a worker's error re-raised as this project's error naming ``what``."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as e:
        raise worker_error(e, what) from None
