"""Error classes of a distributed run: fatal (stop the run) vs per-item (one example failed).

Workers raise ``ItemError`` when one example fails (its signal raised, a non-finite reward); the driver
applies the run's policy to it. Anything else a worker raises is fatal for the run. Both are plain
picklable exceptions, so they reach the driver intact inside Ray's task errors.
"""

from __future__ import annotations


class FatalError(RuntimeError):
    """The run cannot go on (a worker failed for a reason other than one bad example)."""


class ItemError(RuntimeError):
    """One example of one shard failed; names both so the user can find and fix it."""

    def __init__(self, shard_id: str, example_id: str, message: str):
        super().__init__(shard_id, example_id, message)
        self.shard_id, self.example_id, self.message = shard_id, example_id, message

    def __str__(self) -> str:
        return f"shard '{self.shard_id}', example '{self.example_id}': {self.message}"


def error_class(exc: BaseException) -> str:
    """'item' for per-example failures (anything carrying an ``example_id``), else 'fatal'."""
    return "item" if isinstance(exc, ItemError) or getattr(exc, "example_id", None) is not None else "fatal"


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors inside it, outermost first: a task error's cause, an actor's creation error,
    and the errors of tasks whose inputs failed (a chain of refs: rollouts -> gradient -> merge)."""
    out = [exc]
    for _ in range(32):  # chains are as long as the refs a result passed through
        inner = next(
            (
                i
                for i in (
                    getattr(exc, "cause", None),
                    getattr(getattr(exc, "creation_task_error", None), "cause", None),
                )
                if isinstance(i, BaseException) and i is not exc
            ),
            None,
        )
        if inner is None:
            break
        out.append(inner)
        exc = inner
    return out


def cause(exc: BaseException) -> BaseException:
    """The worker's own exception, typed, inside Ray's errors: the innermost of ``chain`` (or ``exc``)."""
    return chain(exc)[-1]
