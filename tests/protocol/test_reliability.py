"""The reliability part alone (DESIGN §5): its deadline() and on_deadline() with a fake
clock, seq numbers, acks, the barrier, positions and rule 12 verdicts (no session)."""

from __future__ import annotations

import json
from typing import Any, List, Sequence

from protocol.sessionkit import FakeClock, Msg, Wire, big_msg, data_msg

from tether_sync.protocol.events import Acked, Recovery, Written
from tether_sync.protocol.reliability import Continuity, Position, Reliability


def numbered(seq: int) -> Msg:
    m = data_msg(f"m{seq}")
    m._seq = seq
    return m


def ids(items: Sequence[Any]) -> List[str]:
    return [i.id for i in items]


def reliability(wire: Wire, cont: Continuity, extensions: tuple = ("ack", "resume")) -> Reliability:
    return Reliability(wire.output, cont, extensions)


def write_out(wire: Wire, rel: Reliability) -> List[Any]:
    """Hand every framed byte to the "kernel", as the session's sent() does; the frames."""
    buffer = wire.output.buffer
    out = []
    while buffer.size:
        data = bytes(buffer.pending())
        done = buffer.advance(len(data))
        if done:
            rel.on_written(done)
        out.extend(wire._parser.feed(data))
    return out


def test_the_hello_safety_net_is_the_only_deadline_and_decides_the_extension_off(
    clock: FakeClock,
) -> None:
    wire = Wire()
    rel = reliability(wire, Continuity("sid-1"))
    rel.start(())
    (hello,) = wire.frames()
    assert json.loads(hello.payload) == {
        "type": "tether:hello",
        "session": "sid-1",
        "features": ["ack", "resume"],
    }
    assert rel.pending and rel.deadline() is None
    t0 = clock.now
    rel.await_reply(ping_ts=7, deadline=t0 + 20.0)
    assert rel.deadline() == t0 + 20.0
    rel.on_deadline(t0 + 19.999)
    assert rel.pending and not rel.decided
    rel.on_deadline(t0 + 20.0)
    assert rel.decided and not rel.pending and rel.features == ()
    assert rel.deadline() is None and rel.hello_ping is None


def test_without_extensions_no_hello_goes_out() -> None:
    wire = Wire()
    rel = reliability(wire, Continuity("sid-1"), extensions=())
    rel.start(())
    assert wire.frames() == [] and not rel.pending and rel.deadline() is None


def test_the_hello_pings_pong_decides_and_barrier_pongs_are_ours_too() -> None:
    wire = Wire()
    rel = reliability(wire, Continuity("sid-1"))
    rel.start(())
    rel.await_reply(ping_ts=1234, deadline=5.0)
    assert rel.on_pong(99) is False  # a heartbeat's
    assert rel.on_pong(1234) is True
    assert rel.decided and rel.deadline() is None
    assert rel.on_pong(-3) is True  # negative: a barrier ping, never a heartbeat's


def test_hello_ok_resolves_the_carried_messages_it_covers() -> None:
    wire = Wire()
    cont = Continuity("sid-1", last_seq=3)
    carried = [numbered(1), numbered(2), numbered(3)]
    rel = reliability(wire, cont)
    rel.start(carried)
    wire.frames()
    ok = {"type": "tether:hello-ok", "session": "sid-1", "features": ["ack"], "acked": 2}
    assert rel.on_extension(ok) is True
    assert rel.features == ("ack",) and rel.ack and not rel.resume
    (acked,) = wire.events()
    assert isinstance(acked, Acked) and ids(acked.items) == ids(carried[:2])
    rel.open()
    rel.write([data_msg("next")])
    seqs = [json.loads(f.payload)["seq"] for f in write_out(wire, rel)]
    assert seqs == [3, 4]  # the carried one keeps its seq, then new numbers


def test_a_hello_ok_that_lies_is_judged_without_its_values() -> None:
    wire = Wire()
    rel = reliability(wire, Continuity("sid-1"))
    rel.start(())
    bad = {"type": "tether:hello-ok", "session": "sid-1", "features": [], "acked": 99}
    problem = rel.on_extension(bad)
    assert problem == "tether:hello-ok acked is 99, above the highest seq numbered (0)"
    other = {"type": "tether:hello-ok", "session": "someone-else", "features": [], "acked": 0}
    assert rel.on_extension(other) == "tether:hello-ok session is not the one the hello named"
    assert rel.pending  # judged, not decided: the session fails the link


