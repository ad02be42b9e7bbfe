"""Hand-offs of session events to the application: deliveries, events, counters.

The session (sans-I/O) says what happened; the engine resolves each
``Delivery``, emits the public events in order on the dispatcher (never on the
I/O thread) and keeps the counters of ``stats()``. The peer speaks protocol
tether here, so deliveries resolve on the server's acks (DESIGN §5).
"""

from __future__ import annotations

from typing import Any, List

import pytest
from engine.rig import WAIT, Driven, Rig, ServerEnd
from protocol.sessionkit import server_frame

from tether_sync import Reconnect
from tether_sync.protocol import frames

pytestmark = pytest.mark.timeout(30)


def open_tether(rig: Rig, **options: Any) -> tuple[Driven, ServerEnd]:
    d = rig.client(protocol="tether", **options)
    d.client.connect()
    server = rig.dialing.next().accept()
    server.hello_ok()
    d.events.wait_for("open")
    return d, server


def test_deliveries_resolve_on_the_servers_ack_in_order(rig: Rig) -> None:
    d, server = open_tether(rig)
    deliveries = [d.client.send({"n": i}, channel="chat") for i in range(3)]
    sent = [server.read_json() for _ in range(3)]
    assert [(m["seq"], m["payload"]) for m in sent] == [(1, {"n": 0}), (2, {"n": 1}), (3, {"n": 2})]
    assert [m["id"] for m in sent] == [x.id for x in deliveries]
    d.sync()
    assert not any(x.done() for x in deliveries)  # written is not enough: acks are awaited
    assert d.client.stats().unacked == 3
    server.send_json({"type": "tether:ack", "seq": 2})  # cumulative: 1 and 2
    assert deliveries[1].result(timeout=WAIT) is None
    assert deliveries[0].done() and not deliveries[2].done()
    d.events.wait_for("flushed", 2)
    server.send_json({"type": "tether:ack", "seq": 3})
    assert deliveries[2].result(timeout=WAIT) is None
    d.events.wait_for("flushed", 3)
    assert [e.id for e in d.events.of("flushed")] == [x.id for x in deliveries]
    stats = d.client.stats()
    assert (stats.sent, stats.acked, stats.unacked) == (3, 3, 0)


def test_unacked_messages_are_resent_first_after_a_reconnect(rig: Rig) -> None:
    d, server = open_tether(rig, reconnect=Reconnect(base_delay=1.0))
    first = [d.client.send(f"m{i}", channel="chat") for i in range(3)]
    assert [server.read_json()["seq"] for _ in range(3)] == [1, 2, 3]
    server.send_json({"type": "tether:ack", "seq": 1})
    assert first[0].result(timeout=WAIT) is None
    server.drop()
    retry = d.events.wait_for("reconnecting")
    later = d.client.send("during the outage", channel="chat")
    rig.clock.advance(retry.delay)
    server = rig.dialing.next().accept()
    hello = server.hello_ok(acked=2)  # the server had accepted seq 2 before the loss
    assert hello["session"] == d.client.stats().session_id  # the same session resumes
    assert first[1].result(timeout=WAIT) is None  # resolved by hello-ok's acked
    resent = server.read_json()
    new = server.read_json()
    # The unacked one first, with its id and seq unchanged; then the queue.
    assert (resent["id"], resent["seq"], resent["payload"]) == (first[2].id, 3, "m2")
    assert (new["id"], new["seq"], new["payload"]) == (later.id, 4, "during the outage")
    server.send_json({"type": "tether:ack", "seq": 4})
    assert later.result(timeout=WAIT) is None and first[2].result(timeout=WAIT) is None
    stats = d.client.stats()
    assert (stats.resent, stats.reconnects, stats.acked) == (1, 1, 4)


def test_events_come_in_order_on_the_dispatcher_across_a_reconnect(rig: Rig) -> None:
    d, server = open_tether(rig, reconnect=Reconnect(base_delay=1.0))
    d.client.send("one", channel="chat")
    assert server.read_json()["seq"] == 1
    server.send_json({"type": "tether:ack", "seq": 1})
    d.events.wait_for("flushed")
    server.send_json({"channel": "chat", "type": "data", "payload": "inbound"})
    d.events.wait_for("message")
    server.close_with(1001, "going away")
    retry = d.events.wait_for("reconnecting")
    rig.clock.advance(retry.delay)
    server = rig.dialing.next().accept()
    server.hello_ok(acked=1)
    d.events.wait_for("open", 2)
    assert d.events.names() == [
        "state_change",  # idle -> connecting
        "state_change",  # connecting -> open
        "open",
        "flushed",
        "message",
        "state_change",  # open -> reconnecting; the close event goes with it
        "close",
        "reconnecting",
        "state_change",  # reconnecting -> connecting
        "state_change",  # connecting -> open
        "open",
    ]
    assert d.events.states() == ["connecting", "open", "reconnecting", "connecting", "open"]
    close = d.events.of("close")[0]
    assert (close.code, close.reason, close.was_clean) == (1001, "going away", True)
    assert d.events.threads == {"tether-dispatch"}  # never the I/O thread


