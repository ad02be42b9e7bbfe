"""Tests of tether_sync.engine.timers.TimerHeap: named one-shot timers, time passed in."""

from __future__ import annotations

from tether_sync.engine.timers import TimerHeap


def test_empty_heap() -> None:
    timers = TimerHeap()
    assert timers.timeout(0.0) is None
    assert timers.pop_due(1e9) == []
    assert not timers.scheduled("x")
    assert timers.when("x") is None


def test_timeout_is_time_to_the_earliest_timer() -> None:
    timers = TimerHeap()
    timers.schedule(15.0, "heartbeat")
    timers.schedule(12.5, "backoff")
    timers.schedule(30.0, "refresh")
    assert timers.timeout(10.0) == 2.5
    assert timers.timeout(12.5) == 0.0
    assert timers.timeout(100.0) == 0.0  # overdue: never negative


def test_pop_due_returns_due_names_earliest_first() -> None:
    timers = TimerHeap()
    timers.schedule(3.0, "c")
    timers.schedule(1.0, "a")
    timers.schedule(2.0, "b")
    timers.schedule(9.0, "later")
    assert timers.pop_due(0.5) == []
    assert timers.pop_due(3.0) == ["a", "b", "c"]  # due at exactly `now` is due
    assert timers.pop_due(3.0) == []
    assert timers.scheduled("later") and not timers.scheduled("a")
    assert timers.timeout(3.0) == 6.0
    assert timers.pop_due(10.0) == ["later"]
    assert timers.timeout(10.0) is None


def test_equal_times_pop_in_scheduling_order() -> None:
    timers = TimerHeap()
    for name in ("z", "y", "x"):
        timers.schedule(5.0, name)
    assert timers.pop_due(5.0) == ["z", "y", "x"]


def test_rescheduling_a_name_replaces_its_timer() -> None:
    timers = TimerHeap()
    timers.schedule(1.0, "heartbeat")
    timers.schedule(10.0, "heartbeat")
    assert timers.when("heartbeat") == 10.0
    assert timers.timeout(0.0) == 10.0  # the stale entry at 1.0 no longer counts
    assert timers.pop_due(5.0) == []
    assert timers.pop_due(10.0) == ["heartbeat"]
    assert timers.pop_due(20.0) == []


def test_rescheduling_earlier_replaces_too() -> None:
    timers = TimerHeap()
    timers.schedule(10.0, "t")
    timers.schedule(2.0, "t")
    assert timers.pop_due(2.0) == ["t"]
    assert timers.pop_due(10.0) == []  # the old entry does not fire a second time


def test_cancel() -> None:
    timers = TimerHeap()
    timers.schedule(1.0, "a")
    timers.schedule(2.0, "b")
    timers.cancel("a")
    timers.cancel("never-scheduled")  # a no-op
    assert not timers.scheduled("a")
    assert timers.when("a") is None
    assert timers.timeout(0.0) == 2.0
    assert timers.pop_due(5.0) == ["b"]


def test_cancel_then_schedule_again() -> None:
    timers = TimerHeap()
    timers.schedule(1.0, "a")
    timers.cancel("a")
    timers.schedule(4.0, "a")
    assert timers.pop_due(3.0) == []
    assert timers.pop_due(4.0) == ["a"]


def test_cancel_all() -> None:
    timers = TimerHeap()
    for i, name in enumerate("abc"):
        timers.schedule(float(i), name)
    timers.cancel_all()
    assert timers.timeout(0.0) is None
    assert timers.pop_due(100.0) == []
    assert not any(timers.scheduled(n) for n in "abc")
    timers.schedule(1.0, "a")
    assert timers.pop_due(1.0) == ["a"]


def test_many_timers_with_churn_stay_consistent() -> None:
    timers = TimerHeap()
    for round_ in range(50):
        for i in range(20):
            timers.schedule(float(round_ * 100 + i), f"t{i}")
    # Only the last round's timers are live.
    assert timers.timeout(0.0) == 4900.0
    assert timers.pop_due(4909.0) == [f"t{i}" for i in range(10)]
    assert [timers.when(f"t{i}") for i in (10, 19)] == [4910.0, 4919.0]
    assert timers.pop_due(1e9) == [f"t{i}" for i in range(10, 20)]
