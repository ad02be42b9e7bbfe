"""Tests of tether_sync.subscription: InboundBuffer and Subscription.

Threads are waited for with Events and timeouts; nothing sleeps.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator, List, Optional

import pytest

from tether_sync.engine.dispatch import ThreadDispatcher
from tether_sync.exceptions import ClientClosed
from tether_sync.subscription import InboundBuffer, Subscription

WAIT = 5.0


class Counter:
    """A callable that counts its calls (an on_resume hook)."""

    def __init__(self) -> None:
        self.calls = 0
        self.event = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()


class Getter(threading.Thread):
    """Calls ``buffer.get(timeout)`` on its own thread and records the outcome."""

    def __init__(self, buffer: InboundBuffer, timeout: Optional[float] = WAIT) -> None:
        super().__init__(daemon=True)
        self.buffer = buffer
        self.timeout = timeout
        self.started_waiting = threading.Event()
        self.finished = threading.Event()
        self.item: Any = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        self.started_waiting.set()
        try:
            self.item = self.buffer.get(self.timeout)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished.set()


@pytest.fixture
def errors() -> List[BaseException]:
    return []


@pytest.fixture
def dispatcher(errors: List[BaseException]) -> Iterator[ThreadDispatcher]:
    d = ThreadDispatcher(errors.append, name="tether-test-dispatch")
    d.start()
    yield d
    assert d.stop(WAIT)


def settle(d: ThreadDispatcher) -> None:
    """Wait until every task queued on ``d`` so far has run."""
    done = threading.Event()
    d(done.set)
    assert done.wait(WAIT)


# -- queue mode ------------------------------------------------------------------


def test_offer_then_get_fifo() -> None:
    buf = InboundBuffer(10, "drop-oldest")
    for i in range(5):
        assert buf.offer(i) == (0, True)
    assert len(buf) == 5
    assert [buf.get(timeout=0) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert len(buf) == 0


def test_get_times_out() -> None:
    buf = InboundBuffer(4, "drop-oldest")
    with pytest.raises(TimeoutError):
        buf.get(timeout=0.05)
    with pytest.raises(TimeoutError):
        buf.get(timeout=0)


def test_blocked_get_wakes_on_offer_from_another_thread() -> None:
    buf = InboundBuffer(4, "drop-oldest")
    getter = Getter(buf)
    getter.start()
    assert getter.started_waiting.wait(WAIT)
    buf.offer("hello")
    assert getter.finished.wait(WAIT)
    getter.join(WAIT)
    assert getter.error is None and getter.item == "hello"


def test_a_batch_wakes_one_blocked_get_per_item() -> None:
    # Three consumers blocked in get(): one read of three items gives each one.
    buf = InboundBuffer(10, "drop-oldest")
    getters = [Getter(buf) for _ in range(3)]
    for g in getters:
        g.start()
    for g in getters:
        assert g.started_waiting.wait(WAIT)
    buf.offer_many(["a", "b", "c"])
    for g in getters:
        assert g.finished.wait(WAIT), "a consumer was not woken"
        g.join(WAIT)
    assert sorted(g.item for g in getters) == ["a", "b", "c"]
    assert all(g.error is None for g in getters)


def test_a_get_that_timed_out_leaves_no_stale_waiter_behind() -> None:
    # The first consumer gives up; the item that comes later goes to the one
    # still waiting, not to the waiter of the one that left.
    buf = InboundBuffer(10, "drop-oldest")
    quitter = Getter(buf, timeout=0.01)
    quitter.start()
    assert quitter.finished.wait(WAIT)
    quitter.join(WAIT)
    assert isinstance(quitter.error, TimeoutError)
    stayer = Getter(buf)
    stayer.start()
    assert stayer.started_waiting.wait(WAIT)
    buf.offer("late")
    assert stayer.finished.wait(WAIT), "the item's wake-up went to the consumer that left"
    stayer.join(WAIT)
    assert stayer.error is None and stayer.item == "late"


def test_close_wakes_a_blocked_get_with_client_closed() -> None:
    buf = InboundBuffer(4, "drop-oldest")
    getter = Getter(buf, timeout=None)
    getter.start()
    assert getter.started_waiting.wait(WAIT)
    buf.close()
    assert getter.finished.wait(WAIT)
    getter.join(WAIT)
    assert isinstance(getter.error, ClientClosed)


def test_close_wakes_every_blocked_get() -> None:
    buf = InboundBuffer(4, "drop-oldest")
    getters = [Getter(buf, timeout=None) for _ in range(5)]
    for g in getters:
        g.start()
    for g in getters:
        assert g.started_waiting.wait(WAIT)
    buf.close()
    for g in getters:
        assert g.finished.wait(WAIT)
        g.join(WAIT)
        assert isinstance(g.error, ClientClosed)


def test_items_left_at_close_are_still_returned_then_client_closed() -> None:
    buf = InboundBuffer(4, "drop-oldest")
    buf.offer("a")
    buf.offer("b")
    buf.close()
    buf.close()  # idempotent
    assert buf.closed
    assert buf.get(timeout=0) == "a"
    assert buf.get(timeout=0) == "b"
    with pytest.raises(ClientClosed):
        buf.get(timeout=0)
    with pytest.raises(ClientClosed):
        buf.get()  # no timeout: must not block on a closed, empty buffer


def test_offer_after_close_is_ignored() -> None:
    buf = InboundBuffer(4, "drop-oldest")
    buf.close()
    assert buf.offer("x") == (0, True)
    assert len(buf) == 0


# -- overflow policies -----------------------------------------------------------------


def test_drop_oldest_counts_drops() -> None:
    buf = InboundBuffer(3, "drop-oldest")
    results = [buf.offer(i) for i in range(7)]
    assert results == [(0, True)] * 3 + [(1, True)] * 4
    assert sum(d for d, _ in results) == 4
    assert [buf.get(timeout=0) for _ in range(3)] == [4, 5, 6]


def test_sample_oldest_drops_two_at_a_time() -> None:
    buf = InboundBuffer(4, "sample-oldest")
    results = [buf.offer(i) for i in range(6)]
    assert results == [(0, True)] * 4 + [(2, True), (0, True)]
    assert [buf.get(timeout=0) for _ in range(4)] == [2, 3, 4, 5]


def test_drop_newest_counts_drops_and_keeps_the_old() -> None:
    buf = InboundBuffer(3, "drop-newest")
    results = [buf.offer(i) for i in range(5)]
    assert results == [(0, True)] * 3 + [(1, True)] * 2
    assert [buf.get(timeout=0) for _ in range(3)] == [0, 1, 2]


def test_block_refuses_when_full_and_resumes_at_half() -> None:
    resume = Counter()
    buf = InboundBuffer(6, "block", on_resume=resume)
    for i in range(6):
        assert buf.offer(i) == (0, True)
    assert buf.offer(6) == (0, False)  # refused: the caller keeps it
    assert buf.offer(6) == (0, False)
    assert len(buf) == 6
    taken = []
    for expected_calls in (0, 0, 1):  # 5 left, 4 left, 3 left = low water (6 // 2)
        taken.append(buf.get(timeout=0))
        assert resume.calls == expected_calls
    taken.extend(buf.get(timeout=0) for _ in range(3))
    assert taken == [0, 1, 2, 3, 4, 5]
    assert resume.calls == 1  # once per refusal, not once per get


def test_block_without_refusal_never_resumes() -> None:
    resume = Counter()
    buf = InboundBuffer(4, "block", on_resume=resume)
    for i in range(4):
        buf.offer(i)
    for _ in range(4):
        buf.get(timeout=0)
    assert resume.calls == 0


def test_block_refuses_again_after_resume() -> None:
    resume = Counter()
    buf = InboundBuffer(2, "block", on_resume=resume)
    buf.offer(0)
    buf.offer(1)
    assert buf.offer(2) == (0, False)
    buf.get(timeout=0)  # 1 left = low water (2 // 2)
    assert resume.calls == 1
    assert buf.offer(2) == (0, True)
    assert buf.offer(3) == (0, False)
    buf.get(timeout=0)
    assert resume.calls == 2


def test_block_resume_is_called_on_the_consumer_thread() -> None:
    threads: List[threading.Thread] = []
    resumed = threading.Event()

    def on_resume() -> None:
        threads.append(threading.current_thread())
        resumed.set()

    buf = InboundBuffer(2, "block", on_resume=on_resume)
    buf.offer(0)
    buf.offer(1)
    assert buf.offer(2) == (0, False)
    getter = Getter(buf)
    getter.start()
    assert resumed.wait(WAIT)
    getter.join(WAIT)
    assert threads == [getter]


# -- callback mode ---------------------------------------------------------------------


def test_callback_mode_runs_callbacks_in_order_on_the_dispatcher(
    dispatcher: ThreadDispatcher, errors: List[BaseException]
) -> None:
    got: List[int] = []
    threads: List[threading.Thread] = []
    all_in = threading.Event()

    def callback(item: int) -> None:
        got.append(item)
        threads.append(threading.current_thread())
        if len(got) == 300:
            all_in.set()

    buf = InboundBuffer(1000, "drop-oldest", callback=callback, dispatch=dispatcher)
    for i in range(300):
        assert buf.offer(i) == (0, True)
    assert all_in.wait(WAIT)
    assert got == list(range(300))
    assert set(threads) == {dispatcher.thread}
    assert errors == []


def test_callback_mode_raising_callback_calls_on_error_and_continues(
    dispatcher: ThreadDispatcher,
) -> None:
    got: List[int] = []
    reported: List[BaseException] = []
    done = threading.Event()

    def callback(item: int) -> None:
        got.append(item)
        if item == 9:
            done.set()
        if item % 4 == 0:
            raise ValueError(f"bad item {item}")

    buf = InboundBuffer(
        100, "drop-oldest", callback=callback, dispatch=dispatcher, on_error=reported.append
    )
    for i in range(10):
        buf.offer(i)
    assert done.wait(WAIT)
    settle(dispatcher)
    assert got == list(range(10))
    assert [str(e) for e in reported] == ["bad item 0", "bad item 4", "bad item 8"]


def test_callback_mode_keeps_working_after_the_buffer_empties(
    dispatcher: ThreadDispatcher,
) -> None:
    got: List[str] = []
    buf = InboundBuffer(10, "drop-oldest", callback=got.append, dispatch=dispatcher)
    buf.offer("a")
    settle(dispatcher)
    buf.offer("b")
    settle(dispatcher)
    assert got == ["a", "b"]


def test_callback_mode_drops_while_a_slow_callback_runs(dispatcher: ThreadDispatcher) -> None:
    release = threading.Event()
    entered = threading.Event()
    got: List[int] = []

    def callback(item: int) -> None:
        entered.set()
        release.wait(WAIT)
        got.append(item)

    buf = InboundBuffer(3, "drop-oldest", callback=callback, dispatch=dispatcher)
    buf.offer(0)
    assert entered.wait(WAIT)  # item 0 taken; the callback is stuck in it
    dropped = sum(buf.offer(i)[0] for i in range(1, 7))
    assert dropped == 3
    release.set()
    settle(dispatcher)
    assert got == [0, 4, 5, 6]


def test_callback_mode_block_resumes_from_the_drain() -> None:
    tasks: List[Callable[[], None]] = []
    resume = Counter()
    got: List[int] = []
    depth_at_resume: List[int] = []

    def on_resume() -> None:
        depth_at_resume.append(len(buf))
        resume()

    buf = InboundBuffer(4, "block", callback=got.append, dispatch=tasks.append, on_resume=on_resume)
    assert [buf.offer(i) for i in range(5)] == [(0, True)] * 4 + [(0, False)]
    assert len(tasks) == 1 and resume.calls == 0
    tasks.pop()()  # the drain, run here in place of a dispatcher thread
    assert got == [0, 1, 2, 3]
    assert resume.calls == 1
    assert depth_at_resume == [2]  # resumed at the low-water mark, not when empty
    assert buf.offer(4) == (0, True)


def test_close_stops_callback_delivery(dispatcher: ThreadDispatcher) -> None:
    got: List[int] = []
    buf = InboundBuffer(10, "drop-oldest", callback=got.append, dispatch=dispatcher)
    buf.close()
    buf.offer(1)
    settle(dispatcher)
    assert got == []


def test_dispatch_function_receives_one_drain_per_burst() -> None:
    tasks: List[Callable[[], None]] = []
    got: List[int] = []
    buf = InboundBuffer(10, "drop-oldest", callback=got.append, dispatch=tasks.append)
    for i in range(5):
        buf.offer(i)
    assert len(tasks) == 1  # one drain task is scheduled, not one per item
    tasks.pop()()
    assert got == [0, 1, 2, 3, 4]
    buf.offer(5)
    assert len(tasks) == 1
    tasks.pop()()
    assert got == [0, 1, 2, 3, 4, 5]


def test_callback_mode_survives_a_raising_on_error() -> None:
    tasks: List[Callable[[], None]] = []
    got: List[int] = []

    def callback(item: int) -> None:
        got.append(item)
        if item == 0:
            raise ValueError("bad payload")

    def on_error(exc: BaseException) -> None:
        raise RuntimeError("error handler failed too")

    buf = InboundBuffer(
        10, "drop-oldest", callback=callback, dispatch=tasks.append, on_error=on_error
    )
    buf.offer(0)
    tasks.pop()()  # the failing error handler is logged, not propagated
    buf.offer(1)
    assert len(tasks) == 1, "no drain was scheduled for the next item"
    tasks.pop()()
    assert got == [0, 1]


# -- Subscription ------------------------------------------------------------------------


def test_subscription_queue_api() -> None:
    unsubscribed: List[Subscription] = []

    def unsubscribe(sub: Subscription) -> None:
        unsubscribed.append(sub)
        sub._buffer.close()

    buf = InboundBuffer(4, "drop-oldest")
    sub = Subscription("news", buf, unsubscribe)
    assert sub.channel == "news" and sub.callback is None
    assert sub.active and sub.depth == 0
    assert "news" in repr(sub) and "active" in repr(sub)
    buf.offer({"n": 1})
    buf.offer({"n": 2})
    assert sub.depth == 2
    assert sub.get(timeout=0) == {"n": 1}
    with sub:
        pass
    assert unsubscribed == [sub]
    assert not sub.active and "closed" in repr(sub)
    assert list(sub) == [{"n": 2}]  # iteration drains what is left, then ends
    with pytest.raises(ClientClosed):
        sub.get(timeout=0)


def test_subscription_iteration_ends_when_closed_from_another_thread() -> None:
    buf = InboundBuffer(10, "drop-oldest")
    sub = Subscription("news", buf, lambda s: s._buffer.close())
    got: List[Any] = []
    done = threading.Event()

    def consume() -> None:
        for payload in sub:
            got.append(payload)
            if payload == 2:
                sub.unsubscribe()
        done.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    for i in range(3):
        buf.offer(i)
    assert done.wait(WAIT)
    consumer.join(WAIT)
    assert got == [0, 1, 2]


def test_subscription_with_callback_keeps_it() -> None:
    def callback(payload: Any) -> None:
        pass

    sub = Subscription("chat", InboundBuffer(2, "drop-oldest"), lambda s: None, callback)
    assert sub.callback is callback
