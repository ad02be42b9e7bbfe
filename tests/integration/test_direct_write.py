"""Callers write and read the socket themselves when the I/O thread is idle: ws:// and wss://.

``send()`` after a pause (a round trip's request) takes the loop's turn, if it
is free, and writes the frame from the caller's thread; a stream of sends is
left to the I/O thread, which coalesces it. A ``get()`` about to block takes
the turn the same way and waits for the reply on the socket itself, giving the
turn back as soon as the I/O thread has something to do. Either way one thread
at a time touches the socket (TLS included), order is kept, nothing is lost,
nothing waits on a consumer, and a failure costs that connection only.
"""

from __future__ import annotations

import os
import queue
import random
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from support.recorder import eventually

from tether_sync import TetherClient
from tether_sync.engine import transport
from tether_sync.protocol.session import Session
from tether_sync.server import TetherServer

IO_THREAD = "tether-io"


class Writers:
    """Which threads wrote to the socket, and what each write returned (instrumentation)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # writers append; the test reads
        self.calls: List[Tuple[str, int]] = []  # (thread name, bytes written or -1)
        self.reads: List[str] = []  # the thread of each read that returned bytes
        self.fail_next_caller_write = False
        self.interrupt_next_caller_write = False

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
        if name != IO_THREAD and seen.interrupt_next_caller_write:
            seen.interrupt_next_caller_write = False
            raise KeyboardInterrupt  # Ctrl-C on the main thread, mid-write
        n = send_some(self, session)
        with seen.lock:
            seen.calls.append((name, n))  # 0: the kernel (or TLS) took nothing this time
        return n

    recv = transport.Link.recv

    def recorded_recv(self: transport.Link) -> Any:
        data = recv(self)
        if data:
            with seen.lock:
                seen.reads.append(threading.current_thread().name)
        return data

    monkeypatch.setattr(transport.Link, "send_some", recorded)
    monkeypatch.setattr(transport.Link, "recv", recorded_recv)
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
    # Default options but for the URL's TLS settings.
    client = make_client(echo["url"], protocol="raw", sslopt=echo["sslopt"])
    box = _router(client)
    # A second subscription gets every echo too, drained by get() on a thread of
    # its own: it reads the socket itself whenever the I/O thread is idle.
    every = client.subscribe("default", buffer_size=10_000)
    client.connect(wait=True, timeout=10)
    failures: List[str] = []
    total = 4 * 120 + 2 * 5 * 400
    drained: List[bytes] = []

    def drain() -> None:
        try:
            for _ in range(total):
                drained.append(every.get(timeout=30))
        except Exception as exc:
            failures.append(f"drain: {exc!r}")

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
    threads.append(threading.Thread(target=drain))
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not [t.name for t in threads if t.is_alive()]
    assert failures == []
    # The drained stream: every echo once, each sender's in its order.
    assert len(set(drained)) == len(drained) == total
    order: Dict[str, List[Tuple[int, ...]]] = {}
    for payload in drained:
        who = payload.split(b":", 1)[0].decode()
        fields = payload.split(b":", 2 if who.startswith("rt") else 3)[1:-1]
        order.setdefault(who, []).append(tuple(int(x) for x in fields))
    assert all(seq == sorted(seq) for seq in order.values())
    # The callers did write some messages themselves (the path under test ran),
    # and the I/O thread wrote the rest; on wss:// too. The same for reads.
    assert writers.by_callers(), "no send() wrote from its own thread"
    assert writers.by_io_thread()
    with writers.lock:
        readers = set(writers.reads)
    assert IO_THREAD in readers and readers - {IO_THREAD}, readers
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
    # Coalesced: many messages per system call. A caller writes one itself now
    # and then (when the scheduler or the GIL held it up for 50 us and the I/O
    # thread had drained the queue): in a traced run 150-1,300 of 20,000.
    writes = len(writers.by_callers()) + len(writers.by_io_thread())
    assert writes < n // 4


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


@pytest.mark.timeout(60)
def test_round_trips_read_their_replies_on_the_callers_thread(
    echo: Dict[str, Any], writers: Writers, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(echo["url"], protocol="raw", sslopt=echo["sslopt"])
    inbox = client.subscribe("default")
    client.connect(wait=True, timeout=10)
    for i in range(300):
        payload = f"request {i}".encode() + os.urandom(i)
        client.send(payload)
        assert inbox.get(timeout=10) == payload
    with writers.lock:
        mine = sum(1 for name in writers.reads if name == threading.current_thread().name)
    # Most replies came with no hand-off (the I/O thread was idle, the turn free).
    assert mine > 150, f"{mine} of 300 replies read on the caller's thread"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("echo", ["ws"], indirect=True)
@pytest.mark.parametrize("overflow", ["drop-oldest", "sample-oldest", "drop-newest"])
def test_a_drop_policy_consumer_never_reads_the_socket_itself(
    echo: Dict[str, Any],
    writers: Writers,
    make_client: Callable[..., TetherClient],
    overflow: str,
) -> None:
    # A drop policy is for streams where the newest value matters: the I/O
    # thread reads at the network's pace and the buffer drops, whatever the
    # consumer's pace (its own reads would pace the server through TCP).
    client = make_client(echo["url"], protocol="raw", sslopt=echo["sslopt"])
    inbox = client.subscribe("default", overflow=overflow)
    client.connect(wait=True, timeout=10)
    for i in range(200):
        payload = f"request {i}".encode()
        client.send(payload)
        assert inbox.get(timeout=10) == payload
    with writers.lock:
        reads = list(writers.reads)
    assert reads and set(reads) == {IO_THREAD}, f"{len(reads)} reads by {sorted(set(reads))}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("echo", ["ws"], indirect=True)
def test_a_consumer_waiting_on_the_socket_holds_up_nobody(
    echo: Dict[str, Any], make_client: Callable[..., TetherClient]
) -> None:
    # Heartbeat every 0.1 s: its pings are the I/O thread's deadlines.
    client = make_client(echo["url"], protocol="raw", heartbeat={"interval": 0.1, "timeout": 2})
    waiting = client.subscribe("quiet")  # never gets anything: its get() waits on the socket
    echoes = client.subscribe("default", buffer_size=10)
    client.connect(wait=True, timeout=10)
    outcome: List[BaseException] = []

    def consumer() -> None:
        try:
            waiting.get()  # no timeout: waits until the client closes
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=consumer)
    t.start()
    # Another thread's sends go out and their echoes come back while the
    # consumer waits (raw: the echo of every send lands on "default" and "quiet").
    for i in range(20):
        client.send(f"ping {i}")
        assert echoes.get(timeout=5) == f"ping {i}"
    # The heartbeat runs meanwhile: pings out, pongs in.
    assert eventually(lambda: client.stats().last_rtt is not None, timeout=5)
    # close() from another thread is not held up by the waiting consumer.
    assert client.close(timeout=5) is True
    t.join(5)
    assert not t.is_alive()
    assert outcome and type(outcome[0]).__name__ == "ClientClosed"


@pytest.mark.timeout(60)
def test_ctrl_c_during_a_callers_write_loses_nothing(
    tether_server: TetherServer, writers: Writers, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)  # default options: protocol tether, acks
    client.connect(wait=True, timeout=10)
    client.send("first", channel="c").result(timeout=10)
    writers.interrupt_next_caller_write = True
    with pytest.raises(KeyboardInterrupt):
        client.send("second", channel="c")  # framed, then interrupted before the write
    # The half-written connection failed; the message went on the next one.
    client.send("third", channel="c").result(timeout=10)
    assert client.flush(timeout=10)
    assert tether_server.data_payloads("c") == ["first", "second", "third"]
    assert client.stats().reconnects == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("echo", ["ws"], indirect=True)
@pytest.mark.parametrize("protocol", ["raw", "tether"])
def test_a_reply_is_handed_over_at_once_never_after_gets_timeout(
    echo: Dict[str, Any], protocol: str, make_client: Callable[..., TetherClient]
) -> None:
    # A reply pushed while the caller looked at the socket, or while it was
    # between its own check and its wait, must end get() at once. (A lost
    # wake-up showed as a round trip of exactly get()'s timeout: 2-4 in 4,000.)
    client = make_client(echo["url"], protocol=protocol)  # tether: the envelope comes back
    inbox = client.subscribe("default" if protocol == "raw" else "e")
    client.connect(wait=True, timeout=10)
    slowest = 0.0
    for i in range(3000):
        started = time.monotonic()
        client.send(f"m{i}", channel="e")
        got = inbox.get(timeout=5)
        slowest = max(slowest, time.monotonic() - started)
        assert got == f"m{i}"
    assert slowest < 2.0, f"a round trip took {slowest:.3f} s (get()'s timeout is 5 s)"