def test_inbound_messages_are_handed_over_in_order_and_counted(rig: Rig) -> None:
    d, server = open_tether(rig)
    for i in range(200):
        server.send_json({"channel": "feed", "type": "data", "payload": i})
    d.events.wait_for("message", 200)
    got: List[Any] = [(e.channel, e.payload) for e in d.events.of("message")]
    assert got == [("feed", i) for i in range(200)]
    stats = d.client.stats()
    assert stats.received == 200
    assert stats.bytes_received > 200 * 40


def test_a_subscription_gets_its_channel_and_is_announced_again_after_a_reconnect(
    rig: Rig,
) -> None:
    d, server = open_tether(rig, reconnect=Reconnect(base_delay=1.0))
    sub = d.client.subscribe("prices")
    announced = server.read_json()
    assert (announced["type"], announced["channel"]) == ("subscribe", "prices")
    server.send_json({"channel": "prices", "type": "data", "payload": 1, "offset": 1, "epoch": "e"})
    server.send_json({"channel": "other", "type": "data", "payload": "not for it"})
    assert sub.get(timeout=WAIT) == 1
    server.drop()
    rig.clock.advance(d.events.wait_for("reconnecting").delay)
    server = rig.dialing.next().accept()
    server.hello_ok()
    again = server.read_json()
    # Resubscribed where it left off (resume: the last epoch and offset seen).
    assert (again["type"], again["channel"], again["epoch"], again["offset"]) == (
        "subscribe",
        "prices",
        "e",
        1,
    )
    server.send_json({"channel": "prices", "type": "data", "payload": 2, "offset": 2, "epoch": "e"})
    assert sub.get(timeout=WAIT) == 2


def test_the_counters_follow_attempts_losses_and_bytes(rig: Rig) -> None:
    d = rig.client(reconnect=Reconnect(base_delay=1.0))
    d.client.connect()
    rig.dialing.next().fail(ConnectionRefusedError(111, "refused"))
    rig.clock.advance(d.events.wait_for("reconnecting").delay)
    server = rig.dialing.next().accept()
    d.events.wait_for("open")
    d.client.send("12345")
    assert server.read_text() == ["12345"]
    server.send_text("abc")
    d.events.wait_for("message")
    server.close_with(1001, "restart")
    rig.clock.advance(d.events.wait_for("reconnecting", 2).delay)
    rig.dialing.next().accept()
    d.events.wait_for("open", 2)
    stats = d.client.stats()
    assert (stats.connect_attempts, stats.connect_failures) == (3, 1)
    assert stats.reconnects == 1
    assert sum(stats.reconnects_by_cause.values()) == 1
    assert stats.last_close == (1001, "restart")
    assert (stats.sent, stats.received) == (1, 1)
    assert stats.bytes_sent >= 5 + 6 + 2  # the frame (masked), and the close frame's answer
    assert stats.bytes_received == 2 + 3 + 2 + 2 + len("restart")  # a text frame, a close frame
    assert stats.endpoint == "ws://engine.test/ws" and stats.state == "open"


def test_a_large_raw_message_resolves_only_once_a_later_ping_is_answered(rig: Rig) -> None:
    # Protocol raw has no acks: a message the server could still refuse (1009)
    # after the kernel took it is confirmed by the pong of a ping sent after it.
    d = rig.client()
    server = rig.connect(d)
    big = d.client.send("b" * 70_000)
    small = d.client.send("s")
    got = server.read_frames(3)  # the two messages and a ping after the large one
    texts = [f.payload for f in got if f.opcode == frames.OP_TEXT]
    assert texts == [b"b" * 70_000, b"s"]
    (barrier,) = [f for f in got if f.opcode == frames.OP_PING]
    assert got.index(barrier) > 0
    assert small.result(timeout=WAIT) is None  # small ones resolve once written
    d.sync()
    assert not big.done()
    server.send(server_frame(frames.OP_PONG, barrier.payload))
    assert big.result(timeout=WAIT) is None
    d.events.wait_for("flushed", where=lambda e: e.id == big.id)
