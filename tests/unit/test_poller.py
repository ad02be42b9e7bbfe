"""The poller: wake-ups, readiness and registration, with epoll and with selectors."""

from __future__ import annotations

import socket
from typing import Iterator, Tuple

import pytest

from tether_sync.engine.poller import READ, WRITE, Poller
from tether_sync.engine.transport import Link

BACKENDS = [pytest.param(True, id="epoll"), pytest.param(False, id="selectors")]
if not hasattr(__import__("select"), "epoll"):
    BACKENDS = BACKENDS[1:]


@pytest.fixture
def pair() -> Iterator[Tuple[Link, socket.socket]]:
    ours, peer = socket.socketpair()
    link = Link(ours, "ws://test/", 1 << 20)
    yield link, peer
    link.close()
    peer.close()


@pytest.mark.parametrize("epoll", BACKENDS)
def test_a_wake_returns_at_once_and_is_consumed(epoll: bool) -> None:
    poller = Poller(epoll=epoll)
    try:
        assert poller.wait(0) == []
        poller.wake()
        poller.wake()
        assert poller.wait(5.0) == []  # returned: the wake byte, not the timeout
        assert poller.wait(0) == []  # consumed: nothing left to report
    finally:
        poller.close()


@pytest.mark.parametrize("epoll", BACKENDS)
def test_readiness_follows_the_registration(epoll: bool, pair: Tuple[Link, socket.socket]) -> None:
    link, peer = pair
    poller = Poller(epoll=epoll)
    try:
        poller.watch(link, READ)
        assert poller.wait(0) == []  # nothing to read yet
        peer.send(b"x")
        assert poller.wait(5.0) == [READ]
        poller.watch(link, READ | WRITE)
        assert poller.wait(5.0) == [READ | WRITE]
        poller.watch(link, WRITE)  # reading held: only writability is reported
        assert poller.wait(5.0) == [WRITE]
        poller.watch(link, 0)
        assert not link.io.registered and poller.wait(0) == []
        poller.watch(link, READ)
        assert poller.wait(5.0) == [READ]
        poller.forget(link)
        poller.forget(link)  # idempotent
        assert poller.wait(0) == []
    finally:
        poller.close()


@pytest.mark.parametrize("epoll", BACKENDS)
def test_a_sub_millisecond_timeout_waits_instead_of_spinning(epoll: bool) -> None:
    import time

    poller = Poller(epoll=epoll)
    try:
        start = time.monotonic()
        assert poller.wait(0.0002) == []
        assert time.monotonic() - start >= 0.0002
    finally:
        poller.close()


@pytest.mark.parametrize("epoll", BACKENDS)
def test_a_wake_from_another_thread_ends_a_wait_in_progress(epoll: bool) -> None:
    import threading

    poller = Poller(epoll=epoll)
    entering, returned = threading.Event(), threading.Event()

    def io_thread() -> None:
        entering.set()
        poller.wait(30.0)  # only the wake-up ends this in time
        returned.set()

    thread = threading.Thread(target=io_thread, daemon=True)
    thread.start()
    try:
        assert entering.wait(5.0)
        poller.wake()  # whether it is still entering wait() or already asleep in it
        assert returned.wait(5.0), "the wake-up was lost"
    finally:
        thread.join(5.0)
        poller.close()


@pytest.mark.parametrize("epoll", BACKENDS)
def test_no_wake_up_is_lost_whether_the_waiter_is_busy_or_in_the_selector(epoll: bool) -> None:
    # Ping-pong, as a run of round trips: the waker posts work and wakes the
    # poller while its thread is sometimes busy (the wake-up is only recorded,
    # no byte written) and sometimes asleep in the selector (a byte is written).
    # A lost wake-up leaves the waiter asleep for its whole 30 s wait.
    import collections
    import threading

    poller = Poller(epoll=epoll)
    work: collections.deque[int] = collections.deque()
    done: collections.deque[int] = collections.deque()
    answered = threading.Condition()
    stop = threading.Event()
    n = 2000

    def io_thread() -> None:
        while not stop.is_set():
            poller.wait(30.0)
            while work:
                item = work.popleft()
                with answered:
                    done.append(item)
                    answered.notify()

    thread = threading.Thread(target=io_thread, daemon=True)
    thread.start()
    try:
        for i in range(n):
            work.append(i)
            poller.wake()
            with answered:
                assert answered.wait_for(lambda i=i: len(done) > i, 5.0), f"wake-up {i} lost"
        assert list(done) == list(range(n))
    finally:
        stop.set()
        poller.wake()
        thread.join(5.0)
        poller.close()
    assert not thread.is_alive()
