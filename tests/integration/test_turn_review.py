"""The loop's turn under stress: a consumer reads the socket while the world moves.

A ``get()`` about to block on a ``"block"`` subscription without a callback
waits for the socket on its own thread (``IoLoop.read_now``), holding the
loop's turn. These tests make things happen while a consumer sits in that wait
(the instrumented ``Poller.wait_socket`` says when it is there): the server
resets the connection or is killed, ``close()``, ``subscribe()`` and
``unsubscribe()`` come from other threads, the peer goes silent, the token is
rotated, a callback subscription shares the link, permessage-deflate is on,
and a consumer polls with a 1 ms timeout while the server streams. Each time
nothing is lost, duplicated or reordered, and nothing waits on the consumer.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from support.listener import Listener
from support.raw_server import accept_handshake, server_frame
from support.recorder import Recorder, eventually, wait_subscribed
from support.serve_process import ServeProcess

from tether_sync import Auth, ClientClosed, TetherClient
from tether_sync.engine import poller as poller_mod
from tether_sync.engine import transport
from tether_sync.server import TetherServer, mint_token

IO_THREAD = "tether-io"


class SocketWaits:
    """Who waits in ``Poller.wait_socket`` (a consumer holding the turn), and who reads."""

    def __init__(self) -> None:
        self.cond = threading.Condition()  # guards every field below
        self.inside: Dict[str, int] = {}  # thread name -> waits in progress
        self.entered: Dict[str, int] = {}  # thread name -> waits begun
        self.reads: Dict[str, int] = {}  # thread name -> reads that returned bytes
        self.failed_reads: Dict[str, int] = {}  # thread name -> reads that raised

    def wait_inside(self, name: str, timeout: float = 10.0) -> bool:
        """Block until thread ``name`` waits on the socket right now."""
        with self.cond:
            return self.cond.wait_for(lambda: self.inside.get(name, 0) > 0, timeout)

    def read_by(self, name: str) -> int:
        with self.cond:
            return self.reads.get(name, 0)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[SocketWaits]:
    seen = SocketWaits()
    wait_socket = poller_mod.Poller.wait_socket

    def recorded(
        self: poller_mod.Poller, link: transport.Link, timeout: float
    ) -> Tuple[bool, bool]:
        name = threading.current_thread().name
        with seen.cond:
            seen.inside[name] = seen.inside.get(name, 0) + 1
            seen.entered[name] = seen.entered.get(name, 0) + 1
            seen.cond.notify_all()
        try:
            return wait_socket(self, link, timeout)
        finally:
            with seen.cond:
                seen.inside[name] -= 1
                seen.cond.notify_all()

    recv = transport.Link.recv

    def recorded_recv(self: transport.Link) -> Any:
        try:
            data = recv(self)
        except OSError:
            name = threading.current_thread().name
            with seen.cond:
                seen.failed_reads[name] = seen.failed_reads.get(name, 0) + 1
            raise
        if data:
            name = threading.current_thread().name
            with seen.cond:
                seen.reads[name] = seen.reads.get(name, 0) + 1
        return data

    monkeypatch.setattr(poller_mod.Poller, "wait_socket", recorded)
    monkeypatch.setattr(transport.Link, "recv", recorded_recv)
    yield seen


POKE = "poke"
"""A message that only ends a ``get()`` so that the next one tries the turn again."""


def on_the_socket(waits: SocketWaits, name: str, poke: Callable[[], Any]) -> bool:
    """Wait until thread ``name`` waits on the socket in ``get()``, poking it if need be.

    A ``get()`` that finds the loop's turn taken (the I/O thread busy for a
    moment: an ack, a TLS session ticket) waits as a plain waiter for the rest
    of that call (by design: it is a matter of speed, not of delivery). Then
    ``poke()`` sends it a :data:`POKE`, which its consumer skips, and the next
    ``get()`` tries the turn again.
    """
    for _ in range(20):
        if waits.wait_inside(name, timeout=0.5):
            return True
        poke()
    return False


def unpoked(items: List[Any]) -> List[Any]:
    return [item for item in items if item != POKE]


def next_unpoked(sub: Any, n: int) -> List[Any]:
    """The next ``n`` payloads of ``sub`` that are not pokes."""
    out: List[Any] = []
    while len(out) < n:
        item = sub.get(timeout=5)
        if item != POKE:
            out.append(item)
    return out


def _subscribed(
    server: TetherServer, make_client: Callable[..., TetherClient], *channels: str
) -> Tuple[TetherClient, List[Any]]:
    """A client of ``server``, open, with a queue subscription per channel the server knows of."""
    client = make_client(server.url)
    subs = [client.subscribe(ch) for ch in channels]
    client.connect(wait=True, timeout=10)
    for ch in channels:
        assert wait_subscribed(server, ch)
    return client, subs


class Consumer:
    """A thread that takes ``count`` payloads from ``sub`` with ``get(timeout)``."""

    def __init__(
        self, sub: Any, count: int, timeout: Optional[float] = None, name: str = ""
    ) -> None:
        self.sub = sub
        self.count = count
        self.timeout = timeout
        self.got = Recorder()
        self.timeouts = 0
        self.error: List[BaseException] = []
        self.thread = threading.Thread(target=self._run, name=name or f"consumer-{id(self)}")
        self.name = self.thread.name
        self.thread.start()

    def _run(self) -> None:
        try:
            while len(self.got.items) < self.count:
                try:
                    item = self.sub.get(timeout=self.timeout)
                    if item != POKE:
                        self.got(item)
                except TimeoutError:
                    self.timeouts += 1
        except BaseException as exc:
            self.error.append(exc)

    def join(self, timeout: float = 10.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} still blocked"


@pytest.mark.timeout(60)
def test_a_reset_while_the_consumer_waits_on_the_socket_loses_and_duplicates_nothing(
    tether_server: TetherServer,
    waits: SocketWaits,
    make_client: Callable[..., TetherClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tether_sync")
    # Default protocol (tether, acks) and queue policy; the server echoes a
    # message to the channel's subscribers, this client included.
    client, (sub,) = _subscribed(tether_server, make_client, "c")
    n = 40
    closes = Recorder()
    client.on("close", closes)
    consumer = Consumer(sub, n, timeout=None)

    def poke() -> None:
        assert tether_server.broadcast("c", POKE) == 1

    resets = 0
    for i in range(n):
        if i and i % 10 == 0:
            # The consumer has the previous echo and waits on the socket for the
            # next one, holding the turn: the RST lands on its read.
            assert consumer.got.wait_count(i, timeout=10)
            assert on_the_socket(waits, consumer.name, poke), "it never waited on the socket"
            assert tether_server.drop_all() == 1
            resets += 1
            if resets % 2:  # the next send waits for the failure, or races with it
                assert closes.wait_count(resets, timeout=10)
        client.send(f"m{i}", channel="c")
    assert consumer.got.wait_count(n, timeout=20), consumer.got.snapshot()
    consumer.join()
    assert consumer.got.snapshot() == [f"m{i}" for i in range(n)]
    assert not consumer.error
    assert eventually(lambda: client.stats().reconnects == resets, timeout=10)
    assert tether_server.data_payloads("c") == [f"m{i}" for i in range(n)]
    # The resets were read by the consumer itself (it held the turn).
    with waits.cond:
        assert waits.failed_reads.get(consumer.name, 0) >= 1, waits.failed_reads
    # What the consumer's thread logged about it carries the client's fields
    # (DESIGN §8), as the I/O thread's records do.
    mine = [r for r in caplog.records if r.threadName == consumer.name]
    assert mine, "the consumer's thread logged nothing about the reset it read"
    assert all(getattr(r, "client", None) for r in mine), [r.getMessage() for r in mine]


@pytest.mark.timeout(90)
def test_a_server_killed_while_the_consumer_waits_then_later_messages_still_reach_it(
    tmp_path: Any, waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    server = ServeProcess(record=tmp_path / "rec.jsonl").start()
    try:
        client = make_client(server.url)  # default protocol, acks, queue "block"
        sub = client.subscribe("c")
        client.connect(wait=True, timeout=10)
        consumer = Consumer(sub, 6, timeout=None)
        sent = [client.send(f"before {i}", channel="c") for i in range(3)]
        for delivery in sent:
            # Acked: the server kept them, so they are not resent to the next
            # process (which would echo them again: at least once, DESIGN §5).
            delivery.result(timeout=10)
        assert consumer.got.wait_count(3, timeout=10)

        def poke() -> None:
            client.send(POKE, channel="c").result(timeout=10)  # acked: never resent

        assert on_the_socket(waits, consumer.name, poke)
        opens = Recorder()
        client.on("open", opens)
        server.kill()  # kill -9 while the consumer waits on the socket, get(timeout=None)
        server.start()  # same port
        assert opens.wait_count(1, timeout=20), "no reconnect after the kill"
        for i in range(3):
            client.send(f"after {i}", channel="c")
        assert consumer.got.wait_count(6, timeout=20), consumer.got.snapshot()
        consumer.join()
        assert consumer.got.snapshot() == [f"before {i}" for i in range(3)] + [
            f"after {i}" for i in range(3)
        ]
        assert not consumer.error
        assert client.stats().reconnects == 1
    finally:
        server.kill()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("echo", ["ws", "wss"], indirect=True)
def test_close_from_another_thread_ends_a_get_with_no_timeout_at_once(
    echo: Dict[str, Any], waits: SocketWaits
) -> None:
    # Heartbeat off: the I/O thread has no deadline, so the consumer's wait on
    # the socket is unbounded; only the handshake's wake byte can end it.
    client = TetherClient(echo["url"], protocol="raw", sslopt=echo["sslopt"], heartbeat=False)
    try:
        sub = client.subscribe("default")
        client.connect(wait=True, timeout=10)
        consumer = Consumer(sub, 1, timeout=None)
        assert on_the_socket(waits, consumer.name, lambda: client.send(POKE))  # echoed
        started = time.monotonic()
        assert client.close(timeout=5) is True  # every thread it started is joined
        took = time.monotonic() - started
        consumer.join(5)
        assert took < 2.0, f"close() took {took:.2f} s"
        assert [type(e) for e in consumer.error] == [ClientClosed]
        assert not [t for t in threading.enumerate() if t.name.startswith("tether-")]
    finally:
        client.close(timeout=3)


@pytest.mark.timeout(30)
def test_unsubscribe_and_subscribe_from_other_threads_while_a_consumer_waits(
    tether_server: TetherServer, waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)  # heartbeat off: no deadline ends the wait
    quiet = client.subscribe("quiet")
    other = client.subscribe("other")
    client.connect(wait=True, timeout=10)
    assert wait_subscribed(tether_server, "other")
    waiter = Consumer(other, 1, timeout=None, name="waiter")
    assert on_the_socket(waits, waiter.name, lambda: tether_server.broadcast("other", POKE))
    # A subscription made from another thread meanwhile gets its messages...
    news = client.subscribe("news")
    assert wait_subscribed(tether_server, "news")
    assert tether_server.broadcast("news", "hello") == 1
    assert news.get(timeout=5) == "hello"
    # ...and the waiting consumer still gets its own.
    assert tether_server.broadcast("other", "yours") == 1
    waiter.join(5)
    assert waiter.got.snapshot() == ["yours"] and not waiter.error
    # Unsubscribing a consumer's subscription while it waits on the socket
    # ends its get() now, not at some later deadline (there is none).
    assert wait_subscribed(tether_server, "quiet")
    quitter = Consumer(quiet, 1, timeout=None, name="quitter")
    assert on_the_socket(waits, quitter.name, lambda: tether_server.broadcast("quiet", POKE))
    started = time.monotonic()
    threading.Thread(target=quiet.unsubscribe).start()
    quitter.join(5)
    assert time.monotonic() - started < 2.0
    assert [type(e) for e in quitter.error] == [ClientClosed]
    # The link is fine: the other subscriptions still work.
    assert tether_server.broadcast("news", "still here") == 1
    assert news.get(timeout=5) == "still here"


class SilentPeer:
    """Completes the handshake, then only listens: records each frame's opcode and time."""

    def __init__(self) -> None:
        self.cond = threading.Condition()  # guards frames and connections
        self.frames: List[Tuple[float, int]] = []  # (monotonic time, opcode)
        self.connections: List[float] = []  # when each handshake completed
        self._socks: List[socket.socket] = []  # the connections, newest last
        self._listener = Listener(self._talk, threaded=True, name="silent-peer")
        self.url = self._listener.url

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            accept_handshake(conn)
            with self.cond:
                self.connections.append(time.monotonic())
                self._socks.append(conn)
                self.cond.notify_all()
            buf = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2:
                    length = buf[1] & 0x7F
                    head = 2
                    if length == 126:
                        length, head = int.from_bytes(buf[2:4], "big"), 4
                    elif length == 127:
                        length, head = int.from_bytes(buf[2:10], "big"), 10
                    end = head + 4 + length  # client frames are masked
                    if len(buf) < end:
                        break
                    with self.cond:
                        self.frames.append((time.monotonic(), buf[0] & 0x0F))
                        self.cond.notify_all()
                    buf = buf[end:]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def poke(self) -> None:
        """Say one thing: a text frame :data:`POKE` on the newest connection."""
        with self.cond:
            sock = self._socks[-1]
        sock.sendall(server_frame(0x1, POKE.encode()))

    def close(self) -> None:
        self._listener.close()


