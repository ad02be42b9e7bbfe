"""The heartbeat on a fake clock: every (interval, timeout), silent, answering and trickling peers.

A dead peer is detected within ``interval + timeout`` (the 4000 close goes out),
and the link is over (``Closed`` 4000, unclean) at most the heartbeat close grace later.
"""

from __future__ import annotations

import random
from typing import Optional, Tuple

import pytest
from protocol.sessionkit import (
    FakeClock,
    Peer,
    begin_endless_message,
    link,
    pong_for,
    text,
)

from tether_sync.protocol import frames
from tether_sync.protocol.session import HEARTBEAT_CLOSE_GRACE, Closed, Opened, RoundTrip

GRID = [
    (1.0, 0.5),
    (1.0, 1.0),
    (1.0, 1.5),
    (1.0, 3.0),
    (0.1, 10.0),
    (15.0, 5.0),
    (5.0, 15.0),
    (0.05, 0.05),
    (0.2, 0.01),
    (2.0, 2.0001),
]
PROTOCOLS = ["tether", "raw"]
EPS = 1e-6


def heartbeat_close_at(peer: Peer) -> Optional[float]:
    for frame, at in zip(peer.frames, peer.frame_stamps):
        if frame.opcode == frames.OP_CLOSE:
            assert frame.close_code == 4000
            return at
    return None


def assert_detected(peer: Peer, silent_since: float, hb: Tuple[float, float]) -> None:
    interval, timeout = hb
    sent = heartbeat_close_at(peer)
    assert sent is not None, f"no 4000 close for {hb}"
    assert sent <= silent_since + interval + timeout + EPS
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (4000, False)
    assert peer.when(Closed) <= sent + HEARTBEAT_CLOSE_GRACE + EPS


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("hb", GRID, ids=[f"{i}-{t}" for i, t in GRID])
def test_a_silent_peer_is_detected_within_interval_plus_timeout(
    clock: FakeClock, protocol: str, hb: Tuple[float, float]
) -> None:
    peer = link(clock, protocol, hb)
    opened = clock.now
    peer.advance(hb[0] + hb[1] + HEARTBEAT_CLOSE_GRACE + 0.01)
    assert_detected(peer, opened, hb)
    # Exactly one heartbeat ping went out: a later ping never pushes the deadline.
    pings = [
        f
        for f in peer.frames
        if f.opcode == frames.OP_PING
        or (f.opcode == frames.OP_TEXT and f.json.get("type") == "tether:ping")
    ]
    assert len(pings) == (2 if protocol == "tether" else 1)  # tether: + the hello's ping


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("hb", GRID, ids=[f"{i}-{t}" for i, t in GRID])
def test_an_answering_peer_is_never_closed(
    clock: FakeClock, protocol: str, hb: Tuple[float, float]
) -> None:
    peer = link(clock, protocol, hb)
    peer.advance(45 * hb[0] + 3 * hb[1], answer=pong_for)
    assert peer.close_frames() == []
    assert not peer.session.closed
    rtts = peer.of(RoundTrip)
    assert len(rtts) >= 40
    assert all(r.rtt == 0.0 for r in rtts)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("hb", GRID, ids=[f"{i}-{t}" for i, t in GRID])
def test_a_peer_that_falls_silent_at_any_moment_is_detected(
    clock: FakeClock, protocol: str, hb: Tuple[float, float]
) -> None:
    rnd = random.Random(hash(hb) ^ len(protocol))
    for _ in range(5):
        peer = link(clock, protocol, hb)
        peer.advance(rnd.uniform(0, 5 * (hb[0] + hb[1])), answer=pong_for)
        silent_since = clock.now
        assert not peer.session.closed
        peer.advance(hb[0] + hb[1] + HEARTBEAT_CLOSE_GRACE + 0.01)
        assert_detected(peer, silent_since, hb)


@pytest.mark.parametrize("hb", [(1.0, 0.5), (1.0, 1.5), (0.1, 10.0)], ids=str)
def test_a_late_pong_does_not_save_the_link(clock: FakeClock, hb: Tuple[float, float]) -> None:
    peer = link(clock, "tether", hb)
    delayed = []
    peer.advance(hb[0] + hb[1] + 0.001, answer=lambda f: delayed.append(f) and None)
    for frame in delayed:
        reply = pong_for(frame)
        if reply:
            peer.feed(reply)
    peer.advance(HEARTBEAT_CLOSE_GRACE + 0.01)
    assert peer.closed_event().code == 4000


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("hb", [(1.0, 0.5), (1.0, 1.5), (1.0, 3.0), (0.1, 10.0)], ids=str)
@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragments"])
def test_a_trickled_never_ending_message_is_dead(
    clock: FakeClock, protocol: str, hb: Tuple[float, float], fragmented: bool
) -> None:
    """One byte per 0.1 s of a message that never ends proves nothing."""
    peer = link(clock, protocol, hb)
    chunk = begin_endless_message(peer, fragmented)
    since = clock.now
    limit = since + hb[0] + hb[1] + HEARTBEAT_CLOSE_GRACE + 0.5
    while not peer.session.closed and clock.now < limit:
        peer.advance(0.1)
        for i in range(0, len(chunk)):
            peer.feed(chunk[i : i + 1])
    assert_detected(peer, since, hb)


@pytest.mark.parametrize("hb", [(1.0, 0.5), (1.0, 3.0)], ids=str)
def test_whole_inbound_messages_count_as_liveness(
    clock: FakeClock, hb: Tuple[float, float]
) -> None:
    peer = link(clock, "tether", hb)
    data = text({"channel": "c", "type": "data", "payload": 1, "id": "a"})
    for _ in range(int(40 * (hb[0] + hb[1]))):
        peer.advance(0.1)
        peer.feed(data)  # never a pong
    assert not peer.session.closed


def test_a_paused_reader_is_not_declared_dead(clock: FakeClock) -> None:
    """While the loop holds reading back for a full 'block' consumer, the pong may sit unread."""
    hb = (1.0, 0.5)
    peer = link(clock, "tether", hb)
    peer.session.reading_paused = True
    peer.advance(20.0)
    assert not peer.session.closed
    peer.session.reading_paused = False
    peer.advance(hb[0] + hb[1] + HEARTBEAT_CLOSE_GRACE + 0.01)
    assert peer.closed_event().code == 4000


def test_no_heartbeat_before_the_link_opens(clock: FakeClock) -> None:
    peer = Peer(clock, heartbeat=(0.1, 0.1), auth=True, auth_timeout=100.0).start()
    peer.advance(10.0)
    assert peer.of(Opened) == []
    assert peer.close_frames() == []


def test_heartbeat_pings_carry_increasing_epoch_ms(clock: FakeClock) -> None:
    peer = link(clock, "tether", (0.0001, 1.0))
    peer.advance(0.01, answer=pong_for)
    ts = [
        f.json["ts"]
        for f in peer.frames
        if f.opcode == frames.OP_TEXT and f.json.get("type") == "tether:ping"
    ]
    assert len(ts) > 5
    assert ts == sorted(set(ts)), "never twice the same ts"
