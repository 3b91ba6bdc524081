"""The order of a Ray attribution's work (driver.orchestration.dispatch): pure logic, no Ray needed."""

import pytest

from ipg.driver.orchestration.dispatch import Dispatch, shard
from ipg.errors import InputError

pytestmark = pytest.mark.unit


def test_dispatch_hands_a_shard_only_to_a_free_group():
    d = Dispatch(["s0", "s1", "s2", "s3", "s4"], n_groups=2, lookahead=3)
    assert d.to_generate() == ["s0", "s1", "s2"]  # rollouts run ahead, up to the look-ahead
    assert d.to_generate() == []
    assert d.to_attribute() == [("s0", 0), ("s1", 1)]
    assert d.to_attribute() == []  # s2 waits: a shard queued behind a busy group could not move
    assert d.to_generate() == ["s3", "s4"]
    d.attributed("s1")  # group 1 finished first (s0 is the costly one)
    assert d.to_attribute() == [("s2", 1)]
    d.attributed("s2")
    assert d.to_attribute() == [("s3", 1)]  # group 1 again: group 0 is still on s0
    d.attributed("s0")
    d.attributed("s3")
    assert d.to_attribute() == [("s4", 0)] and not d.finished()
    d.attributed("s4")
    assert d.finished()
    ordered = Dispatch(["a", "b", "c", "d"], 1, lookahead=4)
    ordered.to_generate()
    assert ordered.to_attribute({"b": 5, "c": 9}) == [("c", 0)]  # done rollouts first, the costliest of them
    ordered.attributed("c")
    assert ordered.to_attribute({"b": 5}) == [("b", 0)]
    ordered.attributed("b")
    assert ordered.to_attribute({}) == [("a", 0)]  # none done: the oldest
    resumed = Dispatch(["a", "b", "c"], 1, lookahead=1, generated={"b"})  # b's rollouts came from the baseline pass
    assert resumed.to_generate() == [] and resumed.to_attribute() == [("b", 0)]
    resumed.attributed("b")
    assert resumed.to_generate() == ["a"] and resumed.to_attribute() == [("a", 0)]


def test_shards_are_deterministic_and_named_by_their_examples():
    examples = [{"id": f"e{i}"} for i in range(7)]
    parts = shard(examples, 3)
    assert [sid for sid, _ in parts] == ["shard-00000-e0..e2", "shard-00001-e3..e5", "shard-00002-e6..e6"]
    assert [ex for _, part in parts for ex in part] == examples
    with pytest.raises(InputError, match="ray.shard_size: must be >= 1"):
        shard(examples, 0)


def test_lost_work_is_handed_out_again_whole_and_a_lost_group_gets_none():
    d = Dispatch(["s0", "s1", "s2"], n_groups=2, lookahead=2)
    assert d.to_generate() == ["s0", "s1"] and d.to_attribute() == [("s0", 0), ("s1", 1)]
    d.retry("s1")  # its group's actor died with it: rollouts again, before the shards not started yet
    assert d.attributing == ["s0"] and d.to_generate() == ["s1", "s2"] and d.to_attribute() == [("s1", 1)]
    d.lose_group(1)  # a ZeRO-3 group that lost a rank
    d.retry("s1", delay=4.0, now=100.0)  # handed out again after its backoff; the others go on meanwhile
    assert d.backing_off(now=103.0) and d.to_generate(now=103.0) == [] and not d.backing_off(now=104.0)
    assert d.live_groups() == 1 and d.to_generate(now=104.0) == ["s1"] and d.to_attribute() == []  # group 0 is busy
    d.attributed("s0")
    assert d.to_attribute({"s2": 9}) == [("s2", 0)]  # the costlier of the done ones
    d.attributed("s2")
    assert d.to_attribute() == [("s1", 0)]
    d.attributed("s1")
    assert d.finished() and d.free == [0]
