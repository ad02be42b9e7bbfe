"""Tests of tether_sync.delivery.Delivery, the lazy future ``send()`` returns.

Threads wait on Events with timeouts; nothing sleeps.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, List, Optional

import pytest

from tether_sync.delivery import Delivery
from tether_sync.exceptions import ClientClosed, QueueFull

WAIT = 5.0  # seconds a test waits for something that should happen at once


def make(msg_id: str = "m1") -> Delivery:
    return Delivery(msg_id, "chat", {"n": 1})


class Waiter(threading.Thread):
    """Calls ``delivery.result(timeout)`` on its own thread and records the outcome."""

    def __init__(self, delivery: Delivery, timeout: float = WAIT) -> None:
        super().__init__(daemon=True)
        self.delivery = delivery
        self.timeout = timeout
        self.started_waiting = threading.Event()
        self.finished = threading.Event()
        self.error: Optional[BaseException] = None
        self.returned = False

    def run(self) -> None:
        self.started_waiting.set()
        try:
            self.delivery.result(self.timeout)
            self.returned = True
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()


def test_attributes_and_pending_state() -> None:
    d = Delivery("id-7", "news", [1, 2])
    assert (d.id, d.channel, d.payload) == ("id-7", "news", [1, 2])
    assert not d.done()
    assert d.running()
    assert not d.cancelled()
    assert d.cancel() is False
    assert "pending" in repr(d) and "id-7" in repr(d)


def test_set_result() -> None:
    d = make()
    assert d.set_result() is True
    assert d.done() and not d.running()
    assert d.result() is None
    assert d.result(timeout=0) is None
    assert d.exception() is None
    assert "done" in repr(d)


def test_set_exception() -> None:
    d = make()
    exc = QueueFull("dropped by queue overflow 'drop-oldest'")
    assert d.set_exception(exc) is True
    assert d.done()
    with pytest.raises(QueueFull) as info:
        d.result(timeout=0)
    assert info.value is exc
    assert d.exception(timeout=0) is exc
    assert "failed" in repr(d)


def test_first_resolution_wins() -> None:
    d = make()
    assert d.set_result() is True
    assert d.set_exception(ClientClosed("late")) is False
    assert d.set_result() is False
    assert d.exception() is None
    d2 = make()
    first = ClientClosed("first")
    assert d2.set_exception(first) is True
    assert d2.set_result() is False
    assert d2.set_exception(ClientClosed("second")) is False
    assert d2.exception() is first


def test_result_times_out() -> None:
    d = make()
    with pytest.raises(TimeoutError):
        d.result(timeout=0.05)
    with pytest.raises(TimeoutError):
        d.exception(timeout=0.0)
    assert not d.done()
    d.set_result()  # still resolvable after a waiter gave up
    assert d.result(timeout=0) is None


def test_waiter_on_another_thread_wakes_on_set_result() -> None:
    d = make()
    waiter = Waiter(d)
    waiter.start()
    assert waiter.started_waiting.wait(WAIT)
    d.set_result()
    assert waiter.finished.wait(WAIT)
    waiter.join(WAIT)
    assert waiter.returned and waiter.error is None


def test_waiter_on_another_thread_wakes_on_set_exception() -> None:
    d = make()
    waiter = Waiter(d)
    waiter.start()
    assert waiter.started_waiting.wait(WAIT)
    d.set_exception(ClientClosed("client closed"))
    assert waiter.finished.wait(WAIT)
    waiter.join(WAIT)
    assert isinstance(waiter.error, ClientClosed)


def test_many_waiters_all_wake() -> None:
    d = make()
    waiters = [Waiter(d) for _ in range(8)]
    for w in waiters:
        w.start()
    for w in waiters:
        assert w.started_waiting.wait(WAIT)
    d.set_result()
    for w in waiters:
        assert w.finished.wait(WAIT)
        w.join(WAIT)
        assert w.returned


def test_waiter_times_out_on_its_own_thread() -> None:
    d = make()
    waiter = Waiter(d, timeout=0.05)
    waiter.start()
    assert waiter.finished.wait(WAIT)
    waiter.join(WAIT)
    assert isinstance(waiter.error, TimeoutError)


def test_callback_added_before_resolution_runs_on_resolution() -> None:
    d = make()
    seen: List[Delivery] = []
    d.add_done_callback(seen.append)
    d.add_done_callback(seen.append)
    assert seen == []
    d.set_result()
    assert seen == [d, d]
    d.set_exception(ClientClosed("late"))  # no second run
    assert seen == [d, d]


def test_callback_added_after_resolution_runs_at_once() -> None:
    d = make()
    d.set_exception(ClientClosed("closed"))
    seen: List[Optional[BaseException]] = []
    d.add_done_callback(lambda fut: seen.append(fut.exception()))
    assert len(seen) == 1 and isinstance(seen[0], ClientClosed)


def test_callback_runs_on_the_resolving_thread() -> None:
    d = make()
    ran_on: List[threading.Thread] = []
    d.add_done_callback(lambda _: ran_on.append(threading.current_thread()))
    resolver = threading.Thread(target=d.set_result, daemon=True)
    resolver.start()
    resolver.join(WAIT)
    assert ran_on == [resolver]


def test_raising_callback_is_logged_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    d = make()
    seen: List[str] = []

    def bad(_: Delivery) -> None:
        seen.append("bad")
        raise RuntimeError("callback exploded")

    d.add_done_callback(bad)
    d.add_done_callback(lambda _: seen.append("good"))
    with caplog.at_level(logging.ERROR, logger="tether_sync"):
        assert d.set_result() is True
    assert seen == ["bad", "good"]
    assert d.result(timeout=0) is None
    records = [r for r in caplog.records if r.name == "tether_sync"]
    assert records and records[0].exc_info is not None
    assert "callback exploded" in str(records[0].exc_info[1])
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="tether_sync"):
        d.add_done_callback(bad)  # after resolution: runs at once, still not propagated
    assert seen[-1] == "bad"
    assert any(r.exc_info for r in caplog.records)


def test_resolve_vs_wait_race_1000_times() -> None:
    """A waiter and a callback race the resolver; every one must finish."""
    finished = 0
    for i in range(1000):
        d = make(f"m{i}")
        barrier = threading.Barrier(2)
        outcome: List[Any] = []
        called = threading.Event()

        def wait(
            delivery: Delivery = d, gate: threading.Barrier = barrier, out: List[Any] = outcome
        ) -> None:
            gate.wait(WAIT)
            try:
                out.append(delivery.result(timeout=WAIT))
            except BaseException as exc:  # recorded and asserted below
                out.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        barrier.wait(WAIT)
        if i % 2:
            d.add_done_callback(lambda _, ev=called: ev.set())
            d.set_result()
        else:
            d.set_result()
            d.add_done_callback(lambda _, ev=called: ev.set())
        waiter.join(WAIT)
        assert not waiter.is_alive(), f"iteration {i}: waiter still blocked"
        assert outcome == [None], f"iteration {i}: {outcome!r}"
        assert called.wait(WAIT)
        finished += 1
    assert finished == 1000


def test_add_callback_vs_resolve_race_runs_each_callback_once() -> None:
    for i in range(300):
        d = make(f"m{i}")
        barrier = threading.Barrier(2)
        calls: List[int] = []

        def add(
            delivery: Delivery = d, gate: threading.Barrier = barrier, out: List[int] = calls
        ) -> None:
            gate.wait(WAIT)
            for k in range(5):
                delivery.add_done_callback(lambda _, k=k: out.append(k))

        adder = threading.Thread(target=add, daemon=True)
        adder.start()
        barrier.wait(WAIT)
        d.set_result()
        adder.join(WAIT)
        assert not adder.is_alive()
        assert sorted(calls) == [0, 1, 2, 3, 4], f"iteration {i}: {calls!r}"


def test_without_an_id_the_id_is_the_envelopes() -> None:
    from tether_sync.protocol.envelope import encode_data

    data = encode_data('ch"an', {"id": "inner"}, "abc-123").encode()
    d = Delivery(None, 'ch"an', {"id": "inner"}, data=data)
    assert d.id == "abc-123"
    assert "abc-123" in repr(d)


def test_a_queued_delivery_is_small() -> None:
    import sys

    # Issue 22: 8 slots (a queued 64 B tether message costs at most 300 B in all).
    assert sys.getsizeof(Delivery(None, "c", 1)) <= 96  # was 120 with 11 slots


def test_callbacks_run_on_the_dispatch_given_even_after_a_waiter_came() -> None:
    ran: List[Any] = []
    d = Delivery("m", "c", 1, dispatch=lambda task: ran.append(task))
    with pytest.raises(TimeoutError):
        d.result(timeout=0.001)  # a waiter made its condition
    got: List[Delivery] = []
    d.add_done_callback(got.append)
    assert d.set_result()
    assert len(ran) == 1 and not got  # handed to the dispatcher, not run here
    ran[0]()
    assert got == [d]
    d2 = Delivery("m2", "c", 1, dispatch=lambda task: ran.append(task))
    d2._dispatch = None  # as after a fork: run where resolved
    d2.add_done_callback(got.append)
    d2.set_exception(ValueError("x"))
    assert got == [d, d2] and isinstance(d2.exception(), ValueError)
