"""Auth refusals, the closing handshake, the close-code echo and protocol violations."""

from __future__ import annotations

from typing import List

import pytest
from protocol.sessionkit import (
    FakeClock,
    Peer,
    close_frame,
    data_msg,
    open_peer,
    server_frame,
    text,
)

from tether_sync.exceptions import AuthError, ProtocolError
from tether_sync.protocol import frames
from tether_sync.protocol.session import (
    CLOSE_GRACE,
    AuthTrouble,
    Closed,
    Opened,
    Phase,
    Problem,
    TokenNeeded,
)

AUTH_OK = {"type": "tether:auth-ok", "ok": True}
AUTH_NO = {"type": "tether:auth-ok", "ok": False}


def auth_peer(clock: FakeClock) -> Peer:
    peer = Peer(clock, auth=True, extensions=()).start()
    assert peer.of(TokenNeeded) == [TokenNeeded(False)]
    peer.session.token_ready("tok-1", None, clock.now)
    peer.pump()
    return peer


# ---------------------------------------------------------------- auth refusals


def test_one_refusal_asks_for_a_fresh_token_and_then_opens(clock: FakeClock) -> None:
    peer = auth_peer(clock)
    peer.send_json(AUTH_NO)
    assert peer.of(TokenNeeded) == [TokenNeeded(False), TokenNeeded(True)]
    assert peer.close_frames() == []
    peer.session.token_ready("tok-2", None, clock.now)
    peer.send_json(AUTH_OK)
    assert peer.of(Opened) == [Opened(())]
    assert [f.json.get("token") for f in peer.frames] == ["tok-1", "tok-2"]


def test_two_refusals_close_with_1008_and_a_closed_event_carrying_an_auth_error(
    clock: FakeClock,
) -> None:
    peer = auth_peer(clock)
    peer.send_json(AUTH_NO)
    peer.session.token_ready("tok-2", None, clock.now)
    peer.send_json(AUTH_NO)
    (trouble,) = peer.of(AuthTrouble)
    assert trouble.final and isinstance(trouble.error, AuthError)
    (close,) = peer.close_frames()
    assert close.close_code == 1008
    assert peer.session.phase is Phase.CLOSING
    # The server answers the close: the Closed event ends the link, with the error.
    peer.feed(close_frame(1008))
    closed = peer.closed_event()
    assert closed.code == 1008
    assert isinstance(closed.error, AuthError)
    assert peer.of(Opened) == []


def test_two_refusals_and_a_silent_server_still_end_in_a_1008_closed_event(
    clock: FakeClock,
) -> None:
    peer = auth_peer(clock)
    peer.send_json(AUTH_NO)
    peer.session.token_ready("tok-2", None, clock.now)
    peer.send_json(AUTH_NO)
    t0 = clock.now
    peer.advance(CLOSE_GRACE + 0.01)
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (1008, False)
    assert isinstance(closed.error, AuthError)
    assert peer.when(Closed) == pytest.approx(t0 + CLOSE_GRACE)


def test_a_token_that_never_comes_closes_the_attempt(clock: FakeClock) -> None:
    peer = Peer(clock, auth=True, auth_timeout=2.0).start()
    peer.advance(2.5)
    (trouble,) = peer.of(AuthTrouble)
    assert not trouble.final and isinstance(trouble.error, TimeoutError)
    assert peer.close_frames()[0].close_code == 1000
    peer.eof()
    assert peer.closed_event().error is None


# ---------------------------------------------------------------- closing handshake


@pytest.mark.parametrize("code", [1000, 1001, 1011, 4321])
def test_a_server_close_is_echoed_with_its_code(clock: FakeClock, code: int) -> None:
    peer = open_peer(clock)
    peer.feed(close_frame(code, "bye"))
    (echo,) = peer.close_frames()
    assert echo.close_code == code
    closed = peer.closed_event()
    assert (closed.code, closed.reason, closed.was_clean) == (code, "bye", True)


