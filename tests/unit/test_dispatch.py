"""Tests of tether_sync.engine.dispatch: ThreadDispatcher and run_task.

Threads are waited for with Events and timeouts; nothing sleeps.
"""

from __future__ import annotations

import logging
import threading
from typing import Iterator, List, Tuple

import pytest

from tether_sync.engine.dispatch import ThreadDispatcher, run_task

WAIT = 5.0


class Errors:
    """An on_error hook that records what it is given."""

    def __init__(self) -> None:
        self.seen: List[BaseException] = []
        self.threads: List[threading.Thread] = []

    def __call__(self, exc: BaseException) -> None:
        self.seen.append(exc)
        self.threads.append(threading.current_thread())


@pytest.fixture
def errors() -> Errors:
    return Errors()


@pytest.fixture
def dispatcher(errors: Errors) -> Iterator[ThreadDispatcher]:
    d = ThreadDispatcher(errors, name="tether-test-dispatch")
    d.start()
    yield d
    assert d.stop(WAIT)


def barrier_task(d: ThreadDispatcher) -> threading.Event:
    """Queue a task that sets an Event; everything queued before it has run once it is set."""
    done = threading.Event()
    d(done.set)
    return done


def test_runs_tasks_in_fifo_order_on_its_own_thread(dispatcher: ThreadDispatcher) -> None:
    order: List[int] = []
    threads: List[threading.Thread] = []
    for i in range(200):
        dispatcher(lambda i=i: (order.append(i), threads.append(threading.current_thread())))
    assert barrier_task(dispatcher).wait(WAIT)
    assert order == list(range(200))
    assert dispatcher.thread is not None
    assert set(threads) == {dispatcher.thread}
    assert dispatcher.thread is not threading.current_thread()
    assert dispatcher.thread.name == "tether-test-dispatch"
    assert dispatcher.thread.daemon


def test_fifo_across_producer_threads(dispatcher: ThreadDispatcher) -> None:
    order: List[Tuple[int, int]] = []
    gate = threading.Barrier(4)

    def produce(p: int) -> None:
        gate.wait(WAIT)
        for i in range(100):
            dispatcher(lambda p=p, i=i: order.append((p, i)))

    producers = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join(WAIT)
    assert barrier_task(dispatcher).wait(WAIT)
    assert len(order) == 400
    for p in range(4):
        assert [i for q, i in order if q == p] == list(range(100))  # per-producer order kept


def test_raising_task_goes_to_on_error_and_dispatch_continues(
    dispatcher: ThreadDispatcher, errors: Errors, caplog: pytest.LogCaptureFixture
) -> None:
    ran: List[str] = []
    boom = ValueError("task failed")

    def bad() -> None:
        ran.append("bad")
        raise boom

    with caplog.at_level(logging.ERROR, logger="tether_sync"):
        dispatcher(lambda: ran.append("before"))
        dispatcher(bad)
        dispatcher(lambda: ran.append("after"))
        assert barrier_task(dispatcher).wait(WAIT)
    assert ran == ["before", "bad", "after"]
    assert errors.seen == [boom]
    assert errors.threads == [dispatcher.thread]
    assert any(r.exc_info and r.exc_info[1] is boom for r in caplog.records)


def test_raising_on_error_does_not_stop_dispatch(caplog: pytest.LogCaptureFixture) -> None:
    def on_error(exc: BaseException) -> None:
        raise RuntimeError("on_error failed too")

    d = ThreadDispatcher(on_error, name="tether-test-dispatch")
    d.start()
    ran: List[int] = []
    with caplog.at_level(logging.ERROR, logger="tether_sync"):
        d(lambda: 1 / 0)  # type: ignore[func-returns-value]
        d(lambda: ran.append(1))
        assert barrier_task(d).wait(WAIT)
    assert ran == [1]
    assert d.thread is not None and d.thread.is_alive()
    assert d.stop(WAIT)
    assert sum(1 for r in caplog.records if r.exc_info) == 2


def test_stop_runs_what_is_queued_then_joins(errors: Errors) -> None:
    d = ThreadDispatcher(errors, name="tether-test-dispatch")
    gate = threading.Event()
    ran: List[int] = []
    d.start()

    def hold() -> None:  # hold the thread until we have queued more
        gate.wait(WAIT)

    d(hold)
    for i in range(10):
        d(lambda i=i: ran.append(i))
    gate.set()
    assert d.stop(WAIT) is True
    assert ran == list(range(10))
    assert d.thread is not None and not d.thread.is_alive()


def test_tasks_after_stop_are_ignored(errors: Errors) -> None:
    d = ThreadDispatcher(errors, name="tether-test-dispatch")
    d.start()
    assert d.stop(WAIT)
    ran: List[int] = []
    d(lambda: ran.append(1))
    assert ran == []
    assert d.stop(WAIT) is True  # idempotent


def test_stop_before_start(errors: Errors) -> None:
    d = ThreadDispatcher(errors, name="tether-test-dispatch")
    assert d.thread is None
    assert d.stop(WAIT) is True


def test_start_is_idempotent(errors: Errors) -> None:
    d = ThreadDispatcher(errors, name="tether-test-dispatch")
    d.start()
    first = d.thread
    d.start()
    assert d.thread is first
    assert d.stop(WAIT)


def test_stop_from_a_task_does_not_join_itself(errors: Errors) -> None:
    d = ThreadDispatcher(errors, name="tether-test-dispatch")
    d.start()
    result: List[bool] = []
    done = threading.Event()

    def stop_inside() -> None:
        result.append(d.stop(WAIT))
        done.set()

    d(stop_inside)
    assert done.wait(WAIT)
    assert result == [False]  # it could not join itself, and did not hang trying
    assert d.thread is not None
    d.thread.join(WAIT)
    assert not d.thread.is_alive()
    assert errors.seen == []


def test_stop_times_out_on_a_hung_task(errors: Errors) -> None:
    d = ThreadDispatcher(errors, name="tether-test-dispatch")
    release = threading.Event()
    entered = threading.Event()
    d.start()

    def hang() -> None:
        entered.set()
        release.wait(WAIT)

    d(hang)
    assert entered.wait(WAIT)
    assert d.stop(0.05) is False
    release.set()
    assert d.thread is not None
    d.thread.join(WAIT)
    assert not d.thread.is_alive()


def test_run_task_ok_and_failing(caplog: pytest.LogCaptureFixture) -> None:
    errors = Errors()
    ran: List[int] = []
    run_task(lambda: ran.append(1), errors)
    assert ran == [1] and errors.seen == []
    boom = KeyError("k")

    def bad() -> None:
        raise boom

    with caplog.at_level(logging.ERROR, logger="tether_sync"):
        run_task(bad, errors)
    assert errors.seen == [boom]
    assert errors.threads == [threading.current_thread()]


def test_run_task_survives_a_raising_on_error() -> None:
    def on_error(exc: BaseException) -> None:
        raise RuntimeError("again")

    run_task(lambda: 1 / 0, on_error)  # type: ignore[func-returns-value]
