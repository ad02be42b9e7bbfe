"""Lossless by default (issue 10): default options, loads a real script makes.

Every test here uses the client's default options unless it says otherwise,
against the bundled server (in-process, or a ``tether-sync serve`` subprocess
where the in-process server would be the bottleneck).
"""

from __future__ import annotations

import http.server
import logging
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import pytest
from support.listener import Listener
from support.raw_server import _read_frame, accept_handshake, server_frame
from support.recorder import Recorder, eventually
from support.serve_process import ServeProcess

from tether_sync import Auth, AuthError, QueueFull, TetherClient, TetherError
from tether_sync.server import TetherServer

FLOOD_1000 = {"type": "tether:control", "action": "flood", "count": 1000}


@pytest.fixture
def clients() -> Iterator[List[TetherClient]]:
    made: List[TetherClient] = []
    yield made
    for client in made:
        client.close(timeout=3)


def _client(made: List[TetherClient], url: str, **options: Any) -> TetherClient:
    client = TetherClient(url, **options)
    made.append(client)
    return client


# ---------------------------------------------------------------- outbound


@pytest.mark.timeout(180)
def test_200k_sends_in_a_loop_then_close_deliver_everything_in_order(
    tmp_path: Path, clients: List[TetherClient]
) -> None:
    server = ServeProcess(record=tmp_path / "record.jsonl").start()
    try:
        client = _client(clients, server.url)
        client.connect(wait=True, timeout=10)
        for n in range(200_000):
            client.send(n, channel="bulk")
        assert client.close(timeout=150) is True
        got = [r["payload"] for r in server.records() if r["channel"] == "bulk"]
        assert len(got) == 200_000
        assert got == list(range(200_000))
        stats = client.stats()
        assert stats.dropped_outbound == 0
        assert stats.sent == 200_000
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_send_loop_faster_than_the_link_waits_for_room_instead_of_dropping(
    tether_server: TetherServer, clients: List[TetherClient]
) -> None:
    client = _client(clients, tether_server.url)
    client.connect(wait=True, timeout=5)
    tether_server.pause_reading(True)
    deliveries = []
    waited = threading.Event()

    def producer() -> None:
        for n in range(20_000):
            deliveries.append(client.send({"n": n, "pad": "x" * 200}, channel="q"))
        waited.set()

    thread = threading.Thread(target=producer)
    thread.start()
    # The server does not read: the producer is held at the bound, nothing dropped.
    assert eventually(lambda: client.queue_depth + client.stats().in_flight >= 1000)
    assert not waited.wait(0.3)
    assert client.stats().dropped_outbound == 0
    assert client.queue_depth + client.stats().in_flight <= 1000 + 512
    tether_server.pause_reading(False)
    thread.join(30)
    assert waited.is_set()
    assert client.flush(timeout=30) is True
    assert [p["n"] for p in tether_server.data_payloads("q")] == list(range(20_000))
    assert all(d.done() and d.exception() is None for d in deliveries)


@pytest.mark.timeout(60)
def test_queue_false_is_bounded_while_open_and_raises_only_when_not_open(
    tether_server: TetherServer, clients: List[TetherClient], dead_url: str
) -> None:
    client = _client(clients, tether_server.url, queue=False)
    client.connect(wait=True, timeout=5)
    tether_server.pause_reading(True)
    accepted = 0
    with pytest.raises(QueueFull):
        for n in range(300_000):
            client.send({"n": n, "pad": "y" * 1000}, channel="nq", timeout=0.5)
            accepted += 1
    # Bounded by the same flow control as the queue (1000 messages held at most).
    assert accepted <= 1000 + 512
    assert client.queue_depth + client.stats().in_flight <= 1000 + 512
    tether_server.pause_reading(False)
    assert client.flush(timeout=30)
    offline = _client(clients, dead_url, queue=False)
    with pytest.raises(QueueFull, match="not open"):
        offline.send("x")


