"""Reconnection: backoff announcements, give-up, re-subscribe and replay, close() bounds."""

from __future__ import annotations

import random
from typing import Any, Callable, List

import pytest
from support.recorder import Recorder, client_threads, wait_subscribed

from tether_sync import (
    ClientClosed,
    CloseEvent,
    ConnectTimeout,
    ProtocolError,
    ReconnectingEvent,
    TetherClient,
    TetherError,
)
from tether_sync.server import TetherServer


class BoundsRng(random.Random):
    """A seeded RNG that records the bounds of every uniform() it is asked for."""

    def __init__(self) -> None:
        super().__init__(7)
        self.bounds: List[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return super().uniform(a, b)


@pytest.mark.timeout(30)
def test_nothing_listening_announces_attempts_then_gives_up(
    dead_url: str, make_client: Callable[..., TetherClient]
) -> None:
    rng = BoundsRng()
    client = make_client(
        dead_url,
        reconnect={"base_delay": 0.01, "max_delay": 0.05, "max_attempts": 3},
        rng=rng,
    )
    attempts = Recorder()
    errors = Recorder()
    closed = Recorder()
    client.on("reconnecting", attempts)
    client.on("error", errors)
    client.on("state_change", lambda e: e.current == "closed" and closed(e))
    client.connect()
    assert closed.wait_count(1, timeout=10)
    events: List[ReconnectingEvent] = attempts.snapshot()
    assert [e.attempt for e in events] == [1, 2, 3]
    for e in events:
        cap = min(0.05, 0.01 * 2**e.attempt)
        assert 0.0 <= e.delay <= cap
    assert rng.bounds == [(0.0, min(0.05, 0.01 * 2**n)) for n in (1, 2, 3)]
    assert client.state == "closed"
    assert errors.wait_count(1)
    err = errors.snapshot()[-1].error
    assert isinstance(err, TetherError) and "3 reconnection attempt" in str(err)
    with pytest.raises(ClientClosed):
        client.send("x")


@pytest.mark.timeout(30)
def test_connect_wait_raises_when_attempts_run_out(
    dead_url: str, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(dead_url, reconnect={"base_delay": 0.01, "max_attempts": 1})
    with pytest.raises(TetherError):
        client.connect(wait=True, timeout=10)
    assert client.state == "closed"


@pytest.mark.timeout(30)
def test_connect_wait_times_out(dead_url: str, make_client: Callable[..., TetherClient]) -> None:
    client = make_client(dead_url, reconnect={"base_delay": 0.01, "max_delay": 0.02})
    with pytest.raises(ConnectTimeout):
        client.connect(wait=True, timeout=0.3)
    assert client.state in ("connecting", "reconnecting")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fault", ["force-close", "drop"])
def test_loss_reconnects_resubscribes_and_replays(
    fault: str, tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    news = client.subscribe("news")
    closes = Recorder()
    attempts = Recorder()
    client.on("close", closes)
    client.on("reconnecting", attempts)
    client.connect(wait=True, timeout=5)
    assert wait_subscribed(tether_server, "news")
    first = tether_server.connections[0]
    # Hold the server's replies so sends made now are queued on our side while
    # the link goes down, then count on the replay.
    if fault == "force-close":
        client.send({"type": "tether:control", "action": "force-close"}, channel="ctl")
    else:
        assert tether_server.drop_all() == 1
    assert closes.wait_count(1)
    close: CloseEvent = closes.snapshot()[0]
    if fault == "force-close":
        assert (close.code, close.reason, close.was_clean) == (1000, "Server forced close", True)
    else:
        assert close.code == 1006 and not close.was_clean
    for i in range(20):
        client.send(i, channel="news")
    assert attempts.wait_count(1)
    assert tether_server.wait_for_data(20, timeout=10, channel="news")
    assert tether_server.data_payloads("news") == list(range(20))
    # The subscription was announced again on the new connection, before the replay.
    second = next(c for c in tether_server.connections if c.id != first.id)
    kinds = [r.type for r in tether_server.received(second)]
    assert kinds.index("subscribe") < kinds.index("data")
    assert "news" in second.subscriptions
    # And server-initiated messages on the channel reach the subscriber.
    while True:  # skip the echoes of our own sends
        if news.get(timeout=5) == 19:
            break
    assert tether_server.broadcast("news", {"hello": 1}) == 1
    assert news.get(timeout=5) == {"hello": 1}
    assert client.stats().reconnects == 1


@pytest.mark.timeout(30)
def test_terminal_close_code_stops_retrying(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(
        tether_server.url, reconnect={"base_delay": 0.01, "terminal_codes": {1000}}
    )
    states = Recorder()
    client.on("state_change", lambda e: states(e.current))
    client.connect(wait=True, timeout=5)
    client.send({"type": "tether:control", "action": "force-close"}, channel="ctl")
    assert states.wait_for(lambda s: "closed" in s)
    assert "reconnecting" not in states.snapshot()


def _assert_closes_within(client: TetherClient, timeout: float) -> None:
    import time

    started = time.monotonic()
    client.close(timeout=timeout)
    elapsed = time.monotonic() - started
    # close() returns, and not absurdly late (a wall-clock sanity bound: a loaded machine
    # must not fail it). That draining plus the closing handshake never pass the deadline
    # is exact in tests/unit/test_close_and_retry_timing.py
    # (test_the_closing_handshake_grace_fits_inside_the_deadline) and the grace itself in
    # tests/protocol/test_session_timing.py::test_our_close_ends_exactly_after_its_grace.
    assert elapsed < timeout + 5.0, f"close() took {elapsed:.2f}s"
    assert client.state == "closed"
    assert client_threads() == [], client_threads()


@pytest.mark.timeout(30)
def test_close_in_every_state(
    tether_server: TetherServer, dead_url: str, make_client: Callable[..., TetherClient]
) -> None:
    idle = make_client(tether_server.url)
    _assert_closes_within(idle, 1.0)

    # Connecting to a blackholed server: TCP is accepted, the handshake hangs.
    tether_server.blackhole(True)
    connecting = make_client(tether_server.url, connect_timeout=30)
    connecting.connect()
    assert tether_server.wait_for(lambda: tether_server.tcp_connection_count >= 1, 5)
    assert connecting.state == "connecting"
    _assert_closes_within(connecting, 1.0)
    tether_server.blackhole(False)

    reconnecting = make_client(dead_url, reconnect={"base_delay": 5.0, "max_delay": 10.0})
    seen = Recorder()
    reconnecting.on("reconnecting", seen)
    reconnecting.connect()
    assert seen.wait_count(1)
    _assert_closes_within(reconnecting, 1.0)

    flooded = make_client(tether_server.url, backpressure={"inbound_buffer_size": 10})
    got = Recorder()
    flooded.subscribe("flood", got)
    flooded.connect(wait=True, timeout=5)
    flooded.send({"type": "tether:control", "action": "flood", "count": 1000}, channel="ctl")
    assert got.wait_count(1)
    _assert_closes_within(flooded, 2.0)


@pytest.mark.timeout(30)
def test_close_from_a_handler_does_not_deadlock(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    results = Recorder()
    client.on("open", lambda e: results(client.close(timeout=1)))
    client.connect()
    assert results.wait_count(1)
    assert results.snapshot() == [False]  # cannot wait for itself: returns at once
    assert client.close(timeout=3) in (True, False)
    assert client.state == "closed"


@pytest.mark.timeout(30)
def test_bad_url_and_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="ws://"):
        TetherClient("http://example.com/")
    with pytest.raises(TypeError, match="url"):
        TetherClient(1234)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reconnect\.base_delay"):
        TetherClient("ws://127.0.0.1:1/", reconnect={"base_delay": -1})
    with pytest.raises(TypeError, match="queue: unknown option"):
        TetherClient("ws://127.0.0.1:1/", queue={"maxsize": 3})
    with pytest.raises(ValueError, match=r"backpressure\.inbound_overflow"):
        TetherClient("ws://127.0.0.1:1/", backpressure={"inbound_overflow": "spill"})
    with pytest.raises(ValueError, match="protocol"):
        TetherClient("ws://127.0.0.1:1/", protocol="mqtt")
    with pytest.raises(TypeError, match="headers"):
        TetherClient("ws://127.0.0.1:1/", headers=["X: y"])  # type: ignore[arg-type]
    client = TetherClient("ws://127.0.0.1:1/")
    with pytest.raises(TypeError):
        client.send(object())
    with pytest.raises(ValueError):
        client.send(float("nan"))
    with pytest.raises(ValueError, match="unknown event"):
        client.on("opened", print)
    client.close()


@pytest.mark.timeout(30)
def test_unknown_inbound_frames_become_message_events(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    messages = Recorder()
    closes = Recorder()
    client.on("message", messages)
    client.on("close", closes)
    client.connect(wait=True, timeout=5)
    # The server acknowledges controls with tether:control-ack: no Tether message
    # the client knows, so it is surfaced unchanged.
    client.send({"type": "tether:control", "action": "set-latency", "ms": 0}, channel="ctl")
    assert messages.wait_for(lambda items: any(m.channel is None for m in items))
    ack = next(m for m in messages.snapshot() if m.channel is None)
    assert '"tether:control-ack"' in ack.payload
    assert tether_server.send_raw_all("this is not json") >= 1
    assert tether_server.send_raw_all(b"\x00\x01binary") >= 1
    assert messages.wait_for(lambda items: any(m.payload == "this is not json" for m in items))
    assert messages.wait_for(lambda items: any(m.payload == b"\x00\x01binary" for m in items))
    client.send("still here", channel="c")
    assert messages.wait_for(lambda items: any(m.payload == "still here" for m in items))
    assert closes.snapshot() == []
    assert client.state == "open"


@pytest.mark.timeout(30)
def test_raising_callback_becomes_error_event_and_dispatch_goes_on(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    errors = Recorder()
    got = Recorder()
    client.on("error", errors)

    def callback(payload: Any) -> None:
        if payload == 1:
            raise RuntimeError("boom")
        got(payload)

    client.subscribe("cb", callback)
    client.connect(wait=True, timeout=5)
    for i in range(3):
        client.send(i, channel="cb")
    assert got.wait_count(2)
    assert got.snapshot() == [0, 2]
    assert errors.wait_count(1)
    assert isinstance(errors.snapshot()[0].error, RuntimeError)
    assert client.state == "open"


@pytest.mark.timeout(30)
def test_subscription_queue_iteration_ends_on_unsubscribe(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    sub = client.subscribe("it")
    client.connect(wait=True, timeout=5)
    for i in range(3):
        client.send(i, channel="it")
    seen: List[Any] = []
    for payload in sub:
        seen.append(payload)
        if len(seen) == 3:
            sub.unsubscribe()
    assert seen == [0, 1, 2]
    assert tether_server.wait_for(lambda: "it" not in tether_server.connections[0].subscriptions, 5)
    with pytest.raises(TimeoutError):
        client.subscribe("other").get(timeout=0.05)


@pytest.mark.timeout(30)
def test_dns_failure_goes_through_the_reconnect_path(
    make_client: Callable[..., TetherClient],
) -> None:
    # .invalid never resolves (RFC 2606): getaddrinfo fails at once.
    client = make_client(
        "ws://tether-sync-test.invalid:8765/",
        reconnect={"base_delay": 0.01, "max_delay": 0.02, "max_attempts": 2},
    )
    attempts = Recorder()
    errors = Recorder()
    client.on("reconnecting", attempts)
    client.on("error", errors)
    with pytest.raises(TetherError, match="2 reconnection attempt"):
        client.connect(wait=True, timeout=20)
    assert [e.attempt for e in attempts.snapshot()] == [1, 2]


@pytest.mark.timeout(30)
def test_server_pings_are_answered_with_the_same_ts(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    client.connect(wait=True, timeout=5)
    assert tether_server.wait_for_connections(1)
    assert tether_server.send_raw_all({"type": "tether:ping", "ts": 777}) == 1
    assert tether_server.wait_for(lambda: bool(tether_server.received(type="tether:pong")), 5)
    assert tether_server.received(type="tether:pong")[0].message == {
        "type": "tether:pong",
        "ts": 777,
    }


@pytest.mark.timeout(30)
def test_tether_error_from_the_server_becomes_an_error_event(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    from tether_sync import ServerError

    server = make_server(require_auth=True)
    client = make_client(server.url)  # no auth: the server refuses our data
    errors = Recorder()
    client.on("error", errors)
    client.connect(wait=True, timeout=5)
    delivery = client.send("refused", channel="c")
    assert errors.wait_count(1)
    error = errors.snapshot()[0].error
    assert isinstance(error, ServerError)
    assert error.message_id == delivery.id and "auth" in error.reason
    assert client.state == "open"


@pytest.mark.timeout(30)
def test_oversized_message_closes_with_1009_and_reconnects(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url, max_message_size=1024)
    errors = Recorder()
    opens = Recorder()
    closes = Recorder()
    client.on("error", errors)
    client.on("open", opens)
    client.on("close", closes)
    client.connect(wait=True, timeout=5)
    assert tether_server.wait_for_connections(1)
    first = tether_server.connections[0]
    assert tether_server.send_raw_all("x" * 5000) == 1
    assert tether_server.wait_for(lambda: first.close_code is not None, 5)
    assert first.close_code == 1009  # we told the server why
    assert errors.wait_count(1)
    error = errors.snapshot()[0].error
    assert isinstance(error, ProtocolError) and error.close_code == 1009
    assert "max_message_size" in str(error)
    assert opens.wait_count(2)  # and came back
    inbox = client.subscribe("after")
    client.send("small again", channel="after")
    assert inbox.get(timeout=5) == "small again"


@pytest.mark.timeout(30)
def test_websocket_pings_from_the_server_are_answered(
    make_client: Callable[..., TetherClient],
) -> None:
    import asyncio

    from websockets.asyncio.server import ServerConnection as AsyncConnection
    from websockets.asyncio.server import serve as aserve

    answered = Recorder()
    ready = Recorder()

    async def main() -> None:
        done = asyncio.Event()

        async def handler(conn: AsyncConnection) -> None:
            for i in range(3):
                pong = await conn.ping(f"probe-{i}".encode())
                answered(await asyncio.wait_for(pong, 5))  # latency in seconds
            done.set()
            await conn.wait_closed()

        async with aserve(handler, "127.0.0.1", 0) as server:
            ready(server.sockets[0].getsockname()[1])
            await asyncio.wait_for(done.wait(), 20)

    import threading

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait_count(1)
    client = make_client(f"ws://127.0.0.1:{ready.snapshot()[0]}/", protocol="raw")
    client.connect(wait=True, timeout=5)
    assert answered.wait_count(3, timeout=10)
    thread.join(5)


def test_connect_wait_returns_against_a_server_that_closes_at_once(
    make_client: Callable[..., TetherClient],
) -> None:
    """An open that is over before the waiting thread wakes still counts as open.

    The server answers the upgrade and sends a close frame in the same write, so
    the client is open for a moment only, then reconnecting.
    """
    import socket
    import struct

    from support.listener import Listener
    from support.raw_server import accept_value, read_request, server_frame

    accepted = Recorder()

    def close_at_once(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            request = read_request(conn)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept_value(key)
                + b"\r\n\r\n"
                + server_frame(0x8, struct.pack("!H", 1001))  # close, in the same write
            )
            accepted(1)

    listener = Listener(close_at_once, name="closer")
    try:
        for _ in range(3):
            client = make_client(listener.url, protocol="raw")
            client.connect(wait=True, timeout=10)  # must not raise ConnectTimeout
            client.close(timeout=5)
        assert len(accepted.snapshot()) >= 3
    finally:
        listener.close()
