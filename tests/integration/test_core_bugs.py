"""One test per bug of issue 9's "Why" list, with real threads, sockets and the bundled server."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from typing import Any, Callable, List

import pytest
from support.raw_server import ScriptedPeer
from support.recorder import Recorder, wait_subscribed

from tether_sync import Auth, AuthError, ClientClosed, Heartbeat, TetherClient
from tether_sync.engine import transport
from tether_sync.server import TetherServer, mint_token

FAST = {"base_delay": 0.02, "max_delay": 0.1}


def echo_works(client: TetherClient, server: TetherServer, channel: str) -> None:
    inbox = client.subscribe(channel)
    assert wait_subscribed(server, channel)
    client.send({"still": "alive"}, channel=channel).result(timeout=5)
    assert inbox.get(timeout=5) == {"still": "alive"}


# ---------------------------------------------------------------- a ping that broke the encoder


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "ts",
    ["NaN", "Infinity", "-Infinity", "1e999", '"\\ud800"', "[NaN]", "7" * 4000],
    ids=["nan", "inf", "-inf", "1e999", "lone-surrogate", "nested-nan", "huge-int"],
)
def test_a_hostile_ping_ts_never_kills_the_client(
    tether_server: TetherServer, make_client: Callable[..., TetherClient], ts: str
) -> None:
    client = make_client(tether_server.url)
    closes = Recorder()
    client.on("close", closes)
    client.connect(wait=True, timeout=5)
    before = len(tether_server.received(type="tether:pong"))
    assert tether_server.send_raw_all('{"type":"tether:ping","ts":' + ts + "}") == 1
    assert tether_server.wait_for(
        lambda: len(tether_server.received(type="tether:pong")) > before, timeout=5
    ), "the ping was not answered"
    pong = tether_server.received(type="tether:pong")[-1]
    assert isinstance(pong.raw, str)
    json.loads(pong.raw, parse_constant=lambda name: pytest.fail(f"{name} in a pong"))
    assert client._loop.thread is not None and client._loop.thread.is_alive()
    assert client.state == "open"
    echo_works(client, tether_server, "after-ping")
    assert closes.snapshot() == []


# ---------------------------------------------------------------- heartbeat timeout >= interval


@pytest.mark.timeout(30)
@pytest.mark.parametrize("hb", [(1.0, 1.5), (0.5, 0.5), (0.3, 1.0)], ids=str)
def test_a_timeout_at_or_above_the_interval_detects_a_blackholed_server(
    tether_server: TetherServer, make_client: Callable[..., TetherClient], hb: Any
) -> None:
    interval, timeout = hb
    client = make_client(tether_server.url, heartbeat=Heartbeat(interval=interval, timeout=timeout))
    closes = Recorder()
    client.on("close", closes)
    client.connect(wait=True, timeout=5)
    started = time.monotonic()
    tether_server.blackhole(True)
    assert closes.wait_count(1, timeout=interval + timeout + 10)
    elapsed = time.monotonic() - started
    first = closes.snapshot()[0]
    assert (first.code, first.was_clean) == (4000, False)
    # Detected at all (the bug: never), within a generous wall-clock bound. The exact
    # deadline (ping + timeout, then the 0.25 s close grace), timeout >= interval included,
    # is in tests/protocol/: test_session_timing.py::
    # test_a_silent_peer_is_closed_exactly_at_the_pong_deadline
    assert elapsed <= interval + timeout + 5.0, elapsed
    tether_server.blackhole(False)
    client.wait_open(timeout=10)
    echo_works(client, tether_server, "after-blackhole")


# ---------------------------------------------------------------- a trickled never-ending frame


class TricklingPeer(ScriptedPeer):
    """After each handshake: the header of a 1 MB binary frame, then one byte per 0.1 s."""

    threaded = True

    def __init__(self) -> None:
        self.done = threading.Event()
        self.connections = 0
        super().__init__(b"")

    def close(self) -> None:
        self.done.set()
        super().close()

    def _talk(self, conn: socket.socket) -> None:
        with self._cond:
            self.connections += 1
        with conn:
            conn.settimeout(10)
            self._handshake(conn)
            conn.sendall(b"\x82\x7f" + (10**6).to_bytes(8, "big"))
            while not self.done.wait(0.1):  # the server's pace, not a test wait
                conn.sendall(b"x")


@pytest.mark.timeout(30)
def test_a_trickled_never_ending_frame_is_detected_as_dead(
    make_client: Callable[..., TetherClient],
) -> None:
    peer = TricklingPeer()
    try:
        client = make_client(
            peer.url, protocol="raw", heartbeat=Heartbeat(interval=0.5, timeout=0.5)
        )
        opens, closes = Recorder(), Recorder()
        client.on("open", lambda e: opens(time.monotonic()))
        client.on("close", lambda e: closes((time.monotonic(), e)))
        client.connect(wait=True, timeout=5)
        assert closes.wait_count(1, timeout=10), "a trickling peer kept the link alive"
        at, event = closes.snapshot()[0]
        assert (event.code, event.was_clean) == (4000, False)
        # A generous wall-clock bound; exactly at ping + timeout however the bytes trickle:
        # tests/protocol/test_session_timing.py::test_a_trickled_frame_never_moves_a_deadline
        assert at - opens.snapshot()[0] <= 0.5 + 0.5 + 5.0
        assert client._loop.thread is not None and client._loop.thread.is_alive()
    finally:
        peer.close()


# ---------------------------------------------------------------- a dispatcher that raises


class DyingDispatcher:
    """Runs tasks on a thread of its own until ``after`` calls, then raises (a destroyed window)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError("main thread is not in main loop")
        threading.Thread(target=fn, name="user-dispatch", daemon=True).start()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("after", [0, 3])
