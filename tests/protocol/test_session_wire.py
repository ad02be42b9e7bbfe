"""Wire order, the §5 hello negotiation, seq numbering, acks, refusals and resume."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from protocol.sessionkit import FakeClock, Msg, Peer, data_msg, make_session, open_peer

from tether_sync.exceptions import ServerError
from tether_sync.protocol.session import (
    Acked,
    AuthAccepted,
    Continuity,
    Opened,
    Position,
    Problem,
    Recovery,
    Refused,
    TokenNeeded,
    Written,
)

HELLO_OK: Dict[str, Any] = {
    "type": "tether:hello-ok",
    "session": "sid-1",
    "features": ["ack", "resume"],
    "acked": 0,
}


def hello_ok(**fields: Any) -> Dict[str, Any]:
    return {**HELLO_OK, **fields}


def ids(items: List[Msg]) -> List[str]:
    return [m.id for m in items]


def data_frames(peer: Peer) -> List[Dict[str, Any]]:
    return [f.json for f in peer.frames if f.opcode == 1 and f.json.get("type") == "data"]


def numbered(seq: int, payload: str = "old") -> Msg:
    m = data_msg(payload)
    m._seq = seq
    return m


# ---------------------------------------------------------------- rule 3 and wire order


def test_without_auth_only_hello_and_its_ping_go_out_before_the_decision(clock: FakeClock) -> None:
    peer = Peer(clock, subscriptions=["a"], queue=[data_msg()]).start()
    assert peer.sent_types() == ["tether:hello", "tether:ping"]
    hello = peer.frames[0].json
    assert hello == {"type": "tether:hello", "session": "sid-1", "features": ["ack", "resume"]}
    assert not peer.session.is_open
    # The loop's subscribe() before the decision writes nothing (it re-announces on Opened).
    peer.session.subscribe("early", "x")
    peer.advance(5.0)
    assert peer.sent_types() == ["tether:hello", "tether:ping"]
    assert peer.of(Opened) == []


def test_with_auth_only_hello_and_auth_go_out_before_the_decision(clock: FakeClock) -> None:
    peer = Peer(clock, auth=True, subscriptions=["a"], queue=[data_msg()]).start()
    assert peer.sent_types() == ["tether:hello"]
    assert peer.of(TokenNeeded) == [TokenNeeded(False)]
    peer.session.token_ready("tok", None, clock.now)
    peer.pump()
    assert peer.sent_types() == ["tether:hello", "tether:auth"]
    peer.send_json(hello_ok())
    # hello-ok decides the extension, but the link opens only on auth-ok.
    assert peer.sent_types() == ["tether:hello", "tether:auth"]
    assert not peer.session.is_open
    peer.send_json({"type": "tether:auth-ok", "ok": True})
    assert peer.session.is_open
    assert peer.sent_types() == ["tether:hello", "tether:auth", "subscribe", "data"]


def test_order_hello_auth_subscriptions_resends_queue(clock: FakeClock) -> None:
    cont = Continuity("sid-1", last_seq=3)
    carried = [numbered(1), numbered(2), numbered(3)]
    queued = data_msg("new")
    session = make_session(clock, auth=True, continuity=cont)
    peer = Peer(clock, session, subscriptions=["a", "b"], queue=[queued])
    peer.start(resend=carried)
    peer.session.token_ready("tok", None, clock.now)
    peer.pump()
    peer.send_json(hello_ok(acked=1))
    peer.send_json({"type": "tether:auth-ok", "ok": True})
    wire = [f.json for f in peer.frames]
    kinds = [(m["type"], m.get("channel"), m.get("seq")) for m in wire]
    assert kinds == [
        ("tether:hello", None, None),
        ("tether:auth", None, None),
        ("subscribe", "a", None),
        ("subscribe", "b", None),
        ("data", "chat", 2),
        ("data", "chat", 3),
        ("data", "chat", 4),
    ]
    # The carried message <= acked was resolved without a resend; resends keep their id.
    assert [ids(e.items) for e in peer.of(Acked)] == [[carried[0].id]]
    assert [m["id"] for m in wire[4:6]] == ids(carried[1:])
    assert wire[6]["id"] == queued.id


def test_order_without_extension_auth_subscriptions_resends_queue(clock: FakeClock) -> None:
    carried = [data_msg("unwritten-before")]
    peer = Peer(clock, make_session(clock, auth=True, extensions=()), subscriptions=["a"])
    peer.queue = [data_msg("new")]
    peer.start(resend=carried)
    assert peer.sent_types() == []
    peer.session.token_ready("tok", None, clock.now)
    peer.pump()
    peer.send_json({"type": "tether:auth-ok", "ok": True})
    payloads = [(m["type"], m.get("payload")) for m in (f.json for f in peer.frames)]
    assert payloads == [
        ("tether:auth", None),
        ("subscribe", None),
        ("data", "unwritten-before"),
        ("data", "new"),
    ]


# ---------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    "granted, features",
    [
        (["ack", "resume"], ("ack", "resume")),
        (["resume", "ack"], ("ack", "resume")),
        (["ack"], ("ack",)),
        (["resume", "bogus"], ("resume",)),
        ([], ()),
    ],
)
def test_hello_ok_grants_the_intersection(clock: FakeClock, granted: Any, features: Any) -> None:
    peer = open_peer(clock, hello_ok={"features": granted}, queue=[data_msg()])
    assert peer.of(Opened) == [Opened(features)]
    assert peer.session.features == features
    (sent,) = data_frames(peer)
    assert ("seq" in sent) == ("ack" in features)


@pytest.mark.parametrize(
    "first",
    [
        {"type": "tether:pong", "ts": 1000000},
        {"type": "tether:error", "error": "unknown type"},
        {"type": "tether:hello", "session": "sid-1", "features": ["ack", "resume"]},
    ],
    ids=["pong", "error", "hello-echo"],
)
def test_without_auth_a_reply_before_hello_ok_turns_the_extension_off(
    clock: FakeClock, first: Dict[str, Any]
) -> None:
    peer = Peer(clock, queue=[data_msg()]).start()
    peer.send_json(first)
    assert peer.session.is_open
    assert peer.of(Opened) == [Opened(())]
    assert "seq" not in data_frames(peer)[0]
    # A late hello-ok changes nothing.
    peer.send_json(hello_ok())
    assert peer.session.features == ()
    peer.session.send([data_msg()])
    peer.pump()
    assert all("seq" not in d for d in data_frames(peer))


@pytest.mark.parametrize("first", ["auth-ok", "error"])
def test_with_auth_a_reply_before_hello_ok_turns_the_extension_off(
    clock: FakeClock, first: str
) -> None:
    peer = Peer(clock, auth=True, queue=[data_msg()]).start()
    peer.session.token_ready("tok", None, clock.now)
    peer.pump()
    if first == "error":
        peer.send_json({"type": "tether:error", "error": "unknown type tether:hello"})
        assert not peer.session.is_open
    peer.send_json({"type": "tether:auth-ok", "ok": True})
    assert peer.of(Opened) == [Opened(())]
    assert "seq" not in data_frames(peer)[0]


def test_a_silent_server_opens_after_the_safety_net_without_the_extension(
    clock: FakeClock,
) -> None:
    peer = Peer(clock, make_session(clock, auth_timeout=3.0)).start()
    peer.advance(2.9)
    assert not peer.session.is_open
    peer.advance(0.2)
    assert peer.of(Opened) == [Opened(())]


# ---------------------------------------------------------------- seq (rule 4)


def test_new_messages_are_numbered_above_hello_oks_acked(clock: FakeClock) -> None:
    # Rule 12 keeps acked at or below our own last seq, so above both is above ours.
    session = make_session(clock, continuity=Continuity("sid-1", last_seq=10))
    peer = open_peer(clock, session=session, hello_ok={"acked": 10}, queue=[data_msg(), data_msg()])
    assert [d["seq"] for d in data_frames(peer)] == [11, 12]
    assert peer.session.continuity.last_seq == 12


def test_new_messages_are_numbered_above_our_own_last_seq(clock: FakeClock) -> None:
    session = make_session(clock, continuity=Continuity("sid-1", last_seq=40))
    peer = Peer(clock, session, queue=[data_msg()]).start()
    peer.send_json(hello_ok(acked=7))
    assert [d["seq"] for d in data_frames(peer)] == [41]


def test_resends_are_never_renumbered(clock: FakeClock) -> None:
    cont = Continuity("sid-1")
    first = open_peer(clock, session=make_session(clock, continuity=cont))
    msgs = [data_msg(i) for i in range(4)]
    first.session.send(msgs)
    first.pump()
    first.send_json({"type": "tether:ack", "seq": 1})
    first.eof()
    carried = first.session.take_unfinished()
    assert ids(carried) == ids(msgs[1:])
    assert [m._seq for m in carried] == [2, 3, 4]

    second = Peer(clock, make_session(clock, continuity=cont), queue=[data_msg("next")])
    second.start(resend=carried)
    second.send_json(hello_ok(acked=2))  # the server got seq 2 before the link died
    sent = [(d["id"], d["seq"]) for d in data_frames(second)]
    assert sent[:2] == [(msgs[2].id, 3), (msgs[3].id, 4)]
    assert sent[2][1] == 5
    assert [ids(e.items) for e in second.of(Acked)] == [[msgs[1].id]]


def test_hello_ok_acked_at_the_highest_seq_resolves_every_carried_message(
    clock: FakeClock,
) -> None:
    cont = Continuity("sid-1", last_seq=3)
    carried = [numbered(1), numbered(2), numbered(3)]
    peer = Peer(clock, make_session(clock, continuity=cont), queue=[data_msg()])
    peer.start(resend=carried)
    peer.send_json(hello_ok(acked=3))
    assert [ids(e.items) for e in peer.of(Acked)] == [ids(carried)]
    assert [d["seq"] for d in data_frames(peer)] == [4]


def test_carried_messages_go_out_without_seq_when_the_new_server_has_no_ack(
    clock: FakeClock,
) -> None:
    cont = Continuity("sid-1", last_seq=2)
    carried = [numbered(1), numbered(2)]
    peer = Peer(clock, make_session(clock, continuity=cont)).start(resend=carried)
    peer.send_json({"type": "tether:pong", "ts": 1000000})  # no hello-ok: extension off
    sent = data_frames(peer)
    assert [d["id"] for d in sent] == ids(carried)
    assert all("seq" not in d for d in sent)
    assert [ids(e.items) for e in peer.of(Written)] == [ids(carried)]


# ---------------------------------------------------------------- acks


def test_cumulative_acks_resolve_in_order(clock: FakeClock) -> None:
    peer = open_peer(clock)
    msgs = [data_msg(i) for i in range(5)]
    peer.session.send(msgs)
    peer.pump()
    assert peer.of(Written) == []  # with acks, written is not done
    assert peer.session.unacked == 5
    peer.new_events()
    peer.send_json({"type": "tether:ack", "seq": 2})
    peer.send_json({"type": "tether:ack", "seq": 1})  # stale: nothing
    peer.send_json({"type": "tether:ack", "seq": 5})
    peer.send_json({"type": "tether:ack", "seq": 5})  # nothing left
    assert [ids(e.items) for e in peer.new_events()] == [ids(msgs[:2]), ids(msgs[2:])]
    assert peer.session.unacked == 0
    assert peer.session.take_unfinished() == []


def test_acks_of_one_read_resolve_in_one_event_whatever_their_spelling(
    clock: FakeClock,
) -> None:
    # One read with several acks (as a bulk send gets them): one Acked event, in
    # seq order. The compact spelling takes the hot path, the others the general
    # one (other key order, spaces, extra fields): the same result.
    from protocol.sessionkit import text

    peer = open_peer(clock)
    msgs = [data_msg(i) for i in range(8)]
    peer.session.send(msgs)
    peer.pump()
    peer.new_events()
    peer.feed(
        text('{"type":"tether:ack","seq":2}')
        + text('{"seq": 4, "type": "tether:ack"}')
        + text({"type": "tether:ack", "seq": 3})  # stale
        + text({"type": "tether:ack", "seq": 6, "extra": [1]})
    )
    assert [ids(e.items) for e in peer.new_events()] == [ids(msgs[:6])]
    assert peer.session.unacked == 2
    # An ack is the extension's own message: never handed to the application.
    assert received(peer) == []


def test_an_ack_on_a_link_without_the_ack_feature_is_ignored(clock: FakeClock) -> None:
    peer = open_peer(clock, hello_ok={"features": ["resume"]})
    peer.session.send([data_msg()])
    peer.pump()
    peer.send_json({"type": "tether:ack", "seq": 1})
    assert len(peer.of(Written)) == 1
    assert peer.of(Acked) == []


# ---------------------------------------------------------------- refusals (rule 6)


def test_a_refused_message_fails_and_a_later_ack_does_not_revive_it(clock: FakeClock) -> None:
    peer = open_peer(clock)
    msgs = [data_msg(i) for i in range(4)]
    peer.session.send(msgs)
    peer.pump()
    peer.new_events()
    peer.send_json({"type": "tether:error", "error": "not allowed", "id": msgs[1].id})
    refused, problem = peer.new_events()
    assert isinstance(refused, Refused) and ids(refused.items) == [msgs[1].id]
    assert isinstance(refused.error, ServerError)
    assert isinstance(problem, Problem) and isinstance(problem.error, ServerError)
    peer.send_json({"type": "tether:ack", "seq": 4})
    (acked,) = peer.new_events()
    assert isinstance(acked, Acked)
    assert ids(acked.items) == [msgs[0].id, msgs[2].id, msgs[3].id]


def test_a_refused_message_is_never_resent(clock: FakeClock) -> None:
    peer = open_peer(clock)
    msgs = [data_msg(i) for i in range(3)]
    peer.session.send(msgs)
    peer.pump()
    peer.send_json({"type": "tether:error", "error": "no", "id": msgs[0].id})
    peer.eof()
    assert ids(peer.session.take_unfinished()) == ids(msgs[1:])


def test_an_error_naming_no_message_is_only_a_problem(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.session.send([data_msg()])
    peer.pump()
    peer.new_events()
    peer.send_json({"type": "tether:error", "error": "something"})
    events = peer.new_events()
    assert [type(e) for e in events] == [Problem]
    assert peer.session.is_open
    assert peer.session.unacked == 1


# ---------------------------------------------------------------- resume (rules 9, 10)


def envelope_in(channel: str, offset: int, epoch: str = "e1", payload: Any = None) -> Any:
    return {
        "channel": channel,
        "type": "data",
        "payload": payload if payload is not None else offset,
        "id": f"s{offset}",
        "offset": offset,
        "epoch": epoch,
    }


def received(peer: Peer) -> List[Any]:
    from tether_sync.protocol.session import Received

    return [item for e in peer.of(Received) for item in e.items]


def test_subscribe_resumes_from_the_last_position_seen(clock: FakeClock) -> None:
    cont = Continuity("sid-1")
    first = open_peer(clock, session=make_session(clock, continuity=cont))
    first.session.subscribe("news", "s-1")
    for k in (1, 2, 3):
        first.send_json(envelope_in("news", k))
    first.eof()
    assert cont.positions["news"] == Position("e1", 3)

    second = open_peer(
        clock, session=make_session(clock, continuity=cont), subscriptions=["news", "fresh"]
    )
    subs = [f.json for f in second.frames if f.json.get("type") == "subscribe"]
    assert subs == [
        {"channel": "news", "type": "subscribe", "id": "sub-news", "epoch": "e1", "offset": 3},
        {"channel": "fresh", "type": "subscribe", "id": "sub-fresh"},
    ]


def test_subscribe_carries_no_position_when_resume_is_not_granted(clock: FakeClock) -> None:
    cont = Continuity("sid-1", positions={"news": Position("e1", 3)})
    peer = open_peer(
        clock,
        session=make_session(clock, continuity=cont),
        hello_ok={"features": ["ack"]},
        subscriptions=["news"],
    )
    subs = [f.json for f in peer.frames if f.json.get("type") == "subscribe"]
    assert subs == [{"channel": "news", "type": "subscribe", "id": "sub-news"}]


def test_duplicates_by_offset_are_dropped_and_a_new_epoch_starts_over(clock: FakeClock) -> None:
    peer = open_peer(clock)
    for k in (1, 2, 2, 1, 3):
        peer.send_json(envelope_in("news", k))
    peer.send_json(envelope_in("news", 1, epoch="e2"))
    peer.send_json(envelope_in("news", 1, epoch="e2"))
    peer.send_json(envelope_in("other", 1))
    # Direct echoes carry no offset: never dropped.
    peer.send_json({"channel": "news", "type": "data", "payload": "echo", "id": "x"})
    peer.send_json({"channel": "news", "type": "data", "payload": "echo", "id": "x"})
    assert received(peer) == [
        ("news", 1),
        ("news", 2),
        ("news", 3),
        ("news", 1),
        ("other", 1),
        ("news", "echo"),
        ("news", "echo"),
    ]


def subscribed(channel: str, recovered: bool, offset: int, epoch: str = "e1") -> Dict[str, Any]:
    return {
        "type": "tether:subscribed",
        "channel": channel,
        "recovered": recovered,
        "epoch": epoch,
        "offset": offset,
    }


def test_recovery_event_only_when_a_resume_was_asked_and_failed(clock: FakeClock) -> None:
    cont = Continuity("sid-1", positions={"asked": Position("e1", 5), "ok": Position("e1", 2)})
    peer = open_peer(
        clock, session=make_session(clock, continuity=cont), subscriptions=["asked", "ok", "new"]
    )
    peer.send_json(subscribed("new", False, 9))  # nothing asked: no event
    peer.send_json(subscribed("ok", True, 2))  # recovered: no event
    peer.send_json(subscribed("asked", False, 40, epoch="e2"))
    assert peer.of(Recovery) == [Recovery("asked", False, "e2", 40)]
    # The position follows the server's answer (rule 9): offset 41 is next.
    peer.send_json(envelope_in("asked", 40, epoch="e2"))
    peer.send_json(envelope_in("asked", 41, epoch="e2"))
    assert received(peer) == [("asked", 41)]
    # A second answer for the same channel is rule 13's (the server lost its
    # position): a recovery again, and the new position is taken.
    peer.send_json(subscribed("asked", False, 50, epoch="e3"))
    assert peer.of(Recovery)[1:] == [Recovery("asked", False, "e3", 50)]
    assert peer.session.continuity.positions["asked"] == Position("e3", 50)


def test_unsubscribe_forgets_the_position(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.send_json(envelope_in("news", 4))
    peer.session.unsubscribe("news", "u1")
    peer.pump()
    assert "news" not in peer.session.continuity.positions
    assert peer.frames[-1].json == {"channel": "news", "type": "unsubscribe", "id": "u1"}


def test_auth_accepted_before_opened(clock: FakeClock) -> None:
    peer = Peer(clock, auth=True).start()
    peer.session.token_ready("tok", 2e9, clock.now)
    peer.send_json(hello_ok())
    peer.send_json({"type": "tether:auth-ok", "ok": True})
    kinds = [type(e) for e in peer.log]
    assert kinds == [TokenNeeded, AuthAccepted, Opened]


def test_one_read_of_mixed_frames_is_delivered_in_wire_order(clock: FakeClock) -> None:
    # The hot path batches plain data envelopes; everything else (non-JSON text, a
    # ping, an envelope with an offset, a binary frame, a number as a channel)
    # takes the general path between them, and the order stays the wire's.
    from protocol.sessionkit import close_frame, server_frame, text

    from tether_sync.protocol import frames

    peer = open_peer(clock)
    peer.session.subscribe("r", "s-1")
    read = b"".join(
        [
            text({"channel": "a", "type": "data", "payload": 1}),
            text({"channel": "a", "type": "data", "payload": 2}),
            server_frame(frames.OP_TEXT, b"not json"),
            text({"channel": 5, "type": "data", "payload": 3}),
            text({"type": "tether:ping", "ts": 9}),
            text(envelope_in("r", 1, payload=4)),
            text([1, 2]),
            server_frame(frames.OP_BINARY, b"\x00bin"),
            text({"channel": "a", "type": "data", "payload": 5, "offset": None}),
            close_frame(1000),
            text({"channel": "a", "type": "data", "payload": 6}),
        ]
    )
    peer.take()
    peer.feed(read)
    assert received(peer) == [
        ("a", 1),
        ("a", 2),
        (None, "not json"),
        ("5", 3),
        ("r", 4),
        (None, "[1, 2]"),
        (None, b"\x00bin"),
        ("a", 5),
    ]
    sent = peer.take_json()
    assert {"type": "tether:pong", "ts": 9} in sent
    assert peer.session.continuity.positions["r"].offset == 1
