"""Closing clears every deadline: whatever a sub-machine had pending, once the link is
closing only the close deadline is left, and once it is closed next_deadline() is None."""

from __future__ import annotations

from typing import Callable, Dict, List

import pytest
from protocol.sessionkit import (
    FakeClock,
    Msg,
    Peer,
    close_frame,
    data_msg,
    make_session,
    open_peer,
    server_frame,
    text,
)

from tether_sync.protocol import frames
from tether_sync.protocol.session import CLOSE_GRACE, Closed, Phase

HB = (1.0, 0.5)
WALL_EXPIRY = 3600.0  # the fake session's wall clock is its monotonic one (wall_offset 0)


def hello_pending(clock: FakeClock) -> Peer:
    return Peer(clock).start()  # hello sent, no answer: the safety net is pending


def auth_pending(clock: FakeClock) -> Peer:
    return Peer(clock, auth=True, extensions=()).start()  # TokenNeeded: its deadline runs


def ping_due(clock: FakeClock) -> Peer:
    return open_peer(clock, heartbeat=HB)


def pong_awaited(clock: FakeClock) -> Peer:
    peer = open_peer(clock, heartbeat=HB)
    peer.advance(HB[0])  # the ping is out, its pong deadline runs
    assert any(f.opcode == frames.OP_TEXT and f.json["type"] == "tether:ping" for f in peer.take())
    return peer


def open_with_auth(clock: FakeClock) -> Peer:
    peer = Peer(clock, auth=True, extensions=(), heartbeat=HB).start()
    peer.session.token_ready("tok", clock.now + WALL_EXPIRY, clock.now)
    peer.send_json({"type": "tether:auth-ok", "ok": True})
    assert peer.session.is_open
    return peer


def rotation_scheduled(clock: FakeClock) -> Peer:
    return open_with_auth(clock)  # heartbeat and rotation both pending


def rotation_retry(clock: FakeClock) -> Peer:
    peer = open_with_auth(clock)
    assert peer.session.refresh(clock.now)
    peer.session.token_failed(RuntimeError("idp down"), clock.now)
    peer.pump()
    return peer


PENDING: Dict[str, Callable[[FakeClock], Peer]] = {
    "hello safety net": hello_pending,
    "auth request": auth_pending,
    "ping due": ping_due,
    "pong awaited": pong_awaited,
    "rotation": rotation_scheduled,
    "rotation retry": rotation_retry,
}


def end_by_answered_close(peer: Peer) -> None:
    peer.session.close(1000, "bye", peer.clock.now)
    peer.pump()
    assert peer.session.next_deadline() == peer.clock.now + CLOSE_GRACE  # only this one left
    peer.feed(close_frame(1000))


def end_by_close_grace(peer: Peer) -> None:
    peer.session.close(1000, "bye", peer.clock.now)
    peer.pump()
    assert peer.session.next_deadline() == peer.clock.now + CLOSE_GRACE
    peer.advance(CLOSE_GRACE * 10)


def end_by_violation(peer: Peer) -> None:
    peer.feed(server_frame(0x3, b""))  # a reserved opcode: the link fails
    assert peer.session.phase is Phase.CLOSING
    assert peer.session.next_deadline() == peer.clock.now + CLOSE_GRACE
    peer.advance(CLOSE_GRACE * 10)


def end_by_server_close(peer: Peer) -> None:
    peer.feed(close_frame(1001))


def end_by_eof(peer: Peer) -> None:
    peer.eof()


def end_by_abort(peer: Peer) -> None:
    peer.session.abort(1006, "socket broke")
    peer.pump()


ENDINGS: Dict[str, Callable[[Peer], None]] = {
    "answered close": end_by_answered_close,
    "close grace": end_by_close_grace,
    "violation": end_by_violation,
    "server close": end_by_server_close,
    "eof": end_by_eof,
    "abort": end_by_abort,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("pending", list(PENDING))
def test_closing_clears_every_deadline(clock: FakeClock, pending: str, ending: str) -> None:
    peer = PENDING[pending](clock)
    assert peer.session.next_deadline() is not None, "the scenario must leave a deadline"
    peer.take()
    ENDINGS[ending](peer)
    peer.closed_event()
    assert peer.session.next_deadline() is None
    # Nothing wakes up later either: no ping, no token request, no second Closed.
    logged = len(peer.log)
    peer.session.on_deadline(clock.advance(1e6))
    peer.pump()
    assert len(peer.log) == logged
    assert [f.opcode for f in peer.take()] in ([], [frames.OP_CLOSE])


def test_while_closing_a_late_pong_and_token_schedule_nothing(clock: FakeClock) -> None:
    peer = rotation_retry(clock)
    peer.take()
    peer.session.close(1000, "bye", clock.now)
    peer.pump()
    close_at = clock.now + CLOSE_GRACE
    peer.session.token_ready("late", clock.now + WALL_EXPIRY, clock.now)
    peer.feed(text({"type": "tether:auth-ok", "ok": True}))
    peer.feed(text({"type": "tether:pong", "ts": 1}))
    assert peer.session.next_deadline() == close_at
    assert [f.opcode for f in peer.take()] == [frames.OP_CLOSE]  # no tether:auth after it


def carried() -> List[Msg]:
    msgs = [data_msg("a"), data_msg("b")]
    for seq, m in enumerate(msgs, 1):
        m._seq = seq
    return msgs


def test_carried_messages_due_when_the_link_closes_are_not_written_after_the_close_frame(
    clock: FakeClock,
) -> None:
    session = make_session(clock, extensions=())  # no hello: open at start, resends due
    msgs = carried()
    session.start(clock.now, resend=msgs)
    assert session.is_open and session.wants_write
    session.close(1000, "bye", clock.now)
    peer = Peer(clock, session)
    peer.pump()
    assert [f.opcode for f in peer.frames] == [frames.OP_CLOSE]
    peer.feed(close_frame(1000))
    assert isinstance(peer.log[-1], Closed)
    assert [m.id for m in session.take_unfinished()] == [m.id for m in msgs]