def test_a_dispatcher_that_raises_never_kills_the_client(
    tether_server: TetherServer, make_client: Callable[..., TetherClient], after: int
) -> None:
    client = make_client(tether_server.url, dispatcher=DyingDispatcher(after))
    errors, threads, got = Recorder(), Recorder(), Recorder()
    client.on("error", errors)
    client.on("open", lambda e: threads(threading.current_thread().name))
    client.subscribe("d", lambda payload: got((payload, threading.current_thread().name)))
    client.connect(wait=True, timeout=5)
    assert wait_subscribed(tether_server, "d")
    deliveries = [client.send(i, channel="d") for i in range(10)]
    for d in deliveries:
        d.result(timeout=5)
    assert got.wait_count(10, timeout=5), got.snapshot()
    for i in range(10, 20):  # one dispatch each: the dispatcher dies on the way
        client.send(i, channel="d").result(timeout=5)
        assert got.wait_count(i + 1, timeout=5), got.snapshot()
    assert [p for p, _ in got.snapshot()] == list(range(20)), "callbacks in order, none lost"
    assert "tether-dispatch-fallback" in {name for _, name in got.snapshot()}
    assert errors.wait_for(lambda items: any(isinstance(e.error, RuntimeError) for e in items))
    assert client.state == "open"
    assert client._loop.thread is not None and client._loop.thread.is_alive()
    # The link still works after a reconnect, and close() is honest.
    tether_server.connections[0].drop()
    client.wait_open(timeout=10)
    assert client.send("late", channel="d").result(timeout=5) is None
    assert client.close(timeout=5) is True
    assert client.state == "closed"


# ---------------------------------------------------------------- connect_timeout


@pytest.mark.parametrize("value", [math.inf, 1e300, math.nan, -math.inf, 0.0, -1.0])
def test_an_absurd_connect_timeout_is_a_value_error_naming_it(value: float) -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        TetherClient("ws://127.0.0.1:9/", connect_timeout=value)


@pytest.mark.parametrize(
    "options, name",
    [
        ({"heartbeat": {"interval": math.inf, "timeout": 1.0}}, "heartbeat.interval"),
        ({"heartbeat": {"interval": 1.0, "timeout": math.nan}}, "heartbeat.timeout"),
        ({"reconnect": {"base_delay": math.nan}}, "reconnect.base_delay"),
        ({"reconnect": {"max_delay": math.inf}}, "reconnect.max_delay"),
    ],
)
def test_every_float_option_must_be_finite(options: Any, name: str) -> None:
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        TetherClient("ws://127.0.0.1:9/", **options)