@pytest.mark.timeout(30)
def test_pings_go_out_and_a_dead_peer_is_found_while_a_consumer_waits(
    waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    peer = SilentPeer()
    try:
        client = make_client(peer.url, protocol="raw", heartbeat={"interval": 0.3, "timeout": 0.6})
        closes = Recorder()
        client.on("close", closes)
        sub = client.subscribe("default")
        client.connect(wait=True, timeout=10)
        consumer = Consumer(sub, 1, timeout=None)
        assert on_the_socket(waits, consumer.name, peer.poke)
        since = time.monotonic()
        # The next ping goes out on time although the consumer holds the turn...
        assert peer.wait_for(lambda: any(op == 0x9 and t > since for t, op in peer.frames), 5)
        with peer.cond:
            ping = next(t for t, op in peer.frames if op == 0x9 and t > since)
        assert ping - since < 0.3 + 0.5, f"no ping for {ping - since:.2f} s"
        # ...and with no pong the link is closed (4000) after the timeout.
        assert closes.wait_count(1, timeout=5), "the dead peer was never detected"
        assert closes.snapshot()[0].code == 4000
        assert peer.wait_for(lambda: len(peer.connections) >= 2, 5), "no reconnect"
        assert consumer.thread.is_alive() and not consumer.error
        client.close(timeout=5)
        consumer.join(5)
        assert [type(e) for e in consumer.error] == [ClientClosed]
    finally:
        peer.close()


class Tokens:
    """A get_token() that mints demo tokens and records the thread of each call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards threads
        self.threads: List[str] = []

    def __call__(self) -> str:
        with self.lock:
            self.threads.append(threading.current_thread().name)
        return mint_token("reader", ttl=300.0)


@pytest.mark.timeout(30)
def test_token_rotation_while_a_consumer_waits_on_the_socket(
    make_server: Callable[..., TetherServer],
    waits: SocketWaits,
    make_client: Callable[..., TetherClient],
) -> None:
    server = make_server(require_auth=True)
    tokens = Tokens()
    client = make_client(server.url, auth=Auth(tokens))
    sub = client.subscribe("live")
    client.connect(wait=True, timeout=10)
    assert wait_subscribed(server, "live")
    consumer = Consumer(sub, 2, timeout=None)

    def poke() -> None:
        assert server.broadcast("live", POKE) == 1

    assert on_the_socket(waits, consumer.name, poke)
    client.refresh_auth(timeout=10)  # over the open socket, while the consumer waits on it
    assert server.broadcast("live", "one") == 1
    assert consumer.got.wait_count(1, timeout=5)
    assert on_the_socket(waits, consumer.name, poke)
    client.refresh_auth(timeout=10)
    assert server.broadcast("live", "two") == 1
    consumer.join(5)
    assert consumer.got.snapshot() == ["one", "two"]
    assert len(server.all_connections) == 1, "rotation must not reconnect"
    with tokens.lock:
        threads = list(tokens.threads)
    assert len(threads) == 3
    assert consumer.name not in threads and IO_THREAD not in threads, threads


@pytest.mark.timeout(60)
@pytest.mark.parametrize("echo", ["ws", "wss"], indirect=True)
def test_a_callback_and_a_queue_subscription_share_the_link(
    echo: Dict[str, Any], waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    # Raw: every echo lands on both subscriptions.
    client = make_client(echo["url"], protocol="raw", sslopt=echo["sslopt"])
    seen = Recorder()
    called_on: List[str] = []

    def on_message(payload: Any) -> None:
        called_on.append(threading.current_thread().name)
        seen(payload)

    client.subscribe("default", on_message)
    inbox = client.subscribe("default")
    client.connect(wait=True, timeout=10)
    me = threading.current_thread().name
    n = 300
    for i in range(n):
        client.send(f"r{i}")
        assert inbox.get(timeout=10) == f"r{i}"
    assert seen.wait_count(n, timeout=10)
    assert seen.snapshot() == [f"r{i}" for i in range(n)]
    # The consumer's thread read many of the frames the callback got, but the
    # callback ran on the dispatcher, never on the consumer's or the I/O thread.
    assert waits.read_by(me) > n // 4
    assert me not in called_on and IO_THREAD not in called_on, set(called_on)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("echo", ["ws", "wss"], indirect=True)
def test_a_callback_run_inline_that_sends_never_nests_a_step(
    echo: Dict[str, Any], waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    # dispatcher= that runs callbacks where it is called (a user's choice): a
    # callback then runs on whichever thread routes the frame, the consumer's
    # included, under the turn; its send() must not run a write step inside the
    # read step (the turn is an RLock): it hands the write to the I/O thread.
    client = make_client(
        echo["url"], protocol="raw", sslopt=echo["sslopt"], dispatcher=lambda fn: fn()
    )
    nested: List[str] = []
    reading = threading.local()
    inner = client._loop._loop
    pump, on_readable = inner._pump, inner._on_readable

    def watched_pump() -> None:
        if getattr(reading, "on", False):
            nested.append(threading.current_thread().name)
        pump()

    def watched_read() -> None:
        reading.on = True
        try:
            on_readable()
        finally:
            reading.on = False

    inner._pump = watched_pump  # type: ignore[method-assign]
    inner._on_readable = watched_read  # type: ignore[method-assign]
    replies: List[str] = []

    def on_message(payload: Any) -> None:
        if isinstance(payload, str) and payload.startswith("ping"):
            replies.append(payload)
            client.send("pong" + payload[4:])

    client.subscribe("default", on_message)
    inbox = client.subscribe("default")
    client.connect(wait=True, timeout=10)
    n = 200
    for i in range(n):
        client.send(f"ping{i}")
        got = [inbox.get(timeout=10), inbox.get(timeout=10)]
        assert got == [f"ping{i}", f"pong{i}"]
    assert replies == [f"ping{i}" for i in range(n)]
    assert not nested, f"{len(nested)} write steps inside a read step: {set(nested)}"
    assert waits.read_by(threading.current_thread().name) > n // 4


@pytest.mark.timeout(90)
@pytest.mark.parametrize("echo", ["ws", "wss"], indirect=True)
def test_deflate_replies_read_on_the_callers_thread_arrive_intact(
    echo: Dict[str, Any], waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(echo["url"], protocol="raw", sslopt=echo["sslopt"], compression="deflate")
    inbox = client.subscribe("default")
    client.connect(wait=True, timeout=10)
    session = client._loop._loop.session
    assert session is not None and session.config.deflate is not None, "no deflate agreed"
    rng = random.Random(22)
    me = threading.current_thread().name
    for i in range(300):
        size = rng.choice([10, 1000, 70_000, 200_000])
        body = (b"abc" * size)[:size] if i % 2 else os.urandom(size)
        payload = f"{i}:".encode() + body
        client.send(payload)
        assert inbox.get(timeout=10) == payload
    assert waits.read_by(me) > 100


@pytest.mark.timeout(60)
def test_tiny_get_timeouts_in_a_tight_loop_lose_and_reorder_nothing(
    tether_server: TetherServer, waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    _, (sub,) = _subscribed(tether_server, make_client, "s")
    n = 3000
    consumer = Consumer(sub, n, timeout=0.001)
    assert waits.wait_inside(consumer.name)  # each get() tries the turn: no poke needed
    for i in range(n):
        assert tether_server.broadcast("s", i) == 1
        if i % 500 == 0:  # an idle gap: the consumer's 1 ms gets time out meanwhile
            idle = consumer.timeouts
            assert consumer.got.wait_count(i + 1, timeout=10)
            assert eventually(lambda idle=idle: consumer.timeouts > idle + 2, timeout=10)
    assert consumer.got.wait_count(n, timeout=30)
    consumer.join()
    assert consumer.got.snapshot() == list(range(n))
    assert not consumer.error
    assert waits.read_by(consumer.name) > 0


@pytest.mark.timeout(90)
def test_consumers_on_several_subscriptions_while_several_threads_send(
    tether_server: TetherServer, waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    channels = ["a", "b", "c"]
    client, queues = _subscribed(tether_server, make_client, *channels)
    subs = dict(zip(channels, queues))
    senders, per = 3, 150
    consumers = {
        # One consumer without a timeout, the others with short ones.
        ch: Consumer(subs[ch], senders * per, timeout=None if ch == "a" else 0.05, name=f"c-{ch}")
        for ch in channels
    }
    go = threading.Event()
    failures: List[BaseException] = []

    def sender(s: int) -> None:
        try:
            assert go.wait(5)
            rng = random.Random(s)
            for i in range(per):
                for ch in channels:
                    client.send(f"{s}:{i}", channel=ch)
                if rng.random() < 0.3:
                    # Pacing a producer, not a wait: the next send takes the turn.
                    time.sleep(0.0002)  # ok-sleep
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=sender, args=(s,)) for s in range(senders)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(30)
    assert not failures
    for ch, consumer in consumers.items():
        assert consumer.got.wait_count(senders * per, timeout=30), (ch, len(consumer.got.items))
        consumer.join()
        got = consumer.got.snapshot()
        assert len(got) == senders * per
        for s in range(senders):
            mine = [int(p.split(":")[1]) for p in got if p.startswith(f"{s}:")]
            assert mine == list(range(per)), (ch, s)
        assert not consumer.error
    # The consumers did take turns on the socket.
    assert sum(waits.entered.get(c.name, 0) for c in consumers.values()) > 0


@pytest.mark.timeout(60)
def test_several_consumers_of_one_subscription_share_a_stream_exactly_once(
    tether_server: TetherServer, waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    client, (sub,) = _subscribed(tether_server, make_client, "s")
    n = 3000
    taken = Recorder()
    stop = threading.Event()
    per_thread: Dict[str, List[int]] = {}

    def consume(name: str, timeout: Optional[float]) -> None:
        mine = per_thread[name] = []
        while not stop.is_set():
            try:
                item = sub.get(timeout=timeout)
            except TimeoutError:
                continue
            except ClientClosed:
                return
            mine.append(item)
            taken(item)

    threads = [
        threading.Thread(target=consume, args=(f"c{k}", t), name=f"c{k}")
        for k, t in enumerate([None, 0.01, 0.001])
    ]
    for t in threads:
        t.start()
    for i in range(n):
        assert tether_server.broadcast("s", i) == 1
        if i % 300 == 0:
            assert taken.wait_count(i + 1, timeout=10)  # idle gaps: someone waits on the socket
    assert taken.wait_count(n, timeout=30)
    stop.set()
    client.close(timeout=5)  # ends the get() without a timeout
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert sorted(taken.snapshot()) == list(range(n))  # each once
    for name, mine in per_thread.items():
        assert mine == sorted(mine), f"{name} took them out of order"
    assert sum(waits.entered.get(t.name, 0) for t in threads) > 0


@pytest.mark.timeout(30)
def test_ctrl_c_while_get_waits_on_the_socket_loses_nothing(
    tether_server: TetherServer, waits: SocketWaits, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    sub = client.subscribe("c")
    seen = Recorder()
    client.subscribe("c", seen)  # read by whoever holds the turn, run on the dispatcher
    client.connect(wait=True, timeout=10)
    assert wait_subscribed(tether_server, "c")
    me = threading.current_thread()
    assert me is threading.main_thread()  # only the main thread gets Ctrl-C

    def press_ctrl_c() -> None:
        if on_the_socket(waits, me.name, lambda: tether_server.broadcast("c", POKE)):
            signal.pthread_kill(me.ident or 0, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        while True:  # Ctrl-C comes while get() waits on the socket
            assert sub.get(timeout=10) == POKE
    presser.join(5)
    # Nothing is stuck: the I/O thread reads for the callback subscription...
    for i in range(3):
        assert tether_server.broadcast("c", i) == 1
    assert seen.wait_for(lambda items: len(unpoked(items)) >= 3, timeout=5), "inbound stalled"
    assert unpoked(seen.snapshot()) == [0, 1, 2]
    # ...and the interrupted consumer gets every message, once, in order.
    assert next_unpoked(sub, 3) == [0, 1, 2]
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.05)
    assert client.stats().reconnects == 0
    client.send("after", channel="c").result(timeout=5)
    assert sub.get(timeout=5) == "after"


@pytest.mark.timeout(30)
def test_ctrl_c_just_as_get_takes_the_socket_out_of_the_selector_stalls_nothing(
    tether_server: TetherServer,
    waits: SocketWaits,
    make_client: Callable[..., TetherClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ctrl-C lands between two bytecodes: here, just after read_now took the
    # socket out of the I/O thread's selector, before it waits on it. The socket
    # must go back: the I/O thread (heartbeat off: no deadline wakes it) still
    # reads for everyone else.
    client = make_client(tether_server.url)
    sub = client.subscribe("c")
    seen = Recorder()
    client.subscribe("c", seen)
    client.connect(wait=True, timeout=10)
    assert wait_subscribed(tether_server, "c")
    me = threading.current_thread()
    armed = threading.Event()
    armed.set()
    watch = poller_mod.Poller.watch

    def interrupted(self: poller_mod.Poller, link: transport.Link, mask: int) -> None:
        watch(self, link, mask)
        if mask == 0 and threading.current_thread() is me and armed.is_set():
            armed.clear()
            raise KeyboardInterrupt

    monkeypatch.setattr(poller_mod.Poller, "watch", interrupted)
    poked = threading.Event()

    def poker() -> None:
        # A get() that found the turn taken waits as a plain waiter: poke it.
        while armed.is_set() and not poked.wait(0.5):
            tether_server.broadcast("c", POKE)

    thread = threading.Thread(target=poker)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            while True:
                assert sub.get(timeout=10) == POKE
    finally:
        poked.set()
        thread.join(5)
    assert not armed.is_set()
    for i in range(3):
        assert tether_server.broadcast("c", i) == 1
    assert seen.wait_for(lambda items: len(unpoked(items)) >= 3, timeout=5), "inbound stalled"
    assert unpoked(seen.snapshot()) == [0, 1, 2]
    assert next_unpoked(sub, 3) == [0, 1, 2]


class InterruptedTurn:
    """The loop's turn, but a Ctrl-C lands as the main thread's ``acquire()`` returns.

    CPython runs signal handlers after a call returns, before its result is
    stored: a ``KeyboardInterrupt`` raised there loses the result, not the lock.
    """

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.armed = threading.Event()  # set: the next successful take is interrupted

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = bool(self.lock.acquire(blocking, timeout))
        if got and self.armed.is_set() and threading.current_thread() is threading.main_thread():
            self.armed.clear()
            raise KeyboardInterrupt
        return got

    def release(self) -> None:
        self.lock.release()

    def _is_owned(self) -> bool:
        return bool(self.lock._is_owned())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["send", "get"])
def test_ctrl_c_as_a_caller_takes_the_turn_leaves_the_turn_free(
    tether_server: TetherServer, make_client: Callable[..., TetherClient], where: str
) -> None:
    # Heartbeat off: if the turn stayed taken, nothing would ever show it but
    # the silence (no reads, no writes) and a close() that times out.
    client = make_client(tether_server.url)
    seen = Recorder()
    client.subscribe("c", seen)
    inbox = client.subscribe("q")
    client.connect(wait=True, timeout=10)
    assert wait_subscribed(tether_server, "q")
    loop = client._loop._loop
    turn = loop.turn = InterruptedTurn(loop.turn)  # white-box: the same lock, wrapped
    turn.armed.set()
    pause = threading.Event()
    for attempt in range(2000):  # until one take of the turn was interrupted
        try:
            if where == "send":
                client.send(f"s{attempt}", channel="c")
                pause.wait(0.001)  # pacing: the next send comes after a pause
            else:
                inbox.get(timeout=0.01)
        except KeyboardInterrupt:
            break
        except TimeoutError:
            pass
    assert not turn.armed.is_set(), "the turn was never free for the caller"
    # The I/O thread still has its turn: it reads, writes and closes.
    assert tether_server.broadcast("c", "after") == 1
    assert seen.wait_for(lambda items: "after" in items, timeout=5), "the loop is stuck"
    client.send("last", channel="q").result(timeout=5)
    assert client.close(timeout=5) is True


@pytest.mark.timeout(30)
@pytest.mark.parametrize("echo", ["ws"], indirect=True)
def test_without_poll_a_consumer_leaves_the_selector_alone(
    echo: Dict[str, Any],
    make_client: Callable[..., TetherClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where select.poll is missing (Windows) a consumer cannot wait on the
    # socket: it must not take the socket out of the I/O thread's selector
    # either (a SelectSelector changed while another thread waits in it).
    monkeypatch.setattr(poller_mod, "_POLL", None)
    changes: List[str] = []
    watch = poller_mod.Poller.watch

    def recorded(self: poller_mod.Poller, link: transport.Link, mask: int) -> None:
        if threading.current_thread().name != IO_THREAD:
            changes.append(threading.current_thread().name)
        watch(self, link, mask)

    monkeypatch.setattr(poller_mod.Poller, "watch", recorded)
    client = make_client(echo["url"], protocol="raw", sslopt=echo["sslopt"])
    inbox = client.subscribe("default")
    client.connect(wait=True, timeout=10)
    for i in range(100):
        client.send(f"r{i}")
        assert inbox.get(timeout=10) == f"r{i}"  # the I/O thread reads them all
    assert not changes, f"{len(changes)} selector changes from {set(changes)}"
