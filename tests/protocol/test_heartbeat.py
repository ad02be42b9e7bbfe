"""The heartbeat alone: its deadline() and on_deadline() with a fake clock (no session)."""

from __future__ import annotations

import json
from typing import Optional

import pytest
from protocol.sessionkit import FakeClock, Wire

from tether_sync.protocol import frames
from tether_sync.protocol.events import RoundTrip
from tether_sync.protocol.heartbeat import Heartbeat

INTERVAL, TIMEOUT = 15.0, 5.0


def beat(
    wire: Wire, clock: FakeClock, schedule: Optional[tuple] = (INTERVAL, TIMEOUT)
) -> Heartbeat:
    hb = Heartbeat(wire.output, schedule, wall_offset=0.0)
    hb.start(clock.now)
    return hb


def ping_ts(wire: Wire) -> int:
    """The ``ts`` of the one ping written since the last look."""
    written = wire.frames()
    assert len(written) == 1, written
    msg = json.loads(written[0].payload)
    assert msg["type"] == "tether:ping", msg
    return int(msg["ts"])


def test_without_a_schedule_nothing_is_ever_due(clock: FakeClock) -> None:
    wire = Wire()
    hb = beat(wire, clock, schedule=None)
    assert hb.deadline() is None
    assert hb.on_deadline(clock.advance(1e6), reading_paused=False) is False
    assert wire.frames() == []


def test_the_first_ping_is_due_one_interval_after_start(clock: FakeClock) -> None:
    wire = Wire()
    hb = beat(wire, clock)
    t0 = clock.now
    assert hb.deadline() == t0 + INTERVAL
    assert hb.on_deadline(t0 + INTERVAL - 0.001, reading_paused=False) is False
    assert wire.frames() == []  # not a tick early
    assert hb.on_deadline(t0 + INTERVAL, reading_paused=False) is False
    ping_ts(wire)
    # In flight: the deadline is now the pong's, fixed at sending.
    assert hb.deadline() == t0 + INTERVAL + TIMEOUT


def test_an_answered_ping_schedules_the_next_one_interval_after_it_was_sent(
    clock: FakeClock,
) -> None:
    wire = Wire()
    hb = beat(wire, clock)
    sent_at = clock.advance(INTERVAL)
    hb.on_deadline(sent_at, reading_paused=False)
    ts = ping_ts(wire)
    hb.on_pong(ts + 1, clock.advance(0.2))  # not ours: ignored
    assert wire.events() == [] and not hb.answered
    hb.on_pong(ts, clock.advance(0.3))
    assert wire.events() == [RoundTrip(pytest.approx(0.5))]
    assert hb.answered
    assert hb.deadline() == sent_at + INTERVAL  # the schedule does not drift with latency


def test_no_pong_and_no_message_is_a_dead_peer_exactly_at_the_pong_deadline(
    clock: FakeClock,
) -> None:
    wire = Wire()
    hb = beat(wire, clock)
    sent_at = clock.advance(INTERVAL)
    hb.on_deadline(sent_at, reading_paused=False)
    ping_ts(wire)
    assert hb.on_deadline(sent_at + TIMEOUT - 0.001, reading_paused=False) is False
    assert hb.on_deadline(sent_at + TIMEOUT, reading_paused=False) is True


@pytest.mark.parametrize("why", ["a whole message", "reading paused"])
def test_a_late_pong_is_forgiven_when_the_peer_is_proven_alive(clock: FakeClock, why: str) -> None:
    wire = Wire()
    hb = beat(wire, clock)
    sent_at = clock.advance(INTERVAL)
    hb.on_deadline(sent_at, reading_paused=False)
    first = ping_ts(wire)
    if why == "a whole message":
        hb.heard += 1
    late = sent_at + TIMEOUT
    assert hb.on_deadline(late, reading_paused=why == "reading paused") is False
    assert wire.frames() == []  # alive: the next ping keeps the schedule
    assert hb.deadline() == sent_at + INTERVAL
    hb.on_deadline(sent_at + INTERVAL, reading_paused=False)
    assert ping_ts(wire) > first


def test_a_schedule_already_past_sends_the_next_ping_at_once(clock: FakeClock) -> None:
    wire = Wire()
    hb = beat(wire, clock, schedule=(1.0, 5.0))  # timeout longer than the interval
    sent_at = clock.advance(1.0)
    hb.on_deadline(sent_at, reading_paused=False)
    ping_ts(wire)
    hb.heard += 1
    assert hb.on_deadline(sent_at + 5.0, reading_paused=False) is False
    ping_ts(wire)  # due at max(now, sent + interval) = now: sent in the same call


def test_stop_clears_every_deadline_and_a_late_pong_counts_for_nothing(clock: FakeClock) -> None:
    wire = Wire()
    hb = beat(wire, clock)
    hb.on_deadline(clock.advance(INTERVAL), reading_paused=False)
    ts = ping_ts(wire)
    hb.stop()
    assert hb.deadline() is None
    hb.on_pong(ts, clock.advance(0.1))
    assert wire.events() == [] and hb.deadline() is None
    assert hb.on_deadline(clock.advance(1e6), reading_paused=False) is False
    assert wire.frames() == []


def test_stamps_are_epoch_milliseconds_and_never_repeat() -> None:
    hb = Heartbeat(Wire().output, None, wall_offset=1_700_000_000.0)
    first = hb.stamp(10.0)
    assert first == 1_700_000_010_000
    assert hb.stamp(10.0) == first + 1  # same millisecond: still a new value
    assert hb.stamp(9.0) == first + 2  # a clock that steps back cannot repeat one


def test_raw_pings_are_ping_frames(clock: FakeClock) -> None:
    wire = Wire(tether=False)
    hb = beat(wire, clock)
    hb.on_deadline(clock.advance(INTERVAL), reading_paused=False)
    (ping,) = wire.frames()
    assert ping.opcode == frames.OP_PING
    hb.on_pong(int(ping.payload), clock.advance(0.25))
    assert wire.events() == [RoundTrip(0.25)]