# ---------------------------------------------------------------- calls racing the loop's end


def _tokens() -> str:
    return mint_token("racer", ttl=300)


def _race_close(client: TetherClient, channel: str, outcomes: List[str]) -> List[str]:
    """Start flush, refresh_auth, subscribe+get and a Delivery wait with close(); the hung ones."""
    start = threading.Barrier(5)
    lock = threading.Lock()

    def call(name: str, fn: Callable[[], Any]) -> None:
        start.wait(5)
        try:
            fn()
            result = "ok"
        except (ClientClosed, AuthError, TimeoutError) as exc:
            result = type(exc).__name__
        with lock:
            outcomes.append(f"{name}:{result}")

    def subscribe_and_get() -> None:
        client.subscribe(channel).get(timeout=None)

    calls: List[Any] = [
        ("flush", lambda: client.flush(timeout=None)),
        ("refresh", lambda: client.refresh_auth(timeout=None)),
        ("subscribe", subscribe_and_get),
        ("send", lambda: client.send("x", channel="c").result(timeout=None)),
    ]
    workers = [threading.Thread(target=call, args=c, daemon=True) for c in calls]
    for w in workers:
        w.start()
    start.wait(5)
    client.close(timeout=5)
    for w in workers:
        w.join(10)
    return [w.name for w in workers if w.is_alive()]


@pytest.mark.timeout(60)
def test_calls_posted_as_the_loop_stops_never_hang(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(require_auth=True)
    outcomes: List[str] = []
    for round_ in range(8):
        client = make_client(server.url, auth=Auth(_tokens))
        client.connect(wait=True, timeout=5)
        hung = _race_close(client, f"r{round_}", outcomes)
        assert not hung, f"round {round_}: calls never answered after close(): {outcomes}"
    assert len(outcomes) == 32


# ---------------------------------------------------------------- no syscalls off the I/O thread


@pytest.mark.timeout(30)
def test_buffered_amount_and_stats_make_no_system_call_from_user_threads(
    tether_server: TetherServer,
    make_client: Callable[..., TetherClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    callers: List[threading.Thread] = []
    real = transport.kernel_unsent

    def recording(sock: socket.socket) -> int:
        callers.append(threading.current_thread())
        return real(sock)

    monkeypatch.setattr(transport, "kernel_unsent", recording)
    client = make_client(tether_server.url)
    client.connect(wait=True, timeout=5)
    sends = [client.send("x" * 1000, channel="load") for _ in range(2000)]
    readings = []
    for _ in range(500):
        readings.append(client.buffered_amount)
        readings.append(client.stats().buffered_amount)
    for d in sends:
        d.result(timeout=10)
    assert callers, "the I/O thread never read the kernel's unsent bytes"
    assert set(callers) == {client._loop.thread}, {t.name for t in callers}
    assert all(isinstance(r, int) and r >= 0 for r in readings)


# ---------------------------------------------------------------- the second auth refusal


@pytest.mark.timeout(30)
def test_the_second_auth_refusal_emits_a_close_event_with_1008(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(require_auth=True)
    calls = []

    def expired() -> str:
        calls.append(1)
        return mint_token("late", ttl=-60.0)  # the server answers ok:false

    client = make_client(server.url, auth=Auth(expired))
    closes, states = Recorder(), Recorder()
    client.on("close", closes)
    client.on("state_change", lambda e: states(e.current))
    with pytest.raises(AuthError):
        client.connect(wait=True, timeout=10)
    assert closes.wait_count(1, timeout=5), "no close event after the final refusal"
    (close,) = closes.snapshot()
    assert close.code == 1008
    assert states.wait_for(lambda items: "closed" in items)
    assert len(calls) == 2
    assert client.state == "closed"
