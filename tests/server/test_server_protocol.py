"""The bundled server speaks the reference server's wire protocol (TETHER-WIRE.md §2)."""

from __future__ import annotations

import json
import time

import pytest
import websocket

ECHO_CASES = [
    # (sent, echoed): key order channel,type,payload,id; extra keys dropped.
    (
        '{"id":"x","payload":{"text":"hi","n":1},"type":"data","channel":"chat","extra":1}',
        '{"channel":"chat","type":"data","payload":{"text":"hi","n":1},"id":"x"}',
    ),
    ('{"channel":"chat","type":"data"}', '{"channel":"chat","type":"data"}'),
    (
        '{"channel":null,"type":"data","payload":null}',
        '{"channel":null,"type":"data","payload":null}',
    ),
    (
        '{"channel":"c","type":"data","payload":"plain string","id":7}',
        '{"channel":"c","type":"data","payload":"plain string","id":7}',
    ),
    (
        '{"channel":"ü","type":"data","payload":"日本"}',
        '{"channel":"ü","type":"data","payload":"日本"}',
    ),
]


@pytest.mark.parametrize(("sent", "echoed"), ECHO_CASES)
def test_data_envelope_is_echoed_exactly(tether_server, connect, sent, echoed):
    client = connect(tether_server.url)
    client.send(sent)
    assert client.recv_text() == echoed


def test_binary_json_is_parsed_and_answered_in_text(tether_server, connect):
    client = connect(tether_server.url)
    client.send_binary(b'{"channel":"b","type":"data","payload":[1,2],"id":"bin"}')
    assert client.recv_text() == '{"channel":"b","type":"data","payload":[1,2],"id":"bin"}'
    client.send_binary(b'{"type":"tether:ping","ts":3}')
    assert client.recv_json() == {"type": "tether:pong", "ts": 3}


def test_lone_surrogate_is_escaped_not_fatal(tether_server, connect):
    client = connect(tether_server.url)
    client.send('{"channel":"c","type":"data","payload":"\\ud800"}')
    assert client.recv_text() == '{"channel":"c","type":"data","payload":"\\ud800"}'


@pytest.mark.parametrize(
    ("ping", "pong"),
    [
        (
            {"type": "tether:ping", "ts": 1712345678901},
            {"type": "tether:pong", "ts": 1712345678901},
        ),
        ({"type": "tether:ping", "ts": "abc"}, {"type": "tether:pong", "ts": "abc"}),
        ({"type": "tether:ping"}, {"type": "tether:pong"}),
    ],
)
def test_ping_gets_pong_with_same_ts(tether_server, connect, ping, pong):
    client = connect(tether_server.url)
    client.send_json(ping)
    assert client.recv_json() == pong


def test_ignored_messages_get_no_reply_and_keep_the_connection(tether_server, connect):
    client = connect(tether_server.url)
    for text in [
        "not json",
        "null",
        "[1,2]",
        '"str"',
        "{}",
        '{"type":"bogus"}',
        '{"type":"tether:pong","ts":1}',
        '{"channel":"c","type":"other"}',
        '{"type":"data","payload":1}',  # data without a channel key
        '{"type":"tether:control","action":"nope"}',
        '{"type":"tether:control"}',
        "NaN",
        '{"type":"tether:ping","ts":NaN}',  # JSON.parse rejects NaN: not JSON
        "[" * 100_000 + "]" * 100_000,  # valid, but too deep for Python's parser
    ]:
        client.send(text)
    client.send_binary(b"\x00\xff garbage")
    assert client.barrier() == []
    records = tether_server.received()
    assert [r.raw for r in records[:3]] == ["not json", "null", "[1,2]"]
    assert records[0].is_json is False and records[0].message is None
    assert records[1].is_json is True and records[1].message is None
    assert records[-2].binary and records[-2].raw == b"\x00\xff garbage"
    assert records[-2].is_json is False


def test_ws_level_ping_is_answered(tether_server, connect):
    client = connect(tether_server.url)
    client.ws.ping(b"hello")
    client.ws.settimeout(5)
    frame = client.ws.recv_frame()
    assert frame.opcode == websocket.ABNF.OPCODE_PONG
    assert frame.data == b"hello"


def test_any_path_is_accepted(tether_server, connect):
    client = connect(tether_server.url + "some/path?x=1", header=["X-Test: yes"])
    assert client.barrier() == []
    conn = tether_server.connections[0]
    assert conn.path == "/some/path?x=1"
    assert conn.headers["x-test"] == "yes"


# Controls


def test_force_close_sends_close_1000(tether_server, connect):
    client = connect(tether_server.url)
    client.send_json({"type": "tether:control", "action": "force-close"})
    assert client.recv_close() == (1000, "Server forced close")
    assert tether_server.wait_for(lambda: tether_server.connection_count == 0)


