"""A worker's error reaches the driver with its type, message and where it was raised (no Ray cluster:
Ray's own task error built here, as a failed actor call delivers it)."""

import pytest
import ray.exceptions

from ipg.cluster.errors import FatalError, ItemError
from ipg.driver.orchestration.ray_errors import worker_error
from ipg.errors import InputError

pytestmark = pytest.mark.unit

TRACEBACK = (
    "Traceback (most recent call last):\n  File \"workers/gradient.py\", line 90, in attribute\nKeyError: 'layers.9'"
)


def _task_error(cause: BaseException, actor="GradientWorker") -> ray.exceptions.RayTaskError:
    """As a failed call delivers it: an instance of both RayTaskError and the worker's exception class."""
    return ray.exceptions.RayTaskError(
        f"{actor}.attribute",
        TRACEBACK,
        cause,
        proctitle=f"ray::{actor}",
        pid=4242,
        ip="10.0.0.7",
        actor_repr=f"{actor}(organism)",
    ).as_instanceof_cause()


def test_a_fatal_error_keeps_the_workers_exception_and_where_it_was_raised():
    original = KeyError("layers.9")
    err = worker_error(_task_error(original), "shard 's3'")
    assert isinstance(err, FatalError) and str(err) == "shard 's3': KeyError: 'layers.9'"  # one line, as before
    assert err.original is original and isinstance(err.original, KeyError)  # typed, message intact
    assert err.where.startswith("raised in ray::GradientWorker() (pid=4242, ip=10.0.0.7") and "\x1b" not in err.where
    assert "GradientWorker(organism)" in err.where  # the actor, then the worker's own traceback
    assert "line 90, in attribute" in err.where and err.where in original.__notes__  # the worker's own line
    with pytest.raises(FatalError) as raised:
        raise err from err.original
    assert raised.value.__cause__ is original  # the chain --debug prints, down to the worker


def test_input_and_item_errors_stay_one_line_input_errors_with_their_origin():
    item = ItemError("s1", "ex7", "signal raised ValueError: bad answer")
    err = worker_error(_task_error(item, "RolloutWorker"), "rollouts")
    assert type(err) is InputError and str(err) == "shard 's1', example 'ex7': signal raised ValueError: bad answer"
    assert err.original is item and err.where.startswith("raised in ray::RolloutWorker()")


def test_an_error_without_a_task_has_no_place():
    lost = ray.exceptions.RayActorError()
    err = worker_error(lost, "shard 's0'")
    assert isinstance(err, FatalError) and str(err).startswith("shard 's0': RayActorError") and err.where == ""
