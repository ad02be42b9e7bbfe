"""Faults the server injects, and input that must not hurt it."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest
import websocket

from tether_sync.server import TetherServer

NO_REPLY_WINDOW = 0.3  # how long "no reply" is watched for, via a recv timeout


def _assert_reset(client):
    """The connection ended with a TCP reset: no close frame, no clean EOF."""
    client.ws.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.ws.recv_frame()


def _assert_alive(server, connect):
    other = connect(server.url)
    other.send_json({"channel": "ok", "type": "data", "payload": "still here"})
    assert other.recv_json()["payload"] == "still here"


# drop_all


def test_drop_all_resets_without_close_frame(tether_server, connect):
    first, second = connect(tether_server.url), connect(tether_server.url)
    assert tether_server.wait_for_connections(2)
    conns = tether_server.connections
    assert tether_server.drop_all() == 2
    _assert_reset(first)
    _assert_reset(second)
    assert tether_server.wait_for(lambda: tether_server.connection_count == 0)
    assert [c.close_code for c in conns] == [1006, 1006]
    _assert_alive(tether_server, connect)


def test_drop_all_includes_connections_still_in_handshake(tether_server):
    raw = socket.create_connection(("127.0.0.1", tether_server.port), timeout=5)
    try:
        assert tether_server.wait_for(lambda: tether_server.tcp_connection_count == 1)
        assert tether_server.drop_all() == 1
        with pytest.raises(ConnectionResetError):
            raw.recv(1)
    finally:
        raw.close()


def test_drop_control_resets_only_that_connection(tether_server, connect):
    victim, bystander = connect(tether_server.url), connect(tether_server.url)
    victim.send_json({"type": "tether:control", "action": "drop"})
    _assert_reset(victim)
    assert bystander.barrier() == []


def test_connection_drop_method(tether_server, connect):
    client = connect(tether_server.url)
    assert tether_server.wait_for_connections(1)
    conn = tether_server.connections[0]
    assert conn.drop()
    _assert_reset(client)
    assert tether_server.wait_for(lambda: not conn.open)
    assert not conn.drop()


# stop / start


def test_stop_refuses_connections_and_start_reuses_the_port(make_server, connect):
    # The client reads only after stop() returns, so the server waits close_timeout
    # for its close reply: keep that short.
    tether_server = make_server(close_timeout=0.2)
    client = connect(tether_server.url)
    client.barrier()
    port, url = tether_server.port, tether_server.url
    tether_server.stop()
    assert client.recv_close() == (1001, "")
    assert not tether_server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    tether_server.start()
    assert tether_server.port == port and tether_server.url == url
    client = connect(url)
    client.send_json({"type": "tether:ping", "ts": 1})
    assert client.recv_json() == {"type": "tether:pong", "ts": 1}


def test_abrupt_stop_resets_connections(tether_server, connect):
    client = connect(tether_server.url)
    client.barrier()
    tether_server.stop(abrupt=True)
    _assert_reset(client)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", tether_server.port), timeout=5).close()


def test_repeated_restarts_with_live_connections(make_server, connect):
    tether_server = make_server(close_timeout=0.2)
    for round_ in range(4):
        clients = [connect(tether_server.url) for _ in range(3)]
        for client in clients:
            client.send_json({"channel": "r", "type": "data", "payload": round_})
        for client in clients:
            assert client.recv_json()["payload"] == round_
        tether_server.restart(abrupt=round_ % 2 == 0)
    assert tether_server.data_payloads("r") == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_stop_is_idempotent_and_start_twice_fails(tether_server):
    with pytest.raises(RuntimeError):
        tether_server.start()
    tether_server.stop()
    tether_server.stop()
    assert "stopped" in repr(tether_server)


def test_port_in_use_raises_oserror(tether_server):
    other = TetherServer(port=tether_server.port)
    with pytest.raises(OSError):
        other.start()
    assert not other.running


def test_context_manager(connect):
    with TetherServer() as server:
        assert server.running and server.port != 0
        client = connect(server.url)
        assert client.barrier() == []
        client.close()
    assert not server.running


# blackhole


def test_blackhole_silences_existing_and_hangs_new_handshakes(tether_server, connect):
    client = connect(tether_server.url)
    client.barrier()
    assert tether_server.blackhole() == 1
    assert tether_server.connections[0].blackholed
    client.send_json({"type": "tether:ping", "ts": 1})
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.recv_text(timeout=NO_REPLY_WINDOW)
    assert tether_server.broadcast("any", 1) == 0

    # A new connection: TCP is accepted, the HTTP upgrade never gets an answer.
    with pytest.raises(websocket.WebSocketTimeoutException):
        websocket.create_connection(tether_server.url, timeout=NO_REPLY_WINDOW)
    raw = socket.create_connection(("127.0.0.1", tether_server.port), timeout=5)
    try:
        assert tether_server.wait_for(lambda: tether_server.tcp_connection_count >= 2)
        assert tether_server.connection_count == 1

        # Lifting it resumes reading: the ping sent into the hole is answered now.
        assert tether_server.blackhole(False) >= 2
        assert client.recv_json() == {"type": "tether:pong", "ts": 1}
        assert not tether_server.connections[0].blackholed
    finally:
        raw.close()
    _assert_alive(tether_server, connect)


def test_blackhole_drops_pending_replies(tether_server, connect):
    client = connect(tether_server.url)
    tether_server.set_latency(0.2)
    client.send_json({"type": "tether:ping", "ts": "lost"})
    assert tether_server.wait_for(lambda: tether_server.received_count == 1)
    tether_server.blackhole()
    tether_server.set_latency(0)
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.recv_text(timeout=0.5)  # the pong's timer fired inside the blackhole
    tether_server.blackhole(False)
    assert client.barrier() == []


def test_blackhole_lift_with_drop_resets(tether_server, connect):
    client = connect(tether_server.url)
    client.barrier()
    tether_server.blackhole()
    assert tether_server.blackhole(False, drop=True) == 1
    _assert_reset(client)


def test_blackhole_set_while_stopped_applies_at_start(connect):
    server = TetherServer(close_timeout=0.2)
    server.blackhole()
    server.start()
    try:
        with pytest.raises(websocket.WebSocketTimeoutException):
            websocket.create_connection(server.url, timeout=NO_REPLY_WINDOW)
        server.blackhole(False)
        _assert_alive(server, connect)
    finally:
        server.stop()


def test_stop_lifts_faults(tether_server, connect):
    tether_server.blackhole()
    tether_server.pause_reading()
    tether_server.set_latency(1.0)
    tether_server.restart()
    client = connect(tether_server.url)
    started = time.monotonic()
    assert client.barrier() == []
    assert time.monotonic() - started < 0.9


@pytest.mark.parametrize("action", ["blackhole", "pause-reading"])
def test_per_connection_fault_controls_last_ms(tether_server, connect, action):
    client, bystander = connect(tether_server.url), connect(tether_server.url)
    client.send_json({"type": "tether:control", "action": action, "ms": 300})
    assert client.recv_json() == {"type": "tether:control-ack", "action": action, "ms": 300}
    started = time.monotonic()
    client.send_json({"type": "tether:ping", "ts": 2})
    assert bystander.barrier() == []
    assert client.recv_json() == {"type": "tether:pong", "ts": 2}
    assert time.monotonic() - started >= 0.25


def test_fault_control_ms_defaults_and_clamps(tether_server, connect):
    paused, blackholed = connect(tether_server.url), connect(tether_server.url)
    paused.send_json({"type": "tether:control", "action": "pause-reading", "ms": "abc"})
    assert paused.recv_json()["ms"] == 5000
    blackholed.send_json({"type": "tether:control", "action": "blackhole", "ms": 10**9})
    assert blackholed.recv_json()["ms"] == 60000
    first, second = tether_server.connections
    assert first.reading_paused and not first.blackholed
    assert second.blackholed and not second.reading_paused
    # The server-wide switches lift per-connection faults too.
    tether_server.pause_reading(False)
    tether_server.blackhole(False)
    assert paused.barrier() == [] and blackholed.barrier() == []


# pause_reading


def _frame(message: dict) -> bytes:
    return websocket.ABNF.create_frame(json.dumps(message), websocket.ABNF.OPCODE_TEXT).format()


def test_pause_reading_fills_the_socket_then_delivers_everything_in_order(tether_server, connect):
    client = connect(tether_server.url, sockopt=((socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024),))
    client.barrier()
    baseline = tether_server.received_count
    assert tether_server.pause_reading() == 1
    assert tether_server.connections[0].reading_paused

    sock = client.ws.sock
    sock.setblocking(False)
    pad = "x" * 1000
    sent, pending, blocked = 0, b"", False
    # Messages of an ignored type: no replies, so only our direction fills up.
    while sent < 100_000:
        if not pending:
            pending = _frame({"type": "bulk", "seq": sent, "pad": pad})
            sent += 1
        try:
            pending = pending[sock.send(pending) :]
        except BlockingIOError:
            blocked = True
            break
    assert blocked, "the client could always write: the server kept reading"
    assert tether_server.received_count == baseline  # nothing read while paused

    assert tether_server.pause_reading(False) == 1
    sock.settimeout(10)
    sock.sendall(pending)
    assert tether_server.wait_for(
        lambda: tether_server.received_count >= baseline + sent, timeout=20
    )
    seqs = [r.message["seq"] for r in tether_server.received(type="bulk")]
    assert seqs == list(range(sent))
    assert client.barrier() == []


def test_pause_reading_still_lets_replies_out(tether_server, connect):
    client = connect(tether_server.url)
    tether_server.set_latency(0.2)
    client.send_json({"type": "tether:ping", "ts": "late"})
    assert tether_server.wait_for(lambda: tether_server.received_count == 1)
    tether_server.pause_reading()
    assert client.recv_json() == {"type": "tether:pong", "ts": "late"}
    assert tether_server.wait_for_connections(1)
    assert tether_server.broadcast("x", 1) == 0
    tether_server.pause_reading(False)


def test_gate_keeps_websockets_from_resuming_a_paused_transport():
    from websockets.server import ServerProtocol

    from tether_sync.server.transport import GatedConnection

    class FakeTransport:
        def __init__(self):
            self.paused = False
            self.calls = []

        def pause_reading(self):
            self.paused = True
            self.calls.append("pause")

        def resume_reading(self):
            self.paused = False
            self.calls.append("resume")

        def set_write_buffer_limits(self, high=None, low=None):
            pass

        def is_closing(self):
            return False

        def get_extra_info(self, name, default=None):
            return default

    async def scenario():
        async def handler(conn):
            return None

        # What ServerConnection.connection_made needs of its server, in
        # websockets 13.0 (start_connection_handler) and later (handler, handler_tasks).
        server = SimpleNamespace(
            handler=handler, handler_tasks=set(), start_connection_handler=lambda conn: None
        )
        conn = GatedConnection(ServerProtocol(), server)
        transport = FakeTransport()
        conn.connection_made(transport)
        conn.set_faults(reading_paused=True)
        # websockets' frame buffer filling and draining must not resume reading.
        conn.recv_messages.pause()
        conn.recv_messages.resume()
        assert transport.paused
        conn.set_faults(reading_paused=False)
        assert transport.calls == ["pause", "resume"]
        conn.recv_messages.pause()
        assert transport.paused
        conn.recv_messages.resume()
        assert not transport.paused
        await asyncio.gather(*server.handler_tasks)

    asyncio.run(scenario())


# force_close_all and latency


def test_force_close_all(tether_server, connect):
    clients = [connect(tether_server.url) for _ in range(3)]
    assert tether_server.wait_for_connections(3)
    assert tether_server.force_close_all() == 3
    for client in clients:
        assert client.recv_close() == (1000, "Server forced close")
    assert tether_server.wait_for(lambda: tether_server.connection_count == 0)
    assert {c.close_code for c in tether_server.all_connections} == {1000}


def test_set_latency_applies_to_new_connections_and_validates(tether_server, connect):
    tether_server.set_latency(0.2)
    client = connect(tether_server.url)
    started = time.monotonic()
    client.send_json({"type": "tether:ping", "ts": 1})
    assert client.recv_json()["ts"] == 1
    assert time.monotonic() - started >= 0.19
    assert tether_server.connections[0].latency == pytest.approx(0.2)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            tether_server.set_latency(bad)


# Bad input


def test_oversized_message_closes_1009_and_server_keeps_serving(tether_server, connect):
    client = connect(tether_server.url)
    client.send("x" * (2**20 + 1))
    assert client.recv_close()[0] == 1009
    _assert_alive(tether_server, connect)


def test_max_size_is_configurable(make_server, connect):
    server = make_server(max_size=1024)
    client = connect(server.url)
    client.send_json({"channel": "c", "type": "data", "payload": "y" * 900})
    assert client.recv_json()["payload"] == "y" * 900
    client.send_binary(b"z" * 2048)
    assert client.recv_close()[0] == 1009
    _assert_alive(server, connect)


def test_invalid_utf8_text_closes_1007_and_server_keeps_serving(tether_server, connect):
    client = connect(tether_server.url)
    client.ws.send(b"\xff\xfe{}", opcode=websocket.ABNF.OPCODE_TEXT)
    assert client.recv_close()[0] == 1007
    _assert_alive(tether_server, connect)


def test_abrupt_client_disconnects_do_not_hurt(tether_server, connect):
    for _ in range(5):
        client = connect(tether_server.url)
        client.send_json({"channel": "c", "type": "data", "payload": "bye"})
        client.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.ws.sock.close()
    # Half a frame, then gone; and plain TCP that never says anything.
    raw = socket.create_connection(("127.0.0.1", tether_server.port), timeout=5)
    raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    raw.close()
    raw = socket.create_connection(("127.0.0.1", tether_server.port), timeout=5)
    raw.sendall(b"\x00\x01garbage that is not http\r\n\r\n")
    raw.close()
    assert tether_server.wait_for(lambda: tether_server.tcp_connection_count == 0)
    _assert_alive(tether_server, connect)


def test_graceful_stop_does_not_wait_for_silent_or_blackholed_peers(tether_server, connect):
    client = connect(tether_server.url)
    client.barrier()
    silent = socket.create_connection(("127.0.0.1", tether_server.port), timeout=5)
    try:
        assert tether_server.wait_for(lambda: tether_server.tcp_connection_count == 2)
        tether_server.connections[0].send("x")  # something queued for the client
        tether_server.blackhole()
        started = time.monotonic()
        tether_server.stop()
        # Neither peer can answer a close handshake; both are reset at once.
        assert time.monotonic() - started < 0.5
        with pytest.raises(ConnectionResetError):
            silent.recv(1)
    finally:
        silent.close()


def test_send_raw_all_reaches_every_open_connection(tether_server, connect):
    first, second = connect(tether_server.url), connect(tether_server.url)
    assert tether_server.wait_for_connections(2)
    assert tether_server.send_raw_all("this is not json") == 2
    assert first.recv_text() == second.recv_text() == "this is not json"
    assert tether_server.send_raw_all(b"\x00\x01binary") == 2
    first.ws.settimeout(5)
    assert first.ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"\x00\x01binary")
    assert tether_server.send_raw_all({"type": "tether:ping", "ts": 5}) == 2
    assert second.ws.recv_data()[1] == b"\x00\x01binary"
    assert second.recv_json() == {"type": "tether:ping", "ts": 5}
    first.close()
    second.close()
    tether_server.stop()
    assert tether_server.send_raw_all("nobody") == 0


# flood


def test_flood_overflows_a_small_inbound_buffer(tether_server):
    # The flood is there to overflow a client's inbound buffer. Its frames go
    # out one write each, like the reference server's sends: written as one
    # burst they reached the client in one read, which a buffer takes whole
    # (a batch never evicts its own items), and nothing was dropped.
    from tether_sync import TetherClient
    from tether_sync.options import Backpressure

    dropped = threading.Event()
    client = TetherClient(
        tether_server.url,
        backpressure=Backpressure(inbound_buffer_size=100, inbound_overflow="drop-oldest"),
    )
    client.on("backpressure", lambda event: event.dropped and dropped.set())
    try:
        client.subscribe("flood")  # nobody reads it
        client.connect(wait=True, timeout=5)
        client.send({"type": "tether:control", "action": "flood", "count": 500}, "control")
        assert tether_server.wait_for(lambda: tether_server.data_count("control") == 1)
        assert dropped.wait(5), client.stats()
        assert client.stats().dropped_inbound > 0
    finally:
        client.close(timeout=2)