def test_force_close_recv_returns_empty_string(tether_server, connect):
    client = connect(tether_server.url)
    client.send_json({"type": "tether:control", "action": "force-close"})
    assert client.ws.recv() == ""
    assert client.ws.connected is False


@pytest.mark.parametrize(
    ("ms", "acked"),
    [(400, 400), (5000, 2000), (-5, 0), (12.7, 12.7), ("abc", 0), (None, 0), (True, 0)],
)
def test_set_latency_ack_is_clamped(tether_server, connect, ms, acked):
    client = connect(tether_server.url)
    control = {"type": "tether:control", "action": "set-latency"}
    if ms is not None:
        control["ms"] = ms
    client.send_json(control)
    assert client.recv_json() == {
        "type": "tether:control-ack",
        "action": "set-latency",
        "ms": acked,
    }
    assert tether_server.connections[0].latency == pytest.approx(acked / 1000)


def test_set_latency_delays_replies_but_not_acks(tether_server, connect):
    client = connect(tether_server.url)
    client.send_json({"type": "tether:control", "action": "set-latency", "ms": 300})
    assert client.recv_json()["action"] == "set-latency"
    started = time.monotonic()
    client.send_json({"type": "tether:ping", "ts": 8})
    client.send_json({"type": "tether:control", "action": "set-latency", "ms": 0})
    # The ack overtakes the pong still waiting on its 300 ms timer (S4).
    assert client.recv_json() == {"type": "tether:control-ack", "action": "set-latency", "ms": 0}
    assert client.recv_json() == {"type": "tether:pong", "ts": 8}
    assert time.monotonic() - started >= 0.29
    client.send_json({"type": "tether:ping", "ts": 9})
    assert client.recv_json() == {"type": "tether:pong", "ts": 9}


def test_latency_applies_to_echo_and_auth_ok(tether_server, connect):
    from tether_sync.server import mint_token

    client = connect(tether_server.url)
    tether_server.set_latency(0.2)
    for message in (
        {"channel": "c", "type": "data", "payload": 1},
        {"type": "tether:auth", "token": mint_token()},
    ):
        started = time.monotonic()
        client.send_json(message)
        client.recv_json()
        assert time.monotonic() - started >= 0.19


@pytest.mark.parametrize(
    ("count", "acked", "frames"),
    [(3, 3, 3), (0, 1, 1), (None, 500, 500), ("abc", 500, 500), (5000, 1000, 1000)],
)
def test_flood_sends_ack_then_frames_in_order(tether_server, connect, count, acked, frames):
    client = connect(tether_server.url)
    control = {"type": "tether:control", "action": "flood"}
    if count is not None:
        control["count"] = count
    client.send_json(control)
    assert client.recv_json() == {"type": "tether:control-ack", "action": "flood", "count": acked}
    for index in range(frames):
        message = client.recv_json()
        assert message["channel"] == "flood" and message["type"] == "data"
        assert message["id"] == f"flood-{index}"
        assert message["payload"]["index"] == index
        assert isinstance(message["payload"]["ts"], int)
        assert list(message) == ["channel", "type", "payload", "id"]
    assert client.barrier() == []


def test_flood_ignores_latency(tether_server, connect):
    client = connect(tether_server.url)
    tether_server.set_latency(2.0)
    client.send_json({"type": "tether:control", "action": "flood", "count": 2})
    assert client.recv_json(timeout=1.0)["type"] == "tether:control-ack"
    assert client.recv_json(timeout=1.0)["id"] == "flood-0"
    assert client.recv_json(timeout=1.0)["id"] == "flood-1"


def test_tunnelled_controls_work_and_are_not_echoed(tether_server, connect):
    client = connect(tether_server.url)

    def tunnel(**control):
        client.send_json(
            {
                "channel": "ctl",
                "type": "data",
                "id": "t",
                "payload": {"type": "tether:control", **control},
            }
        )

    tunnel(action="flood", count=2)
    assert client.recv_json()["type"] == "tether:control-ack"
    assert [client.recv_json()["id"] for _ in range(2)] == ["flood-0", "flood-1"]
    tunnel(action="set-latency", ms=10)
    assert client.recv_json() == {"type": "tether:control-ack", "action": "set-latency", "ms": 10}
    tunnel(action="nope")
    tunnel(action="set-latency", ms=0)
    assert client.recv_json()["ms"] == 0
    assert client.barrier() == []
    tunnel(action="force-close")
    assert client.recv_close() == (1000, "Server forced close")


# Subscriptions and broadcast


