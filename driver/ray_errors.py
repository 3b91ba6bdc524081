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
    if lost_work(exc):
        return FatalError(f"{what}: {lost_what(exc)}")
    return FatalError(f"{what}: {type(inner).__name__}: {inner}")


# what a dead actor, process or node raises: the work was lost, not wrong, and doing it again can succeed
_LOST = tuple(getattr(ray.exceptions, name) for name in (
    "RayActorError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
    "OwnerDiedError", "ObjectReconstructionFailedError", "LocalRayletDiedError") if hasattr(ray.exceptions, name))


def lost_work(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error inside it) means lost work: an actor, worker or node died."""
    return isinstance(exc, _LOST) or isinstance(cause(exc), _LOST)


def lost_what(exc: BaseException) -> str:
    """One line on what was lost: the error's class and the first line of Ray's message."""
    inner = cause(exc)
    inner = inner if isinstance(inner, _LOST) else exc
    text = (getattr(inner, "error_msg", None) or str(inner)).strip()
    return f"{type(inner).__name__}: {text.splitlines()[0] if text else 'lost'}"


def get(refs, what: str):
    """``ray.get``, with a worker's error re-raised as this project's error naming ``what``."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as e:
        raise worker_error(e, what) from None
