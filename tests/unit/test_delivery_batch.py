"""Tests of tether_sync.delivery.set_results, how the I/O thread resolves a batch.

It must do for each Delivery exactly what ``set_result()`` does (issue 22 made
it one lock hold per batch): wake waiters, hand callbacks to the Delivery's
dispatch, leave one already resolved alone, and lose no waiter or callback that
races it. Threads wait on Events and Barriers with timeouts; nothing sleeps.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List

import pytest

from tether_sync.delivery import Delivery, set_results

WAIT = 5.0  # seconds a test waits for something that should happen at once


def batch(n: int, **kwargs: Any) -> List[Delivery]:
    return [Delivery(f"m{i}", "chat", i, **kwargs) for i in range(n)]


def test_every_pending_one_is_done_and_a_failed_one_stays_failed() -> None:
    items = batch(5)
    failure = ValueError("refused")
    assert items[2].set_exception(failure)
    set_results(items)
    assert all(d.done() for d in items)
    assert [d.exception(0) for d in items] == [None, None, failure, None, None]
    for d in items[:2] + items[3:]:
        assert d.result(0) is None
    assert items[0].set_result() is False  # already resolved, as after set_result()


def test_a_batch_longer_than_one_lock_hold_resolves_whole() -> None:
    tasks: List[Callable[[], None]] = []
    items = batch(2500, dispatch=tasks.append)  # over two holds of 1,024
    ran: List[int] = []
    for d in items[1020:1030] + items[-3:]:
        d.add_done_callback(lambda d: ran.append(d.payload))
    set_results(items)
    assert all(d.done() and d.exception(0) is None for d in items)
    for task in tasks:
        task()
    assert ran == [*range(1020, 1030), 2497, 2498, 2499]


def test_an_empty_batch_does_nothing() -> None:
    set_results([])


def test_waiters_on_other_threads_wake() -> None:
    items = batch(3)
    started = threading.Barrier(len(items) + 1)
    woke: List[Any] = []

    def wait(d: Delivery) -> None:
        started.wait(WAIT)
        woke.append(d.result(WAIT))

    threads = [threading.Thread(target=wait, args=(d,), daemon=True) for d in items]
    for t in threads:
        t.start()
    started.wait(WAIT)
    set_results(items)
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert woke == [None, None, None]


def test_callbacks_go_to_each_deliverys_dispatch_in_order() -> None:
    tasks: List[Callable[[], None]] = []
    items = batch(4, dispatch=tasks.append)
    ran: List[int] = []
    for d in items[1:3]:
        d.add_done_callback(lambda d: ran.append(d.payload))
    set_results(items)
    assert not ran  # handed over, not run on the resolving thread
    assert len(tasks) == 2
    for task in tasks:
        task()
    assert ran == [1, 2]


def test_without_a_dispatch_callbacks_run_where_resolved() -> None:
    items = batch(2)
    ran: List[Delivery] = []
    items[1].add_done_callback(ran.append)
    set_results(items)
    assert ran == [items[1]]
    items[0].add_done_callback(ran.append)  # after: at once, as ever
    assert ran == [items[1], items[0]]


@pytest.mark.timeout(120)
def test_callbacks_and_waiters_racing_a_batch_each_run_once() -> None:
    """A thread adds callbacks and waits while the batch is resolved: none lost, none twice."""
    for i in range(300):
        items = batch(8)
        gate = threading.Barrier(2)
        calls: List[int] = []
        results: List[Any] = []

        def race(
            items: List[Delivery] = items,
            gate: threading.Barrier = gate,
            calls: List[int] = calls,
            results: List[Any] = results,
        ) -> None:
            gate.wait(WAIT)
            for d in items:
                d.add_done_callback(lambda d, out=calls: out.append(d.payload))
            results.append(items[-1].result(WAIT))

        thread = threading.Thread(target=race, daemon=True)
        thread.start()
        gate.wait(WAIT)
        set_results(items)
        thread.join(WAIT)
        assert not thread.is_alive(), f"iteration {i}: waiter still blocked"
        assert results == [None]
        assert sorted(calls) == list(range(8)), f"iteration {i}: {calls!r}"
