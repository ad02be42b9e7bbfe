"""Nothing taken on trust from the server: DESIGN §5 rules 12 and 13, frame by frame.

Rule 12: every ``tether:ack``, ``tether:hello-ok``, ``tether:subscribed`` and
envelope position is checked. A lie (an ack above the highest ``seq`` numbered,
a negative or non-integer one, a session id or an epoch that is no short string,
an offset that is no position) fails the link with 1002 and one
:class:`ProtocolError`, and resolves nothing: no :class:`Acked`, no ``seq``
moved, the unacked messages carried to the next link with their numbers. An ack
below an earlier one is no lie: it changes nothing.

Rule 13: a ``tether:subscribed`` may come again while subscribed (a server node
that lost its position): ``recovered: false`` raises :class:`Recovery` and the
given position is taken; ``recovered: true`` means its replay follows.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest
from protocol.sessionkit import (
    FakeClock,
    Msg,
    Peer,
    close_frame,
    data_msg,
    make_session,
    open_peer,
    text,
)

from tether_sync.exceptions import ProtocolError
from tether_sync.protocol.session import (
    Acked,
    Closed,
    Continuity,
    Opened,
    Phase,
    Position,
    Problem,
    Received,
    Recovery,
)

HUGE = [2**63, 2**64, 10**30]

# seq values an ack may never carry when 5 messages were numbered (5 is the highest).
BAD_SEQS: Dict[str, Any] = {
    "above-highest": 6,
    "far-above": 3000,
    "2**63": 2**63,
    "2**64": 2**64,
    "10**30": 10**30,
    "negative": -1,
    "float": 1.5,
    "integral-float": 2.0,
    "string": "3",
    "true": True,
    "false": False,
    "null": None,
    "list": [3],
}


def ids(items: List[Msg]) -> List[str]:
    return [m.id for m in items]


def acked_ids(peer: Peer) -> List[str]:
    return [m.id for e in peer.of(Acked) for m in e.items]


def the_protocol_error(peer: Peer) -> ProtocolError:
    """The one rule 12 violation the session reported (and the close it sent)."""
    problems = [e.error for e in peer.of(Problem)]
    assert len(problems) == 1, peer.log
    error = problems[0]
    assert isinstance(error, ProtocolError) and error.close_code == 1002
    assert [f.close_code for f in peer.close_frames()] == [1002]
    assert peer.session.phase in (Phase.CLOSING, Phase.CLOSED)
    return error


def five_unacked(clock: FakeClock) -> tuple[Peer, List[Msg]]:
    """An open link with messages seq 1..5 written; the server acked 2 of them."""
    peer = open_peer(clock)
    msgs = [data_msg(i) for i in range(5)]
    peer.session.send(msgs)
    peer.pump()
    peer.send_json({"type": "tether:ack", "seq": 2})
    assert acked_ids(peer) == ids(msgs[:2])
    return peer, msgs


# ---------------------------------------------------------------- acks


@pytest.mark.parametrize("seq", list(BAD_SEQS.values()), ids=list(BAD_SEQS))
def test_a_lying_ack_fails_the_link_and_resolves_nothing(clock: FakeClock, seq: Any) -> None:
    peer, msgs = five_unacked(clock)
    peer.send_json({"type": "tether:ack", "seq": seq})
    error = the_protocol_error(peer)
    assert "tether:ack" in str(error) and "seq" in str(error)
    assert acked_ids(peer) == ids(msgs[:2])  # nothing more resolved
    assert peer.session.continuity.last_seq == 5  # nothing renumbered either
    peer.feed(close_frame(1002))
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (1002, False)
    # The three unacked go to the next link with their numbers (rule 4).
    carried = peer.session.take_unfinished()
    assert ids(carried) == ids(msgs[2:]) and [m._seq for m in carried] == [3, 4, 5]


def test_an_ack_without_seq_is_a_lie_too(clock: FakeClock) -> None:
    peer, msgs = five_unacked(clock)
    peer.send_json({"type": "tether:ack"})
    the_protocol_error(peer)
    assert acked_ids(peer) == ids(msgs[:2])


@pytest.mark.parametrize("spelling", ["hot", "general"])
def test_nothing_after_a_lie_in_the_same_read_is_believed(clock: FakeClock, spelling: str) -> None:
    # The compact spelling takes the ack hot path, the spaced one the general path.
    peer, msgs = five_unacked(clock)

    def ack(seq: int) -> bytes:
        if spelling == "hot":
            return text(f'{{"type":"tether:ack","seq":{seq}}}')
        return text(f'{{"seq": {seq}, "type": "tether:ack"}}')

    data = {"channel": "chat", "type": "data", "payload": "after"}
    peer.feed(ack(3) + ack(99) + ack(5) + text(data) + close_frame(1002))
    the_protocol_error(peer)
    # The ack before the lie counted; the valid-looking ack and the data after it did not.
    assert acked_ids(peer) == ids(msgs[:3])
    assert peer.of(Received) == []
    assert peer.closed_event().code == 1002  # the peer's close frame still ends it
    # Nor does a later read count.
    assert peer.session.take_unfinished() and not peer.of(Opened)[1:]


def test_a_lie_in_a_later_read_while_closing_changes_nothing(clock: FakeClock) -> None:
    peer, msgs = five_unacked(clock)
    peer.send_json({"type": "tether:ack", "seq": -1})
    peer.send_json({"type": "tether:ack", "seq": 5})
    assert acked_ids(peer) == ids(msgs[:2])
    peer.advance(5.0)  # no close frame from the peer: the grace ends the link
    assert peer.closed_event().code == 1002


def test_backwards_and_repeated_acks_change_nothing_and_are_no_lie(clock: FakeClock) -> None:
    peer, msgs = five_unacked(clock)
    peer.send_json({"type": "tether:ack", "seq": 4})
    for seq in (4, 3, 1, 0):
        peer.send_json({"type": "tether:ack", "seq": seq})
    assert acked_ids(peer) == ids(msgs[:4])
    assert peer.of(Problem) == [] and peer.session.is_open
    peer.send_json({"type": "tether:ack", "seq": 5})  # the highest numbered: fine
    assert acked_ids(peer) == ids(msgs)


def test_ack_zero_before_anything_is_numbered_is_no_lie(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.send_json({"type": "tether:ack", "seq": 0})
    assert peer.session.is_open and peer.of(Problem) == []
    peer.send_json({"type": "tether:ack", "seq": 1})
    the_protocol_error(peer)


def test_the_highest_numbered_counts_messages_given_up_after_their_number(
    clock: FakeClock,
) -> None:
    # A durable outbox numbers at send() time, and a message given up after its
    # number leaves a gap: an ack up to the highest number is believed.
    continuity = Continuity("sid-1", last_seq=40)
    peer = open_peer(clock, session=make_session(clock, continuity=continuity))
    m = data_msg()
    m._seq = 45
    peer.session.send([m])
    peer.pump()
    peer.send_json({"type": "tether:ack", "seq": 45})
    assert acked_ids(peer) == [m.id]
    peer.send_json({"type": "tether:ack", "seq": 46})
    the_protocol_error(peer)


# ---------------------------------------------------------------- hello-ok


def carried_three(clock: FakeClock, *, auth: bool = False) -> tuple[Peer, List[Msg]]:
    """A new link carrying seq 1..3 from an earlier one; its hello-ok not in yet."""
    cont = Continuity("sid-1", last_seq=3)
    carried = []
    for n in (1, 2, 3):
        m = data_msg(f"old{n}")
        m._seq = n
        carried.append(m)
    peer = Peer(clock, make_session(clock, continuity=cont, auth=auth), queue=[data_msg()])
    peer.start(resend=carried)
    if auth:
        peer.session.token_ready("tok", None, clock.now)
        peer.pump()
    return peer, carried


HELLO_OK: Dict[str, Any] = {
    "type": "tether:hello-ok",
    "session": "sid-1",
    "features": ["ack", "resume"],
    "acked": 1,
}

BAD_HELLO_OKS: Dict[str, Dict[str, Any]] = {
    **{f"acked-{name}": {"acked": v} for name, v in BAD_SEQS.items() if v != 6},
    "acked-above-highest": {"acked": 4},
    "acked-missing": {"acked": ...},
    "session-missing": {"session": ...},
    "session-number": {"session": 5},
    "session-empty": {"session": ""},
    "session-65-chars": {"session": "s" * 65},
    "session-list": {"session": ["sid-1"]},
    "features-string": {"features": "ack"},
    "features-null": {"features": None},
    "features-missing": {"features": ...},
    "features-not-strings": {"features": ["ack", 1]},
}


def hello_ok(change: Dict[str, Any]) -> Dict[str, Any]:
    msg = {**HELLO_OK, **change}
    return {k: v for k, v in msg.items() if v is not ...}


@pytest.mark.parametrize("auth", [False, True], ids=["no-auth", "auth"])
@pytest.mark.parametrize("change", list(BAD_HELLO_OKS.values()), ids=list(BAD_HELLO_OKS))
def test_a_lying_hello_ok_fails_the_link_and_resolves_nothing(
    clock: FakeClock, change: Dict[str, Any], auth: bool
) -> None:
    peer, carried = carried_three(clock, auth=auth)
    peer.send_json(hello_ok(change))
    error = the_protocol_error(peer)
    assert "tether:hello-ok" in str(error)
    assert peer.of(Acked) == [] and peer.of(Opened) == []
    assert peer.session.continuity.last_seq == 3
    assert [f.json.get("type") for f in peer.frames if f.opcode == 1].count("data") == 0
    # An auth-ok after the lie opens nothing.
    peer.send_json({"type": "tether:auth-ok", "ok": True})
    assert peer.of(Opened) == []
    peer.feed(close_frame(1002))
    assert peer.closed_event().code == 1002
    again = peer.session.take_unfinished()
    assert ids(again) == ids(carried) and [m._seq for m in again] == [1, 2, 3]


def test_a_truthful_hello_ok_at_the_limits_is_believed(clock: FakeClock) -> None:
    peer, carried = carried_three(clock)
    session = peer.session.continuity.session_id
    peer.send_json(hello_ok({"acked": 3, "session": session, "features": ["ack", "x"]}))
    assert peer.session.is_open and peer.of(Problem) == []
    assert acked_ids(peer) == ids(carried)
    assert peer.session.features == ("ack",)


def test_a_hello_ok_for_another_session_is_a_lie(clock: FakeClock) -> None:
    # Its acked counts another session's messages: believed, it would resolve
    # messages this session's server never accepted.
    peer, _carried = carried_three(clock)
    peer.send_json(hello_ok({"acked": 3, "session": "someone-else", "features": ["ack"]}))
    error = the_protocol_error(peer)
    assert "not the one the hello named" in str(error) and "someone-else" not in str(error)
    assert acked_ids(peer) == []  # and the_protocol_error() saw the close 1002


@pytest.mark.parametrize("acked", HUGE)
def test_a_huge_acked_never_reaches_the_seq_counter(clock: FakeClock, acked: int) -> None:
    # The measured bug: acked >= 2**63 went into the counter (and the durable
    # outbox's, which SQLite cannot store): every later message failed.
    peer, _ = carried_three(clock)
    peer.send_json(hello_ok({"acked": acked}))
    the_protocol_error(peer)
    assert peer.session.continuity.last_seq == 3


def test_the_error_names_the_field_but_carries_no_session_id_or_epoch(clock: FakeClock) -> None:
    peer, _ = carried_three(clock)
    peer.send_json(hello_ok({"session": "SECRETSID" * 8}))
    error = the_protocol_error(peer)
    assert "session" in str(error) and "72 characters" in str(error)
    assert "SECRETSID" not in str(error) and "SECRETSID" not in repr(error)
    peer = open_peer(clock, subscriptions=["news"])
    peer.send_json(envelope("news", 1, epoch="EPOCHVALUE" * 7))
    error = the_protocol_error(peer)
    assert "epoch" in str(error) and "EPOCHVALUE" not in str(error)


def test_a_late_hello_ok_is_ignored_whatever_it_says(clock: FakeClock) -> None:
    peer, msgs = five_unacked(clock)
    peer.send_json(hello_ok({"acked": 5}))
    peer.send_json(hello_ok({"acked": 10**30}))
    assert acked_ids(peer) == ids(msgs[:2]) and peer.session.is_open


# ---------------------------------------------------------------- envelope positions


def envelope(channel: str, offset: Any, epoch: Any = "e1", payload: Any = None) -> Dict[str, Any]:
    msg = {"channel": channel, "type": "data", "payload": payload if payload is not None else 0}
    msg.update({"id": "s", "offset": offset, "epoch": epoch})
    return {k: v for k, v in msg.items() if v is not ...}


def received(peer: Peer) -> List[Any]:
    return [item for e in peer.of(Received) for item in e.items]


BAD_POSITIONS: Dict[str, Dict[str, Any]] = {
    "offset-0": {"offset": 0},
    "offset-negative": {"offset": -1},
    "offset-float": {"offset": 1.5},
    "offset-integral-float": {"offset": 3.0},
    "offset-string": {"offset": "3"},
    "offset-true": {"offset": True},
    "offset-false": {"offset": False},
    "offset-list": {"offset": [3]},
    "epoch-number": {"epoch": 7},
    "epoch-empty": {"epoch": ""},
    "epoch-65-chars": {"epoch": "e" * 65},
    "epoch-true": {"epoch": True},
    "epoch-object": {"epoch": {"e": 1}},
}


@pytest.mark.parametrize("change", list(BAD_POSITIONS.values()), ids=list(BAD_POSITIONS))
def test_an_envelope_with_a_bogus_position_fails_the_link(
    clock: FakeClock, change: Dict[str, Any]
) -> None:
    peer = open_peer(clock, subscriptions=["news"])
    peer.send_json(envelope("news", 2, payload="before"))
    peer.send_json({**envelope("news", 3, payload="lie"), **change})
    error = the_protocol_error(peer)
    assert "data envelope" in str(error)
    assert received(peer) == [("news", "before")]
    assert peer.session.continuity.positions["news"] == Position("e1", 2)


def test_envelope_positions_at_the_limits_are_believed(clock: FakeClock) -> None:
    peer = open_peer(clock, subscriptions=["news"])
    peer.send_json(envelope("news", 1, epoch="e" * 64, payload=1))
    peer.send_json(envelope("news", 2**63, epoch="e" * 64, payload=2))
    peer.send_json(envelope("news", 5, epoch=None, payload=3))  # no epoch: one of its own
    peer.send_json(envelope("news", None, payload=4))  # a direct echo: no position
    assert received(peer) == [("news", 1), ("news", 2), ("news", 3), ("news", 4)]
    assert peer.of(Problem) == [] and peer.session.is_open


def test_without_resume_an_offset_is_no_claim(clock: FakeClock) -> None:
    # A server that did not grant resume promised no positions: nothing to check.
    peer = open_peer(clock, hello_ok={"features": ["ack"]})
    peer.send_json(envelope("news", "x", payload=1))
    assert received(peer) == [("news", 1)] and peer.session.is_open


# ---------------------------------------------------------------- tether:subscribed


def subscribed(
    channel: Any = "news", recovered: Any = False, epoch: Any = "e1", offset: Any = 3
) -> Dict[str, Any]:
    msg = {"type": "tether:subscribed", "channel": channel, "recovered": recovered}
    msg.update({"epoch": epoch, "offset": offset})
    return {k: v for k, v in msg.items() if v is not ...}


BAD_SUBSCRIBED: Dict[str, Dict[str, Any]] = {
    "offset-negative": {"offset": -1},
    "offset-float": {"offset": 1.5},
    "offset-string": {"offset": "3"},
    "offset-true": {"offset": True},
    "offset-null": {"offset": None},
    "offset-missing": {"offset": ...},
    "epoch-number": {"epoch": 7},
    "epoch-null": {"epoch": None},
    "epoch-empty": {"epoch": ""},
    "epoch-65-chars": {"epoch": "e" * 65},
    "recovered-string": {"recovered": "false"},
    "recovered-null": {"recovered": None},
    "recovered-zero": {"recovered": 0},
    "channel-number": {"channel": 5},
}


@pytest.mark.parametrize("change", list(BAD_SUBSCRIBED.values()), ids=list(BAD_SUBSCRIBED))
def test_a_lying_subscribed_fails_the_link(clock: FakeClock, change: Dict[str, Any]) -> None:
    cont = Continuity("sid-1", positions={"news": Position("e1", 5)})
    peer = open_peer(clock, session=make_session(clock, continuity=cont), subscriptions=["news"])
    peer.send_json(subscribed(**change))
    error = the_protocol_error(peer)
    assert "tether:subscribed" in str(error)
    assert peer.of(Recovery) == []
    assert peer.session.continuity.positions["news"] == Position("e1", 5)


def test_subscribed_at_offset_zero_is_an_empty_channel(clock: FakeClock) -> None:
    peer = open_peer(clock, subscriptions=["news"])
    peer.send_json(subscribed(offset=0))
    peer.send_json(envelope("news", 1, payload="first"))
    assert received(peer) == [("news", "first")] and peer.of(Problem) == []


# ---------------------------------------------------------------- rule 13


def subscribed_link(clock: FakeClock) -> Peer:
    """Subscribed to news (nothing seen before), then envelopes 1..3 of epoch e1."""
    peer = open_peer(clock, subscriptions=["news"])
    peer.send_json(subscribed(offset=0))
    for n in (1, 2, 3):
        peer.send_json(envelope("news", n, payload=n))
    assert peer.of(Recovery) == []
    return peer


@pytest.mark.parametrize("epoch", ["e1", "e2"])
def test_subscribed_false_while_subscribed_raises_recovery_and_takes_the_position(
    clock: FakeClock, epoch: str
) -> None:
    peer = subscribed_link(clock)
    peer.send_json(subscribed(recovered=False, epoch=epoch, offset=10))
    assert peer.of(Recovery) == [Recovery("news", False, epoch, 10)]
    assert peer.session.continuity.positions["news"] == Position(epoch, 10)
    # The next envelope follows the new position: 11 is new, 10 is not.
    peer.send_json(envelope("news", 10, epoch=epoch, payload="old"))
    peer.send_json(envelope("news", 11, epoch=epoch, payload="new"))
    assert received(peer)[3:] == [("news", "new")]
    assert peer.session.is_open and peer.of(Problem) == []


def test_subscribed_true_while_subscribed_lets_the_replay_follow_without_duplicates(
    clock: FakeClock,
) -> None:
    peer = subscribed_link(clock)
    # The node replays from the offset the client asked for (0): 1..3 were seen.
    peer.send_json(subscribed(recovered=True, epoch="e1", offset=0))
    for n in (1, 2, 3, 4, 5):
        peer.send_json(envelope("news", n, payload=n))
    assert received(peer) == [("news", n) for n in (1, 2, 3, 4, 5)]
    assert peer.of(Recovery) == []
    assert peer.session.continuity.positions["news"] == Position("e1", 5)


def test_subscribed_true_at_our_position_then_the_replay(clock: FakeClock) -> None:
    peer = subscribed_link(clock)
    peer.send_json(subscribed(recovered=True, epoch="e1", offset=3))
    peer.send_json(envelope("news", 4, payload=4))
    assert received(peer)[-1] == ("news", 4) and peer.of(Recovery) == []


def test_a_fresh_subscribe_answer_is_no_rule_13_event(clock: FakeClock) -> None:
    # Subscribing again on the same link: its answer is the subscribe's own, so a
    # channel with nothing asked raises nothing (rule 10).
    peer = open_peer(clock, hello_ok={"features": ["ack", "resume"]})
    peer.session.subscribe("news", "a")
    peer.send_json(subscribed(offset=0))
    peer.session.unsubscribe("news", "b")
    peer.session.subscribe("news", "c")
    peer.send_json(subscribed(offset=7))
    assert peer.of(Recovery) == []


def test_the_lie_frames_are_json_the_peer_can_read(clock: FakeClock) -> None:
    # The close frame's reason is short and fixed (no peer value echoed back).
    peer, _ = five_unacked(clock)
    peer.send_json({"type": "tether:ack", "seq": "x" * 500})
    (close,) = peer.close_frames()
    assert close.payload[2:] == b"Protocol error"
    assert all(json.loads(f.payload) for f in peer.frames if f.opcode == 1)
    assert peer.of(Closed) == []  # still waiting for the peer's close frame


def test_a_lie_while_we_close_is_reported_and_nothing_after_it_counts(clock: FakeClock) -> None:
    peer, msgs = five_unacked(clock)
    peer.session.close(1000, "bye", clock.now)
    peer.pump()
    peer.send_json({"type": "tether:ack", "seq": 3})  # truthful: still counts while closing
    peer.send_json({"type": "tether:ack", "seq": 10**30})
    peer.send_json({"type": "tether:ack", "seq": 5})
    assert acked_ids(peer) == ids(msgs[:3])
    assert [type(e.error) for e in peer.of(Problem)] == [ProtocolError]
    assert [f.close_code for f in peer.close_frames()] == [1000]  # ours, already out
    peer.feed(close_frame(1000))
    assert peer.closed_event().was_clean is False
