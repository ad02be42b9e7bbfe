"""The shared test listener: it serves connections and stops at once when a test ends."""

from __future__ import annotations

import socket
import threading
import time
from typing import List

from .listener import Listener

QUICK = 1.0
"""close() must return well within this (its joins would wait 5 s if a thread stayed blocked)."""


def _connect(listener: Listener) -> socket.socket:
    return socket.create_connection(("127.0.0.1", listener.port), timeout=5)


def test_close_wakes_a_thread_blocked_in_accept() -> None:
    served = threading.Event()

    def handle(conn: socket.socket) -> None:
        conn.close()
        served.set()  # the acceptor goes back into accept() now

    listener = Listener(handle)
    _connect(listener).close()
    assert served.wait(5)
    started = time.monotonic()
    listener.close()
    assert time.monotonic() - started < QUICK
    assert not listener._acceptor.is_alive()


def test_close_wakes_a_handler_blocked_in_recv_and_closes_its_connection() -> None:
    entered = threading.Event()
    got: List[bytes] = []

    def handle(conn: socket.socket) -> None:
        entered.set()
        got.append(conn.recv(10))  # the client never writes: only close() ends this

    listener = Listener(handle)
    client = _connect(listener)
    try:
        assert entered.wait(5)
        started = time.monotonic()
        listener.close()
        assert time.monotonic() - started < QUICK
        assert got == [b""]
        assert client.recv(10) == b""  # the peer's side is gone too
    finally:
        client.close()


def test_threaded_serves_a_second_connection_while_the_first_is_open() -> None:
    first_open = threading.Event()
    second = threading.Event()
    release = threading.Event()
    count = [0]
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        with lock:
            count[0] += 1
            n = count[0]
        with conn:
            if n == 1:
                first_open.set()
                release.wait(10)
            else:
                second.set()

    listener = Listener(handle, threaded=True)
    a = _connect(listener)
    try:
        assert first_open.wait(5)
        b = _connect(listener)
        with b:
            assert second.wait(5), "the second connection waited for the first"
        assert listener.accepted == 2
    finally:
        release.set()
        a.close()
        listener.close()


def test_a_handler_that_fails_with_oserror_leaves_the_listener_serving() -> None:
    served = threading.Event()
    calls = [0]

    def handle(conn: socket.socket) -> None:
        with conn:
            calls[0] += 1
            if calls[0] == 1:
                raise ConnectionResetError("the client left")
            served.set()

    listener = Listener(handle)
    try:
        _connect(listener).close()
        with _connect(listener):
            assert served.wait(5)
    finally:
        listener.close()