@pytest.mark.timeout(60)
def test_offline_drops_fail_their_delivery_log_once_and_make_flush_false(
    dead_url: str, clients: List[TetherClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(clients, dead_url, queue={"max_size": 10, "overflow": "drop-oldest"})
    client.connect()
    with caplog.at_level(logging.WARNING, logger="tether_sync"):
        deliveries = [client.send(n) for n in range(25)]
    dropped = [d for d in deliveries if d.done()]
    assert len(dropped) == 15 and all(isinstance(d.exception(), QueueFull) for d in dropped)
    assert client.stats().dropped_outbound == 15
    warnings = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(warnings) == 1
    assert client.flush(timeout=0.2) is False


@pytest.mark.timeout(60)
def test_block_policy_waits_for_room_even_offline(
    dead_url: str, clients: List[TetherClient]
) -> None:
    client = _client(clients, dead_url, queue={"max_size": 5, "overflow": "block"})
    client.connect()
    for n in range(5):
        client.send(n)
    with pytest.raises(QueueFull, match="no room"):
        client.send(5, timeout=0.2)
    assert client.stats().dropped_outbound == 0


# ---------------------------------------------------------------- inbound


def _flood_into(
    server: TetherServer, made: List[TetherClient], callback: Callable[[Any], None], **opts: Any
) -> TetherClient:
    client = _client(made, server.url)
    client.subscribe("flood", callback, **opts)
    client.connect(wait=True, timeout=5)
    client.send(FLOOD_1000, channel="ctl")
    return client


@pytest.mark.timeout(60)
def test_a_burst_of_1000_into_a_fast_callback_delivers_1000(
    tether_server: TetherServer, clients: List[TetherClient]
) -> None:
    got: List[int] = []
    client = _flood_into(tether_server, clients, lambda p: got.append(p["index"]))
    assert eventually(lambda: len(got) >= 1000, timeout=20)
    assert got == list(range(1000))
    assert client.stats().dropped_inbound == 0


@pytest.mark.timeout(60)
def test_a_burst_of_1000_into_a_2ms_callback_delivers_1000(
    tether_server: TetherServer, clients: List[TetherClient]
) -> None:
    got: List[int] = []
    pause = threading.Event()

    def slow(payload: Any) -> None:
        pause.wait(0.002)  # a callback that takes 2 ms
        got.append(payload["index"])

    client = _flood_into(tether_server, clients, slow)
    assert eventually(lambda: len(got) >= 1000, timeout=30)
    assert got == list(range(1000))
    assert client.stats().dropped_inbound == 0


@pytest.mark.timeout(60)
def test_drop_oldest_opted_in_counts_and_reports_its_drops(
    tether_server: TetherServer, clients: List[TetherClient]
) -> None:
    got: List[int] = []
    pause = threading.Event()
    pressure = Recorder()

    def slow(payload: Any) -> None:
        pause.wait(0.002)
        got.append(payload["index"])

    client = _client(clients, tether_server.url)
    client.on("backpressure", pressure)
    client.subscribe("flood", slow, overflow="drop-oldest", buffer_size=10)
    client.connect(wait=True, timeout=5)
    client.send(FLOOD_1000, channel="ctl")
    assert eventually(lambda: len(got) + client.stats().dropped_inbound >= 1000, timeout=30)
    dropped = client.stats().dropped_inbound
    assert dropped > 0 and len(got) + dropped == 1000
    assert got == sorted(got) and got[-1] == 999
    assert sum(e.dropped for e in pressure.snapshot() if e.direction == "inbound") == dropped


@pytest.mark.timeout(60)
def test_echoes_of_a_replay_after_reconnect_all_arrive(
    tether_server: TetherServer, clients: List[TetherClient]
) -> None:
    got: List[int] = []
    client = _client(clients, tether_server.url, reconnect={"base_delay": 0.05})
    client.subscribe("replay", got.append)
    client.connect(wait=True, timeout=5)
    tether_server.stop()
    assert eventually(lambda: client.state != "open")
    for n in range(1000):
        client.send(n, channel="replay")  # queued while offline (1000 fit)
    tether_server.start()
    assert eventually(lambda: len(got) >= 1000, timeout=20)
    assert got == list(range(1000))


@pytest.mark.timeout(60)
def test_a_callback_that_sends_never_deadlocks_against_inbound_block(
    tether_server: TetherServer, clients: List[TetherClient]
) -> None:
    # The callback sends a reply per inbound message; the server stops reading,
    # so the outbound queue fills while inbound "block" holds reading back.
    # A send from a callback never waits (it is accepted over the bound).
    handled = Recorder()
    client = _client(clients, tether_server.url, queue={"max_size": 50})

    def reply(payload: Any) -> None:
        client.send({"re": payload["index"], "pad": "z" * 5000}, channel="replies")
        handled(payload["index"])

    client.subscribe("flood", reply, buffer_size=10)
    client.connect(wait=True, timeout=5)
    tether_server.pause_reading(True)
    tether_server.broadcast("ctl-none", None)  # the link works
    client.send(FLOOD_1000, channel="ctl")
    # The flood request itself may sit in the unread socket buffer: lift reading
    # for it only if needed, then stop again.
    if not eventually(lambda: handled.snapshot(), timeout=2):
        tether_server.pause_reading(False)
        assert handled.wait_count(1, timeout=10)
        tether_server.pause_reading(True)
    assert handled.wait_count(1000, timeout=30), "a callback send blocked the dispatcher"
    tether_server.pause_reading(False)
    assert client.close(timeout=30) is True


# ---------------------------------------------------------------- size


@pytest.mark.timeout(60)
def test_a_message_the_server_refuses_as_too_big_fails_alone_and_is_not_resent(
    make_server: Callable[..., TetherServer], clients: List[TetherClient]
) -> None:
    server = make_server(port=0, max_size=64 * 1024)
    client = _client(clients, server.url, reconnect={"base_delay": 0.05})
    closes = Recorder()
    client.on("close", closes)
    client.connect(wait=True, timeout=5)
    before = client.send("before", channel="s")
    big = client.send("x" * 200_000, channel="s")
    after = [client.send(f"after-{n}", channel="s") for n in range(5)]
    error = big.exception(timeout=10)
    assert isinstance(error, TetherError) and "1009" in str(error)
    assert before.exception(timeout=10) is None
    assert all(d.exception(timeout=10) is None for d in after)
    assert client.flush(timeout=10) is False  # a message failed since the last flush
    assert server.wait_for_data(6, timeout=10, channel="s")
    assert server.data_payloads("s") == ["before", *[f"after-{n}" for n in range(5)]]
    assert any(e.code == 1009 for e in closes.snapshot())
    assert client.stats().reconnects <= 1  # not resent forever
    assert client.flush(timeout=10) is True


def test_send_refuses_a_message_above_max_message_size(clients: List[TetherClient]) -> None:
    client = _client(clients, "ws://127.0.0.1:9/", max_message_size=1000)
    with pytest.raises(ValueError, match="max_message_size"):
        client.send("x" * 2000)


# ---------------------------------------------------------------- teardown


class _HalfCloser:
    """Raw peer: on its first connection it reads ``cut`` frames, half-closes (FIN)
    and keeps reading until the client leaves; later connections read everything."""

    def __init__(self, cut: int) -> None:
        self.cut = cut
        self.payloads: List[bytes] = []
        self.connections = 0
        self._cond = threading.Condition()
        self._listener = Listener(self._talk, name="half-closer")
        self.url = self._listener.url

    def wait(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.payloads) >= n, timeout)

    def close(self) -> None:
        self._listener.close()

    def _talk(self, conn: socket.socket) -> None:
        self.connections += 1
        first = self.connections == 1
        with conn:
            conn.settimeout(20)
            accept_handshake(conn)
            seen = 0
            try:
                while True:
                    frame = _read_frame(conn)
                    if frame is None or frame[0] == 8:
                        if frame is not None:
                            conn.sendall(server_frame(8, frame[1][:2]))
                        break
                    with self._cond:
                        self.payloads.append(frame[1])
                        self._cond.notify_all()
                    seen += 1
                    if first and seen == self.cut:
                        conn.shutdown(socket.SHUT_WR)  # FIN, but keep reading
            except OSError:
                pass


@pytest.mark.timeout(60)
def test_a_peer_that_half_closes_while_reading_gets_nothing_twice(
    clients: List[TetherClient],
) -> None:
    peer = _HalfCloser(cut=200)
    try:
        # "block": the sender waits through the reconnect instead of the default
        # offline policy dropping what does not fit (that is tested elsewhere).
        client = _client(
            clients,
            peer.url,
            protocol="raw",
            reconnect={"base_delay": 0.05},
            queue={"overflow": "block"},
        )
        client.connect(wait=True, timeout=5)
        for n in range(5000):
            client.send(f"m{n:05d}")
        arrived = peer.wait(5000, timeout=30)
        assert arrived, (len(peer.payloads), peer.connections, client.stats())
        assert client.flush(timeout=10)
        got = [p.decode() for p in peer.payloads]
        assert len(got) == len(set(got)), f"{len(got) - len(set(got))} messages arrived twice"
        assert got == [f"m{n:05d}" for n in range(5000)]
    finally:
        peer.close()


@pytest.mark.timeout(90)
def test_close_keeps_draining_across_a_reconnect_until_its_deadline(
    tether_server: TetherServer, clients: List[TetherClient]
) -> None:
    client = _client(clients, tether_server.url, reconnect={"base_delay": 0.05})
    client.connect(wait=True, timeout=5)
    for n in range(50_000):
        client.send(n, channel="drain")
    dropped = threading.Timer(0.2, tether_server.drop_all)
    dropped.start()
    try:
        assert client.close(timeout=60) is True
    finally:
        dropped.cancel()
    assert tether_server.data_payloads("drain") == list(range(50_000))


# ---------------------------------------------------------------- failures are visible


class _HttpRefuser:
    """Answers every WebSocket handshake with an HTTP status (401, 403, 500...)."""

    def __init__(self, status: int) -> None:
        self.requests: List[Tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Authorization", "")))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"ws://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("status", [401, 403, 500])
def test_a_refused_handshake_is_reported_with_its_cause(
    status: int, clients: List[TetherClient]
) -> None:
    refuser = _HttpRefuser(status)
    try:
        client = _client(clients, refuser.url, reconnect={"base_delay": 0.05, "max_delay": 0.1})
        errors = Recorder()
        retries = Recorder()
        client.on("error", errors)
        client.on("reconnecting", retries)
        with pytest.raises(TetherError) as info:
            client.connect(wait=True, timeout=1)
        assert errors.wait_count(1)
        assert str(status) in str(errors.snapshot()[0].error)
        assert retries.snapshot() and str(status) in str(retries.snapshot()[0].cause)
        assert info.value.__cause__ is not None and str(status) in str(info.value.__cause__)
        # Reported once per distinct cause, not once per attempt.
        assert eventually(lambda: len(retries.snapshot()) >= 3)
        assert len([e for e in errors.snapshot() if str(status) in str(e.error)]) == 1
    finally:
        refuser.close()


@pytest.mark.timeout(30)
def test_a_wrong_port_is_reported_and_connect_timeout_chains_it(
    dead_url: str, clients: List[TetherClient]
) -> None:
    client = _client(clients, dead_url, reconnect={"base_delay": 0.05, "max_delay": 0.1})
    errors = Recorder()
    client.on("error", errors)
    with pytest.raises(TetherError) as info:
        client.connect(wait=True, timeout=1)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert errors.wait_count(1) and isinstance(errors.snapshot()[0].error, ConnectionRefusedError)


@pytest.mark.timeout(30)
def test_raw_header_auth_401_fetches_a_fresh_token_then_gives_up(
    clients: List[TetherClient],
) -> None:
    refuser = _HttpRefuser(401)
    calls: List[str] = []

    def token() -> str:
        calls.append(f"token-{len(calls)}")
        return calls[-1]

    try:
        client = _client(
            clients, refuser.url, protocol="raw", auth=Auth(token), reconnect={"base_delay": 0.05}
        )
        with pytest.raises(AuthError):
            client.connect(wait=True, timeout=10)
        assert client.state == "closed"
        assert len(calls) == 2  # one fresh token after the first 401, then final
        assert [auth for _, auth in refuser.requests] == ["Bearer token-0", "Bearer token-1"]
    finally:
        refuser.close()


@pytest.mark.timeout(30)
def test_a_server_that_opens_then_drops_every_connection_is_backed_off(
    clients: List[TetherClient],
) -> None:
    from support.raw_server import ScriptedPeer

    peer = ScriptedPeer(server_frame(8, (1011).to_bytes(2, "big")))  # close right away
    try:
        client = _client(
            clients, peer.url, protocol="raw", reconnect={"base_delay": 0.01, "max_delay": 10}
        )
        retries = Recorder()
        client.on("reconnecting", retries)
        client.connect()
        assert retries.wait_count(4, timeout=20)
        attempts = [e.attempt for e in retries.snapshot()[:4]]
        # The counter does not start over on every open: the delays keep growing.
        assert attempts == [1, 2, 3, 4]
    finally:
        peer.close()