def test_acks_resolve_in_order_and_an_impossible_one_is_a_problem() -> None:
    wire = Wire()
    cont = Continuity("sid-1")
    rel = reliability(wire, cont)
    rel.start(())
    rel.decide(("ack",), 0)
    msgs = [data_msg(i) for i in range(4)]
    rel.write(msgs)
    write_out(wire, rel)
    assert wire.events() == [] and rel.unacked == 4 and rel.held == 4  # written is not done
    assert rel.on_ack(2) is None
    assert rel.on_ack(1) is None  # stale
    assert [ids(e.items) for e in wire.events() if isinstance(e, Acked)] == [ids(msgs[:2])]
    assert rel.on_ack(5) == "tether:ack seq is 5, above the highest seq numbered (4)"
    assert rel.on_ack("4") == "tether:ack seq is a string of 1 characters, not an integer"
    assert rel.unacked == 2 and rel.confirmed


def test_without_ack_an_ack_is_ignored_and_written_means_done() -> None:
    wire = Wire()
    rel = reliability(wire, Continuity("sid-1"))
    rel.start(())
    rel.decide(None)
    assert rel.on_ack(10**9) is None
    msgs = [data_msg(i) for i in range(3)]
    rel.write(msgs)
    write_out(wire, rel)
    (written,) = wire.events()
    assert isinstance(written, Written) and ids(written.items) == ids(msgs)


def test_a_large_message_without_acks_waits_for_its_barrier_pong() -> None:
    wire = Wire()
    rel = reliability(wire, Continuity("sid-1"), extensions=())
    rel.start(())
    small, big = data_msg("s"), big_msg()
    rel.write([small, big])
    written = write_out(wire, rel)
    ping = json.loads(written[-1].payload)
    assert ping == {"type": "tether:ping", "ts": -1}
    (done,) = wire.events()
    assert isinstance(done, Written) and ids(done.items) == [small.id]  # not the big one yet
    assert rel.held == 1
    assert rel.on_pong(-1) is True
    (acked,) = wire.events()
    assert isinstance(acked, Acked) and ids(acked.items) == [big.id]
    assert rel.held == 0


def test_positions_drop_duplicates_and_a_bad_offset_is_a_problem() -> None:
    wire = Wire()
    cont = Continuity("sid-1")
    rel = reliability(wire, cont)
    rel.start(())
    rel.decide(("ack", "resume"), 0)
    assert rel.admit("c", 5, "e1") is True
    assert cont.positions["c"] == Position("e1", 5)
    assert rel.admit("c", 5, "e1") is False  # already seen
    assert rel.admit("c", 1, "e2") is True  # a new epoch starts over
    assert rel.admit("c", 0, "e2") == "a data envelope's offset is 0, not an integer >= 1"
    assert rel.admit("c", None, None) is True  # no position: nothing to check


def test_a_resubscribe_that_cannot_recover_raises_recovery() -> None:
    wire = Wire()
    cont = Continuity("sid-1", positions={"news": Position("e1", 7)})
    rel = reliability(wire, cont)
    rel.start(())
    rel.decide(("ack", "resume"), 0)
    wire.frames()
    msg = json.loads(rel.subscribe_text("news", "sub-1"))
    assert (msg["epoch"], msg["offset"]) == ("e1", 7)
    answer = {
        "type": "tether:subscribed",
        "channel": "news",
        "recovered": False,
        "epoch": "e2",
        "offset": 40,
    }
    assert rel.on_extension(answer) is True
    assert wire.events() == [Recovery("news", False, "e2", 40)]
    assert cont.positions["news"] == Position("e2", 40)
    assert rel.on_extension({**answer, "epoch": ""}) == "tether:subscribed epoch is an empty string"


def test_stop_clears_the_hello_deadline_and_keeps_the_carried_messages(clock: FakeClock) -> None:
    wire = Wire()
    carried = [numbered(1), numbered(2)]
    rel = reliability(wire, Continuity("sid-1", last_seq=2))
    rel.start(carried)
    rel.await_reply(ping_ts=1, deadline=clock.now + 20.0)
    rel.decide(None)
    rel.open()
    assert rel.resend_due
    rel.stop()
    assert rel.deadline() is None and not rel.resend_due
    assert ids(rel.take_unfinished()) == ids(carried)


def test_take_unfinished_puts_numbered_messages_first_in_seq_order() -> None:
    wire = Wire()
    rel = reliability(wire, Continuity("sid-1"))
    rel.start(())
    rel.decide(("ack",), 0)
    sent = [data_msg(i) for i in range(3)]
    rel.write(sent)
    write_out(wire, rel)
    rel.on_ack(1)
    rel.write([data_msg("unwritten")])
    left = rel.take_unfinished()
    assert [m._seq for m in left] == [2, 3, 4]
    assert rel.unacked == 0 and rel.held == 0
