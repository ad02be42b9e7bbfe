"""A sender writes its own message when the I/O thread is idle: ws:// and wss://.

``send()`` after a pause (a round trip's request) takes the loop's turn, if it
is free, and writes the frame from the caller's thread; a stream of sends is
left to the I/O thread, which coalesces it. Either way one thread at a time
touches the socket (TLS included), order is kept, nothing is lost, and a
failure of the caller's write costs that connection only.
"""

from __future__ import annotations

import os
import queue
import random
import socket
import threading
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from tether_sync import TetherClient
from tether_sync.engine import transport
from tether_sync.protocol.session import Session

IO_THREAD = "tether-io"


class Writers:
    """Which threads wrote to the socket, and what each write returned (instrumentation)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # writers append; the test reads
        self.calls: List[Tuple[str, int]] = []  # (thread name, bytes written or -1)
        self.fail_next_caller_write = False

    def by_callers(self) -> List[int]:
        """What the callers' writes did: bytes taken, or -1 (failed); none that took nothing."""
        with self.lock:
            return [n for name, n in self.calls if name != IO_THREAD and n]

    def by_io_thread(self) -> List[int]:
        """The same for the I/O thread's writes."""
        with self.lock:
            return [n for name, n in self.calls if name == IO_THREAD and n]


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Writers]:
    seen = Writers()
    send_some = transport.Link.send_some

    def recorded(self: transport.Link, session: Session) -> int:
        name = threading.current_thread().name
        if name != IO_THREAD and seen.fail_next_caller_write:
            seen.fail_next_caller_write = False
            # The peer is gone for this socket: the write fails as a real one does.
            self.sock.shutdown(socket.SHUT_WR)
        n = send_some(self, session)
        with seen.lock:
            seen.calls.append((name, n))  # 0: the kernel (or TLS) took nothing this time
        return n

    monkeypatch.setattr(transport.Link, "send_some", recorded)
    yield seen


def _router(client: TetherClient) -> Callable[[str], queue.Queue[bytes]]:
    """Echoes routed by their ``b"<who>:"`` prefix to one queue per sender."""
    lock = threading.Lock()
    boxes: Dict[str, queue.Queue[bytes]] = {}

    def box(who: str) -> queue.Queue[bytes]:
        with lock:
            return boxes.setdefault(who, queue.Queue())

    def on_message(payload: Any) -> None:
        box(bytes(payload).split(b":", 1)[0].decode()).put(bytes(payload))

    client.subscribe("default", on_message)
    return box


@pytest.mark.timeout(120)
def test_round_trips_and_bursts_from_many_threads_arrive_once_in_order(
    echo: Dict[str, Any], writers: Writers, make_client: Callable[..., TetherClient]
) -> None:
    # Default options but for the URL's TLS settings and a bigger frame limit.
    client = make_client(echo["url"], protocol="raw", sslopt=echo["sslopt"])
    box = _router(client)
    client.connect(wait=True, timeout=10)
    failures: List[str] = []

    def round_trips(who: str, n: int) -> None:
        rng = random.Random(who)
        inbox = box(who)
        try:
            for j in range(n):
                # Small, and now and then bigger than a socket buffer (a partial
                # write the I/O thread finishes).
                size = rng.choice([0, 10, 100, 1000, 70_000]) if j % 7 else 300_000
                payload = f"{who}:{j}:".encode() + os.urandom(size)
                client.send(payload)
                got = inbox.get(timeout=20)
                if got != payload:
                    failures.append(f"{who}: round trip {j} got {got[:30]!r}")
                    return
        except Exception as exc:  # reported below, with the thread's name
            failures.append(f"{who}: {exc!r}")

    def bursts(who: str, rounds: int, size: int) -> None:
        inbox = box(who)
        try:
            for r in range(rounds):
                sent = [f"{who}:{r}:{k}:".encode() + os.urandom(k % 50) for k in range(size)]
                for payload in sent:
                    client.send(payload)
                got = [inbox.get(timeout=20) for _ in sent]
                if got != sent:
                    failures.append(f"{who}: burst {r} out of order or altered")
                    return
        except Exception as exc:
            failures.append(f"{who}: {exc!r}")

    threads = [threading.Thread(target=round_trips, args=(f"rt{i}", 120)) for i in range(4)]
    threads += [threading.Thread(target=bursts, args=(f"burst{i}", 5, 400)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not [t.name for t in threads if t.is_alive()]
    assert failures == []
    # The callers did write some messages themselves (the path under test ran),
    # and the I/O thread wrote the rest; on wss:// too.
    assert writers.by_callers(), "no send() wrote from its own thread"
    assert writers.by_io_thread()
    assert client.stats().reconnects == 0


@pytest.mark.timeout(60)
def test_a_lone_message_bigger_than_the_socket_buffer_is_finished_by_the_io_thread(
    echo: Dict[str, Any],
    writers: Writers,
    make_client: Callable[..., TetherClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    link_init = transport.Link.__init__

    def small_buffer(self: transport.Link, sock: socket.socket, *args: Any, **kw: Any) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        link_init(self, sock, *args, **kw)

    monkeypatch.setattr(transport.Link, "__init__", small_buffer)
    client = make_client(echo["url"], protocol="raw", sslopt=echo["sslopt"])
    inbox = client.subscribe("default")
    client.connect(wait=True, timeout=10)
    big = os.urandom(3 * 2**20 + 5)
    client.send(big)  # after a pause: the caller writes what the kernel takes
    assert inbox.get(timeout=30) == big
    client.send(b"after")
    assert inbox.get(timeout=10) == b"after"
    with writers.lock:
        first = writers.calls[0]
    # The caller made the first write and the kernel took part of it at most (on
    # TLS, an SSL write that does not fit may report nothing taken yet); the I/O
    # thread, woken for the rest, wrote it.
    assert first[0] != IO_THREAD and first[1] < len(big)
    assert sum(n for n in writers.by_io_thread() if n > 0) > 2**20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("echo", ["ws"], indirect=True)  # TLS: the same path
def test_a_loop_of_sends_is_left_to_the_io_thread(
    echo: Dict[str, Any], writers: Writers, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(echo["url"], protocol="raw")
    inbox = client.subscribe("default", buffer_size=30_000)
    client.connect(wait=True, timeout=10)
    n = 20_000
    for i in range(n):
        client.send(f"{i}")
    got = [inbox.get(timeout=20) for _ in range(n)]
    assert got == [f"{i}" for i in range(n)]
    # Coalesced: the I/O thread wrote many messages per system call; a caller
    # wrote one now and then at most (after the scheduler paused it).
    assert len(writers.by_callers()) < n // 20
    assert len(writers.by_io_thread()) < n // 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("echo", ["ws"], indirect=True)  # the failure is made on the raw socket
def test_a_failed_write_on_the_callers_thread_costs_one_connection_and_nothing_is_lost(
    echo: Dict[str, Any], writers: Writers, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(echo["url"], protocol="raw")
    inbox = client.subscribe("default")
    client.connect(wait=True, timeout=10)
    client.send(b"first")
    assert inbox.get(timeout=10) == b"first"
    writers.fail_next_caller_write = True
    delivery = client.send(b"second")  # its write fails on this thread: EPIPE
    assert inbox.get(timeout=10) == b"second"  # sent again on the next connection
    delivery.result(timeout=10)
    assert -1 in writers.by_callers()  # the failed write was the caller's own
    assert client.stats().reconnects == 1
    client.send(b"third")
    assert inbox.get(timeout=10) == b"third"
