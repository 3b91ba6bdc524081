"""Errors from Ray actors as this project reports them: one line, the right class (input, item, fatal)."""

from __future__ import annotations

import re

import ray

from ipg.cluster.errors import FatalError, ItemError, cause, chain
from ipg.errors import InputError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the process name on a terminal


def worker_error(exc: BaseException, what: str, starting: bool = False) -> BaseException:
    """A worker's error as the driver reports it: per-item and input errors as InputError (one line,
    naming shard and example), anything else as FatalError with its class. ``starting``: the actors'
    start-up (model loading), where a dead actor means its constructor failed, not a spent restart budget.

    Nothing of the worker's error is dropped: the returned error's ``original`` is the worker's own exception,
    typed, with its message; ``where`` says where it was raised (the actor and method, node and process, and
    the worker's traceback), also added to ``original`` as a note. Raise it ``from`` its ``original`` (``raise
    err from err.original``), so that ``--debug`` and any traceback show the chain down to the worker's line."""
    inner = cause(exc)
    if isinstance(inner, (ItemError, InputError)):
        err = InputError(str(inner))
    elif not starting and lost_work(exc):
        err = FatalError(f"{what}: {lost_what(exc)}")
    else:  # constructors' errors arrive typed through the first call (cluster.ray_cluster.typed_constructor)
        err = FatalError(f"{what}: {type(inner).__name__}: {inner}")
    err.original, err.where = inner, where_raised(exc)
    if err.where and inner is not exc and err.where not in getattr(inner, "__notes__", []):
        inner.add_note(err.where)
    return err


def where_raised(exc: BaseException) -> str:
    """Where a worker raised: the innermost Ray task error's process (actor and method), pid, node and the
    worker's own traceback, as Ray formats them ('' when ``exc`` carries none, e.g. a lost node). Ray delivers
    a task error as an instance of both RayTaskError and the worker's exception class, which keeps no fields
    but its text: that text is read."""
    task = next((e for e in reversed(chain(exc)) if isinstance(e, ray.exceptions.RayTaskError)), None)
    if task is None:
        return ""
    return "raised in " + _ANSI.sub("", str(task)).strip()


# what a dead actor, process or node raises: the work was lost, not wrong, and doing it again can succeed
_LOST = tuple(
    getattr(ray.exceptions, name)
    for name in (
        "RayActorError",
        "ActorUnavailableError",
        "WorkerCrashedError",
        "NodeDiedError",
        "ObjectLostError",
        "OwnerDiedError",
        "ObjectReconstructionFailedError",
        "LocalRayletDiedError",
    )
    if hasattr(ray.exceptions, name)
)


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
        err = worker_error(e, what)
        raise err from err.original
