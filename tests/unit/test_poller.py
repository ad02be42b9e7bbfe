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
