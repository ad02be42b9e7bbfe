"""Large messages: the 1009-after-a-large-message rule and the ping barrier without acks."""

from __future__ import annotations

from typing import Any, Dict, List

from protocol.sessionkit import (
    FakeClock,
    Msg,
    Peer,
    big_msg,
    close_frame,
    data_msg,
    open_peer,
    text,
)

from tether_sync.exceptions import TetherError
from tether_sync.protocol import frames
from tether_sync.protocol.session import LARGE_MESSAGE, Acked, Closed, Refused, Written


def ids(items: List[Msg]) -> List[str]:
    return [m.id for m in items]


def pings(peer: Peer) -> List[Dict[str, Any]]:
    return [
        f.json
        for f in peer.frames
        if f.opcode == frames.OP_TEXT and len(f.payload) < 200 and f.json["type"] == "tether:ping"
    ]


def test_1009_after_a_large_message_refuses_the_largest_unconfirmed_one(clock: FakeClock) -> None:
    peer = open_peer(clock)  # ack on
    small, big, bigger, tail = data_msg(1), big_msg(100_000), big_msg(300_000), data_msg(2)
    peer.session.send([small, big, bigger, tail])
    peer.pump()
    peer.send_json({"type": "tether:ack", "seq": 1})
    peer.feed(close_frame(1009, "Message too big"))
    (refused,) = peer.of(Refused)
    assert ids(refused.items) == [bigger.id]
    assert isinstance(refused.error, TetherError) and "1009" in str(refused.error)
    closed = peer.closed_event()
    assert closed.code == 1009
    # Everything else unconfirmed is resent; the culprit never.
    assert ids(peer.session.take_unfinished()) == [big.id, tail.id]


def test_1009_without_acks_refuses_the_held_large_message(clock: FakeClock) -> None:
    peer = open_peer(clock, hello_ok={"features": []})
    small, big = data_msg(1), big_msg(LARGE_MESSAGE)
    peer.session.send([small, big])
    peer.pump()
    assert [ids(e.items) for e in peer.of(Written)] == [[small.id]]  # the big one is held
    peer.feed(close_frame(1009))
    assert [ids(e.items) for e in peer.of(Refused)] == [[big.id]]
    assert peer.session.take_unfinished() == []


def test_1009_with_only_small_messages_in_flight_blames_none(clock: FakeClock) -> None:
    peer = open_peer(clock)
    msgs = [data_msg(i) for i in range(3)]
    peer.session.send(msgs)
    peer.pump()
    peer.feed(close_frame(1009))
    assert peer.of(Refused) == []
    assert ids(peer.session.take_unfinished()) == ids(msgs)


def test_a_large_message_without_acks_is_done_when_its_barrier_ping_is_answered(
    clock: FakeClock,
) -> None:
    peer = open_peer(clock, hello_ok={"features": []})
    first, second = big_msg(LARGE_MESSAGE), big_msg(LARGE_MESSAGE + 10)
    peer.session.send([first, data_msg("s")])
    peer.pump()
    peer.session.send([second])
    peer.pump()
    barriers = [p["ts"] for p in pings(peer) if p["ts"] < 0]
    assert barriers == [-1, -2]
    # The pong of the first barrier releases only what it covers, in order.
    peer.send_json({"type": "tether:pong", "ts": -1})
    assert [ids(e.items) for e in peer.of(Acked)] == [[first.id]]
    peer.send_json({"type": "tether:pong", "ts": -2})
    assert [ids(e.items) for e in peer.of(Acked)] == [[first.id], [second.id]]
    assert peer.session.in_flight == 0


def test_a_later_barrier_pong_releases_the_earlier_ones_too(clock: FakeClock) -> None:
    peer = open_peer(clock, hello_ok={"features": []})
    a, b = big_msg(LARGE_MESSAGE), big_msg(LARGE_MESSAGE)
    peer.session.send([a])
    peer.session.send([b])
    peer.pump()
    peer.send_json({"type": "tether:pong", "ts": -2})
    assert [ids(e.items) for e in peer.of(Acked)] == [[a.id, b.id]]


def test_an_unanswered_barrier_keeps_the_large_message_for_a_resend(clock: FakeClock) -> None:
    peer = open_peer(clock, hello_ok={"features": []})
    big = big_msg(LARGE_MESSAGE)
    peer.session.send([big, data_msg("after")])
    peer.pump()
    peer.eof()
    assert isinstance(peer.log[-1], Closed)
    assert ids(peer.session.take_unfinished()) == [big.id]


def test_with_acks_there_is_no_barrier(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.session.send([big_msg(LARGE_MESSAGE * 2)])
    peer.pump()
    assert [p for p in pings(peer) if p["ts"] < 0] == []


def test_a_heartbeat_pong_never_releases_a_barrier(clock: FakeClock) -> None:
    peer = open_peer(clock, hello_ok={"features": []}, heartbeat=(1.0, 5.0))
    big = big_msg(LARGE_MESSAGE)
    peer.session.send([big])
    peer.pump()
    peer.advance(1.0)
    (heartbeat,) = [p for p in pings(peer) if p["ts"] > 1000000]
    peer.feed(text({"type": "tether:pong", "ts": heartbeat["ts"]}))
    assert peer.of(Acked) == []
