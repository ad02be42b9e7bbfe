"""Tests of tether_sync.subscription.Ring: a bounded FIFO with overflow policies."""

from __future__ import annotations

from typing import List

import pytest

from tether_sync.subscription import Ring


def filled(capacity: int, overflow: str, n: int) -> Ring[int]:
    ring: Ring[int] = Ring(capacity, overflow)
    for i in range(n):
        ring.push(i)
    return ring


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Ring(capacity)


def test_default_policy_is_drop_oldest() -> None:
    assert Ring(3).overflow == "drop-oldest"


def test_fifo_order_below_capacity() -> None:
    ring: Ring[str] = Ring(5)
    assert ring.push("a") == []
    assert ring.push("b") == []
    assert ring.push("c") == []
    assert list(ring) == ["a", "b", "c"]
    assert ring.peek() == "a"
    assert [ring.pop(), ring.pop(), ring.pop()] == ["a", "b", "c"]


def test_len_bool_full() -> None:
    ring: Ring[int] = Ring(2)
    assert len(ring) == 0 and not ring and not ring.full
    ring.push(1)
    assert len(ring) == 1 and ring and not ring.full
    ring.push(2)
    assert len(ring) == 2 and ring.full


def test_pop_and_peek_on_empty_raise_index_error() -> None:
    ring: Ring[int] = Ring(1)
    with pytest.raises(IndexError):
        ring.pop()
    with pytest.raises(IndexError):
        ring.peek()


def test_drop_oldest_evicts_one_per_push() -> None:
    ring = filled(3, "drop-oldest", 3)
    assert ring.push(3) == [0]
    assert ring.push(4) == [1]
    assert list(ring) == [2, 3, 4]
    assert len(ring) == 3


def test_sample_oldest_evicts_the_two_oldest() -> None:
    ring = filled(4, "sample-oldest", 4)
    assert ring.push(4) == [0, 1]
    assert list(ring) == [2, 3, 4]
    assert ring.push(5) == []  # there is room again after a double eviction
    assert ring.push(6) == [2, 3]
    assert list(ring) == [4, 5, 6]


def test_sample_oldest_with_capacity_one() -> None:
    ring = filled(1, "sample-oldest", 1)
    assert ring.push(1) == [0]
    assert list(ring) == [1]


@pytest.mark.parametrize("policy", ["drop-newest", "reject", "block"])
def test_refusing_policies_return_the_newcomer_and_keep_the_ring(policy: str) -> None:
    ring = filled(3, policy, 3)
    assert ring.push(99) == [99]
    assert list(ring) == [0, 1, 2]
    assert ring.full


def test_drop_counts_over_many_pushes() -> None:
    dropped: List[int] = []
    ring: Ring[int] = Ring(10, "drop-oldest")
    for i in range(100):
        dropped.extend(ring.push(i))
    assert dropped == list(range(90))
    assert list(ring) == list(range(90, 100))


def test_push_front_restores_order_and_ignores_the_bound() -> None:
    ring = filled(3, "drop-oldest", 3)
    ring.push_front([-2, -1])
    assert list(ring) == [-2, -1, 0, 1, 2]
    assert len(ring) == 5
    assert ring.full
    # Over the bound, a push still applies the policy to the oldest.
    assert ring.push(3) == [-2]


def test_push_front_empty_list_is_a_no_op() -> None:
    ring = filled(2, "reject", 1)
    ring.push_front([])
    assert list(ring) == [0]


def test_drain_returns_everything_oldest_first_and_empties() -> None:
    ring = filled(4, "drop-oldest", 6)
    assert ring.drain() == [2, 3, 4, 5]
    assert len(ring) == 0 and not ring
    assert ring.drain() == []


def test_ring_holds_any_object_including_falsy_ones() -> None:
    ring: Ring[object] = Ring(3)
    for item in (None, 0, ""):
        assert ring.push(item) == []
    assert len(ring) == 3
    assert ring.pop() is None