def test_subscriptions_are_tracked_and_broadcast_reaches_only_subscribers(tether_server, connect):
    alice, bob = connect(tether_server.url), connect(tether_server.url)
    alice.send_json({"channel": "news", "type": "subscribe", "id": "s1"})
    alice.send_json({"channel": "chat", "type": "subscribe", "id": "s2"})
    bob.send_json({"channel": "chat", "type": "subscribe", "id": "s3"})
    assert alice.barrier() == [] and bob.barrier() == []  # subscribe gets no reply
    conn_a, conn_b = tether_server.connections
    assert conn_a.subscriptions == {"news", "chat"}
    assert conn_b.subscriptions == {"chat"}

    assert tether_server.broadcast("news", {"headline": 1}) == 1
    assert (
        alice.recv_text() == '{"channel":"news","type":"data","payload":{"headline":1},"id":"bc-1"}'
    )
    assert bob.barrier() == []
    assert tether_server.broadcast("chat", "hi") == 2
    assert alice.recv_json()["id"] == bob.recv_json()["id"] == "bc-2"

    alice.send_json({"channel": "news", "type": "unsubscribe", "id": "u1"})
    assert alice.barrier() == []
    assert conn_a.subscriptions == {"chat"}
    assert tether_server.broadcast("news", 3) == 0
    assert tether_server.broadcast("nobody", 3) == 0
    assert alice.barrier() == []


def test_broadcast_with_unencodable_payload_fails_in_caller(tether_server):
    with pytest.raises(TypeError):
        tether_server.broadcast("c", object())


def test_server_push_to_one_connection(tether_server, connect):
    client = connect(tether_server.url)
    assert tether_server.wait_for_connections(1)
    conn = tether_server.connections[0]
    assert conn.send({"type": "tether:ping", "ts": 777})
    assert client.recv_json() == {"type": "tether:ping", "ts": 777}
    assert conn.send("raw text")
    assert client.recv_text() == "raw text"
    assert conn.send(b"\x01\x02")
    client.ws.settimeout(5)
    assert client.ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"\x01\x02")
    assert conn.close(4001, "bye")
    assert client.recv_close() == (4001, "bye")
    assert tether_server.wait_for(lambda: not conn.open)
    assert conn.close_code == 4001
    assert not conn.send("too late")


# Records


def test_records_keep_every_message_in_order(tether_server, connect):
    first, second = connect(tether_server.url), connect(tether_server.url)
    for n in range(100):
        first.send_json({"channel": "a", "type": "data", "payload": n, "id": f"a{n}"})
    second.send_binary(json.dumps({"channel": "b", "type": "data", "payload": "x"}).encode())
    assert tether_server.wait_for_data(101)
    assert tether_server.data_payloads("a") == list(range(100))
    assert tether_server.data_payloads("b") == ["x"]
    conn_a = tether_server.connection(1)
    records = tether_server.received(conn=conn_a)
    assert len(records) == 100
    assert all(r.conn_id == 1 and not r.binary and r.type == "data" for r in records)
    assert [r.at for r in records] == sorted(r.at for r in records)
    assert records[5].raw == json.dumps({"channel": "a", "type": "data", "payload": 5, "id": "a5"})
    assert records[5].message == {"channel": "a", "type": "data", "payload": 5, "id": "a5"}
    binary = tether_server.received(conn=2)
    assert len(binary) == 1 and binary[0].binary and binary[0].payload == "x"
    assert len(first.barrier()) == 100  # the echoes, then the barrier's pong
    pings = tether_server.received(type="tether:ping")
    assert len(pings) == 1 and pings[0].conn_id == 1


def test_records_survive_restart_and_can_be_cleared(tether_server, connect):
    client = connect(tether_server.url)
    client.send_json({"channel": "a", "type": "data", "payload": 1})
    assert tether_server.wait_for_data(1)
    client.close()
    tether_server.restart()
    client = connect(tether_server.url)
    client.send_json({"channel": "a", "type": "data", "payload": 2})
    assert tether_server.wait_for_data(2)
    assert tether_server.data_payloads() == [1, 2]
    assert [c.id for c in tether_server.all_connections] == [1, 2]
    assert tether_server.total_connections == 2
    tether_server.clear_records()
    assert tether_server.received() == []


def test_connection_open_and_close_are_observable(tether_server, connect):
    client = connect(tether_server.url)
    assert tether_server.wait_for_connections(1)
    assert tether_server.connection_count == 1
    conn = tether_server.connections[0]
    assert conn.open and conn.close_code is None
    client.ws.close(status=4000, reason=b"Heartbeat timeout")
    assert tether_server.wait_for(lambda: tether_server.connection_count == 0)
    assert conn.close_code == 4000 and conn.close_reason == "Heartbeat timeout"
    assert conn.closed_at is not None and conn.closed_at >= conn.opened_at