def test_a_server_close_without_a_code_is_answered_1000(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.feed(close_frame(None))
    assert peer.close_frames()[0].close_code == 1000
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (1005, True)


def test_our_close_answered_is_clean(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.session.close(1000, "Client disconnect", clock.now)
    peer.pump()
    assert peer.close_frames()[0].close_code == 1000
    # Nothing but the close goes out once closing.
    peer.send_json({"type": "tether:ping", "ts": 1})
    assert [f.opcode for f in peer.take()][-1] == frames.OP_CLOSE
    peer.feed(close_frame(1000))
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (1000, True)


def test_our_close_unanswered_ends_after_the_grace(clock: FakeClock) -> None:
    peer = open_peer(clock)
    t0 = clock.now
    peer.session.close(1000, "bye", clock.now, grace=0.5)
    peer.advance(0.49)
    assert not peer.session.closed
    peer.advance(0.02)
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (1000, False)
    assert peer.when(Closed) == pytest.approx(t0 + 0.5)


def test_eof_without_a_close_frame_is_1006(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.eof()
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (1006, False)
    # Nothing more happens to a closed session.
    peer.feed(text({"type": "tether:ping", "ts": 1}))
    peer.eof()
    peer.session.on_deadline(clock.now + 100)
    assert len(peer.of(Closed)) == 1


def test_data_before_a_close_in_one_read_is_delivered(clock: FakeClock) -> None:
    from tether_sync.protocol.session import Received

    peer = open_peer(clock)
    peer.feed(text({"channel": "c", "type": "data", "payload": 1, "id": "a"}) + close_frame(1001))
    assert [type(e) for e in peer.new_events()][-2:] == [Received, Closed]


# ---------------------------------------------------------------- protocol violations

VIOLATIONS = {
    "reserved data opcode": (server_frame(0x3, b"x"), 1002),
    "reserved control opcode": (server_frame(0xB, b"x"), 1002),
    "RSV1 without deflate": (server_frame(frames.OP_TEXT, b"{}", rsv=4), 1002),
    "RSV2": (server_frame(frames.OP_TEXT, b"{}", rsv=2), 1002),
    "RSV3": (server_frame(frames.OP_BINARY, b"x", rsv=1), 1002),
    "masked server frame": (server_frame(frames.OP_TEXT, b"{}", masked=True), 1002),
    "invalid UTF-8": (server_frame(frames.OP_TEXT, b'{"a":"\xff"}'), 1007),
    "UTF-8 split over fragments, bad": (
        server_frame(frames.OP_TEXT, b"\xe2\x82", fin=False)
        + server_frame(frames.OP_CONT, b"\x41"),
        1007,
    ),
    "lone surrogate bytes": (
        server_frame(frames.OP_TEXT, "\ud800".encode("utf-8", "surrogatepass")),
        1007,
    ),
    "oversize frame": (server_frame(frames.OP_BINARY, b"", length=2**20 + 1), 1009),
    "oversize by fragments": (
        server_frame(frames.OP_BINARY, b"x" * 60000, fin=False)
        + server_frame(frames.OP_CONT, b"x" * 60000, fin=False)
        + server_frame(frames.OP_CONT, b"", length=2**20, fin=True),
        1009,
    ),
    "fragmented control": (server_frame(frames.OP_PING, b"x", fin=False), 1002),
    "control over 125 bytes": (server_frame(frames.OP_PING, b"x" * 126), 1002),
    "continuation with nothing open": (server_frame(frames.OP_CONT, b"x"), 1002),
    "new message inside a fragmented one": (
        server_frame(frames.OP_TEXT, b"a", fin=False) + server_frame(frames.OP_TEXT, b"b"),
        1002,
    ),
    "64-bit length with the top bit": (b"\x82\x7f\x80" + b"\x00" * 7, 1002),
    "close payload of 1 byte": (server_frame(frames.OP_CLOSE, b"\x03"), 1002),
    "close code 1005 on the wire": (close_frame(1005), 1002),
    "close code 999": (close_frame(999), 1002),
    "close code 5000": (close_frame(5000), 1002),
    "close reason not UTF-8": (server_frame(frames.OP_CLOSE, b"\x03\xe8\xff"), 1007),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_each_violation_gives_one_problem_and_a_close_with_its_code(
    clock: FakeClock, name: str, split: bool
) -> None:
    data, code = VIOLATIONS[name]
    peer = open_peer(clock, max_message_size=2**20)
    peer.new_events()
    if split and len(data) < 2000:
        peer.feed(*(data[i : i + 1] for i in range(len(data))))
    else:
        peer.feed(data)
    # More bytes after the violation change nothing.
    peer.feed(text({"type": "tether:ping", "ts": 5}), server_frame(0x3, b"again"))
    peer.advance(CLOSE_GRACE + 0.1)
    events = peer.new_events()
    problems = [e for e in events if isinstance(e, Problem)]
    assert len(problems) == 1, events
    assert isinstance(problems[0].error, ProtocolError)
    closes = peer.close_frames()
    assert [f.close_code for f in closes] == [code]
    closed = peer.closed_event()
    assert closed.code == code
    assert not any(
        f.opcode == frames.OP_TEXT and f.json.get("type") == "tether:pong" for f in peer.frames
    ), "nothing is answered after a violation"


def test_messages_before_a_violation_in_the_same_read_are_delivered(clock: FakeClock) -> None:
    from tether_sync.protocol.session import Received

    peer = open_peer(clock)
    good = text({"channel": "c", "type": "data", "payload": 1, "id": "a"})
    peer.feed(good + server_frame(0x3, b""))
    kinds: List[type] = [type(e) for e in peer.log]
    assert kinds.index(Received) < kinds.index(Problem)


def test_after_a_violation_the_link_ends_after_the_close_grace(clock: FakeClock) -> None:
    peer = open_peer(clock)
    t0 = clock.now
    peer.feed(server_frame(0x3, b""))
    assert not peer.session.closed
    # The parser is dead: not even the peer's close frame can be read.
    peer.feed(close_frame(1002))
    assert not peer.session.closed
    peer.advance(CLOSE_GRACE)
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (1002, False)
    assert peer.when(Closed) == pytest.approx(t0 + CLOSE_GRACE)


def test_a_server_ping_is_answered_with_its_payload_and_a_pong_is_ignored(
    clock: FakeClock,
) -> None:
    peer = open_peer(clock)
    peer.take()
    peer.feed(server_frame(frames.OP_PING, b"abc"), server_frame(frames.OP_PONG, b"zz"))
    assert [(f.opcode, f.payload) for f in peer.take()] == [(frames.OP_PONG, b"abc")]


def test_a_fragmented_message_with_a_ping_inside_is_reassembled(clock: FakeClock) -> None:
    from tether_sync.protocol.session import Received

    peer = open_peer(clock)
    peer.take()
    peer.feed(
        server_frame(frames.OP_TEXT, b'{"channel":"c","type":"da', fin=False)
        + server_frame(frames.OP_PING, b"p")
        + server_frame(frames.OP_CONT, b'ta","payload":7,"id":"x"}')
    )
    assert [(f.opcode, f.payload) for f in peer.take()] == [(frames.OP_PONG, b"p")]
    assert [item for e in peer.of(Received) for item in e.items] == [("c", 7)]


def test_sending_on_a_closed_session_is_refused_loudly(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.eof()
    with pytest.raises(RuntimeError):
        peer.session.send([data_msg()])


def test_a_malformed_server_close_is_a_violation_answered_with_its_code(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.feed(close_frame(999, "bad"))
    assert [type(e) for e in peer.new_events()][-2:] == [Problem, Closed]
    assert [f.close_code for f in peer.close_frames()] == [1002]
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (1002, False)


@pytest.mark.parametrize("protocol", ["tether", "raw"])
def test_nothing_read_after_a_close_frame_in_the_same_read_is_delivered(
    clock: FakeClock, protocol: str
) -> None:
    from tether_sync.protocol.session import Received

    envelope = b'{"channel":"c","type":"data","payload":1,"id":"a"}'
    peer = Peer(clock, protocol=protocol).start() if protocol == "raw" else open_peer(clock)
    peer.new_events()
    peer.feed(
        server_frame(frames.OP_TEXT, envelope)
        + close_frame(1001)
        + server_frame(frames.OP_TEXT, envelope.replace(b"1", b"2"))
    )
    events = peer.new_events()
    kinds = [type(e) for e in events]
    assert kinds[-1] is Closed
    delivered = [item for e in events if isinstance(e, Received) for item in e.items]
    assert len(delivered) == 1 and kinds.index(Received) < kinds.index(Closed)
