"""Every timer of one connection, exactly, on a fake clock.

Each test reads the exact deadline from ``next_deadline()``, checks that
``on_deadline()`` one float before it does nothing (:func:`math.nextafter`), and
that the ping, the close frame or the event happens at it. These are the timing
assertions that today's integration tests can only make in wall time, with
slack; the integration tests keep a generous sanity bound and point here.

Inventory of the timing assertions: "old" is the tree before the redesign (commit
addeda7), "main" today's tree; "unit" is tests/unit/test_close_and_retry_timing.py.
Each entry: where, what it asserts in wall time -> where it lives now, exactly.

Heartbeat
- old integration/test_heartbeat.py:41 (main :41): a blackholed peer is closed 4000
  within interval + timeout + 0.55 s -> test_a_silent_peer_is_closed_exactly_at_the_pong_deadline
  (integration bound loosened to a sanity bound, comment points here).
- main integration/test_core_bugs.py:79: timeout >= interval detected within
  interval + timeout + 1.25 s -> the same test, whose grid holds timeout >= interval
  (integration loosened).
- main integration/test_core_bugs.py:137: a trickled frame detected within 2.25 s ->
  test_a_trickled_frame_never_moves_a_deadline (integration loosened).
- old integration/test_heartbeat.py:56: >= 5 pings at interval 0.05; :59 0 <= last_rtt < 1 ->
  test_an_answered_ping_schedules_the_next_one_interval_after_it (the exact schedule;
  RoundTrip.rtt == pong time - ping time).
- old integration/test_heartbeat.py:82: late pongs but live traffic, no close ->
  test_a_whole_message_before_the_pong_deadline_keeps_the_link.
- old integration/test_auth.py:152: pings go on while get_token() blocks ->
  test_pings_keep_their_schedule_while_a_refresh_is_in_flight.

Auth and hello
- old integration/test_auth.py:58: a 3 s token with refresh_before 2 is rotated (twice)
  within 5 s on one connection -> test_rotation_is_due_exactly_refresh_before_ahead_of_expiry.
- old integration/test_auth.py:127 (main :128): the first data frame is >= 0.25 s after the
  auth (auth-ok 0.3 s late) -> test_nothing_but_hello_and_auth_goes_out_before_auth_ok_however_late
  (integration kept: a lower bound that load cannot break; comment points here).
- old integration/test_auth.py:201-209: a failed get_token() is retried, the link stays up
  -> test_a_failed_refresh_keeps_the_link_and_retries_after_full_jitter.
- old integration/test_auth.py:176: two refusals end the client, no token storm ->
  test_after_the_second_refusal_the_1008_close_ends_exactly_after_the_grace.
- no wall-time test before: auth_timeout ->
  test_auth_timeout_counts_from_the_request_and_covers_the_answer,
  test_a_refusal_restarts_the_auth_deadline_for_the_fresh_token; the hello safety net ->
  test_the_hello_safety_net_opens_exactly_auth_timeout_after_start.

Closing (session and loop policy)
- old integration/test_reconnect.py:151 (main :151): close() returns within timeout + 0.5 s
  -> unit test_the_closing_handshake_grace_fits_inside_the_deadline,
  test_close_returns_within_its_timeout_whatever_the_moment_it_starts_closing, and here
  test_our_close_ends_exactly_after_its_grace (integration loosened).
- old integration/test_delivery.py:175 (main :175): close(timeout=20) after draining
  returns in < 10 s -> unit test_a_drained_close_is_due_at_once_whatever_its_deadline
  (integration kept: already generous; comment points there).
- old integration/test_delivery.py:131: close(timeout=0.5) with nobody listening returns
  False -> unit test_the_close_deadline_passes_exactly_at_it (integration kept).
- here also: test_a_protocol_violation_ends_exactly_close_grace_later,
  test_the_peers_answer_ends_the_close_at_once,
  test_a_close_without_grace_ends_at_the_next_deadline_check, and
  test_closing_leaves_no_heartbeat_deadline_behind (was a busy spin: close() kept
  the heartbeat's next ping due, so the loop's select timeout stayed 0).

Reconnect (loop policy)
- old integration/test_reconnect.py:55-58: each delay in [0, min(max, base * 2**n)], the
  rng asked for exactly those bounds, 3 attempts then closed -> unit
  test_each_retry_waits_the_full_jitter_of_its_attempt_then_gives_up (plan_retry), on top
  of the existing test_backoff.py:34, :54 and test_retry_policy.py:46 (integration kept:
  exact through the rng, no wall time).
- main integration/test_failover.py:149, :179, :221: per-round bounds, elapsed sorted ->
  existing test_retry_policy.py:56, :85, and unit
  test_a_policy_delay_is_taken_exactly_and_counts_elapsed_from_the_first_failure
  (integration kept: exact, no wall time).
- no test before: min_uptime -> unit test_the_backoff_resets_once_the_link_lived_exactly_min_uptime;
  a retry while close() drains -> unit test_a_retry_while_close_drains_fits_inside_the_deadline.

Stay where they are (not the session's or the loop policy's timing, or no wall bound)
- old integration/test_reconnect.py:81 connect(wait=True, timeout=0.3) raises ConnectTimeout
  (a user thread's wait); :296 Subscription.get(timeout=0.05) raises (the queue's timeout).
- old integration/test_backpressure.py:393: the server stays stuck >= 1 s while the client
  blocks (TCP backpressure; a lower bound).
- old server/test_server_faults.py:215, :227, :373, :435, test_server_protocol.py:162, :179,
  main test_server_reliable.py:142: the bundled server's latency, stop and ack timing.
- old demo/test_demo_panel.py:137, main integration/test_fork.py:40, :118, :133,
  integrations/test_examples.py:158, demo/test_connect_pipe.py:95: process exit times.
- main integration/test_fuzz.py:282: 10,000 frames in < 30 s (a budget).
- old unit/test_tokens.py:180-231 (refresh_at), unit/test_auth_refresher.py,
  unit/test_backoff.py, unit/test_timers.py: pure already, fake clock or none.

Loose checks of this tier that the exact ones here supersede (left in place):
test_session_closing.py:76, :91, :135, :247 and test_session_wire.py:191.
"""

from __future__ import annotations

import math
import random
from typing import Any, List, Optional, Tuple

import pytest
from protocol.sessionkit import (
    FakeClock,
    Frame,
    Peer,
    begin_endless_message,
    data_msg,
    link,
    open_peer,
    pong_for,
    server_frame,
    text,
)
from support.rng import TopRng

from tether_sync.exceptions import AuthError
from tether_sync.protocol import frames
from tether_sync.protocol.session import (
    CLOSE_GRACE,
    HEARTBEAT_CLOSE_GRACE,
    AuthAccepted,
    AuthTrouble,
    Closed,
    Continuity,
    Opened,
    RoundTrip,
    Session,
    SessionConfig,
    TokenNeeded,
)

AUTH_OK = {"type": "tether:auth-ok", "ok": True}
AUTH_NO = {"type": "tether:auth-ok", "ok": False}
DATA = {"channel": "c", "type": "data", "payload": 1, "id": "in-1"}

GRID = [
    (1.0, 0.5),
    (1.0, 1.0),
    (1.0, 1.5),
    (0.4, 0.3),  # the old integration test's pair
    (0.3, 1.0),
    (0.1, 10.0),
    (15.0, 5.0),
    (0.2, 0.01),  # a timeout below the heartbeat close grace
]
HB_IDS = [f"{i}-{t}" for i, t in GRID]
PROTOCOLS = ["tether", "raw"]


# ---------------------------------------------------------------- driving the clock


def just_before(t: float) -> float:
    """The last float before ``t``: one tick of the fake clock."""
    return math.nextafter(t, -math.inf)


def at(peer: Peer, t: float) -> List[Frame]:
    """Move the clock to ``t``, let the session act once, write out; the new frames."""
    assert t >= peer.clock.now, "the fake clock never goes back"
    peer.clock.now = t
    peer.session.on_deadline(t)
    return peer.pump()


def fire(peer: Peer, t: float) -> List[Frame]:
    """``t`` is exactly the next deadline, nothing happens one tick before it, and
    whatever happens at ``t`` (the new frames) is returned."""
    assert peer.session.next_deadline() == t
    frames_before, events_before = len(peer.frames), len(peer.log)
    at(peer, just_before(t))
    assert peer.frames[frames_before:] == [], "a frame went out one tick early"
    assert peer.log[events_before:] == [], "an event came out one tick early"
    assert peer.session.next_deadline() == t
    return at(peer, t)


def is_heartbeat_ping(frame: Frame) -> bool:
    if frame.opcode == frames.OP_PING:
        return int(frame.payload) >= 0
    if frame.opcode == frames.OP_TEXT:
        msg = frame.json
        return bool(msg.get("type") == "tether:ping" and msg.get("ts", -1) >= 0)
    return False


def codes(new: List[Frame]) -> List[Optional[int]]:
    return [f.close_code for f in new if f.opcode == frames.OP_CLOSE]


def the_ping(new: List[Frame]) -> Frame:
    assert len(new) == 1 and is_heartbeat_ping(new[0]), new
    return new[0]


WALL = float(2**30)  # wall - monotonic: exact in binary, so wall arithmetic stays exact


def auth_session(
    clock: FakeClock,
    *,
    refresh_before: float = 60.0,
    auth_timeout: float = 20.0,
    heartbeat: Optional[Tuple[float, float]] = None,
    rng: Any = None,
) -> Session:
    cfg = SessionConfig(
        protocol="tether",
        heartbeat=heartbeat,
        auth=True,
        auth_timeout=auth_timeout,
        refresh_before=refresh_before,
        extensions=(),
    )
    rnd = random.Random(0)
    return Session(
        cfg,
        Continuity("sid-1"),
        clock.now,
        wall_offset=WALL,
        keys=frames.MaskKeys(urandom=rnd.randbytes, batch=64),
        rng=rng if rng is not None else rnd,
    )


def open_auth(peer: Peer, expires_at: Optional[float] = None) -> Peer:
    peer.start()
    assert peer.of(TokenNeeded) == [TokenNeeded(False)]
    peer.session.token_ready("tok-1", expires_at, peer.clock.now)
    peer.pump()
    peer.send_json(AUTH_OK)
    assert peer.session.is_open
    return peer


# ---------------------------------------------------------------- heartbeat


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("hb", GRID, ids=HB_IDS)
def test_a_silent_peer_is_closed_exactly_at_the_pong_deadline(
    clock: FakeClock, protocol: str, hb: Tuple[float, float]
) -> None:
    interval, timeout = hb
    peer = link(clock, protocol, hb)
    opened = clock.now
    ping_at = opened + interval
    the_ping(fire(peer, ping_at))
    # The pong deadline belongs to this ping: no second ping at ping_at + interval
    # pushes it out, whether timeout < interval or not.
    pong_deadline = ping_at + timeout
    assert codes(fire(peer, pong_deadline)) == [4000]
    assert not peer.session.closed
    # A silent peer gets min(HEARTBEAT_CLOSE_GRACE, timeout) to answer the close.
    fire(peer, pong_deadline + min(HEARTBEAT_CLOSE_GRACE, timeout))
    assert peer.closed_event() == Closed(4000, "Heartbeat timeout", False)
    assert peer.session.next_deadline() is None
    pings = [f for f in peer.frames if is_heartbeat_ping(f)]
    assert len(pings) == (2 if protocol == "tether" else 1)  # tether: + the hello's ping


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("hb", GRID, ids=HB_IDS)
def test_an_answered_ping_schedules_the_next_one_interval_after_it(
    clock: FakeClock, protocol: str, hb: Tuple[float, float]
) -> None:
    for when in ["at-once", "half-way", "last-tick"]:
        answered_pings(link(clock, protocol, hb), hb, when)


def answered_pings(peer: Peer, hb: Tuple[float, float], when: str) -> None:
    """Four pings answered (at once, half-way to the deadline, on its last tick)."""
    interval, timeout = hb
    clock = peer.clock
    ping_at = clock.now + interval
    ping = the_ping(fire(peer, ping_at))
    for _ in range(4):
        answer_at = {
            "at-once": ping_at,
            "half-way": ping_at + timeout / 2,
            "last-tick": just_before(ping_at + timeout),
        }[when]
        at(peer, answer_at)
        reply = pong_for(ping)
        assert reply is not None
        peer.feed(reply)
        assert peer.new_events()[-1] == RoundTrip(answer_at - ping_at)
        # The next ping is due interval after this one went out, not after its pong.
        assert peer.session.next_deadline() == ping_at + interval
        if ping_at + interval <= answer_at:  # a pong later than interval: ping again now
            ping = the_ping(at(peer, answer_at))
            ping_at = answer_at
        else:
            ping_at = ping_at + interval
            ping = the_ping(fire(peer, ping_at))
    assert peer.close_frames() == []
    assert len(peer.of(RoundTrip)) == 4


@pytest.mark.parametrize("hb", GRID, ids=HB_IDS)
def test_a_whole_message_before_the_pong_deadline_keeps_the_link(
    clock: FakeClock, hb: Tuple[float, float]
) -> None:
    """Late pongs but live traffic: the ping's deadline passes without a close."""
    for protocol in PROTOCOLS:
        live_without_pongs(link(clock, protocol, hb), protocol, hb)


def live_without_pongs(peer: Peer, protocol: str, hb: Tuple[float, float]) -> None:
    interval, timeout = hb
    clock = peer.clock
    ping_at = clock.now + interval
    the_ping(fire(peer, ping_at))
    pong_deadline = ping_at + timeout
    at(peer, just_before(pong_deadline))
    peer.feed(text(DATA) if protocol == "tether" else server_frame(frames.OP_TEXT, "x"))
    new = fire(peer, pong_deadline)
    assert codes(new) == []
    # The next ping: interval after the last one, and not before this deadline.
    next_ping = max(pong_deadline, ping_at + interval)
    if next_ping == pong_deadline:
        the_ping(new)
    else:
        assert new == []
        the_ping(fire(peer, next_ping))
    # Then the peer falls silent: closed at exactly that ping's deadline.
    assert codes(fire(peer, next_ping + timeout)) == [4000]


@pytest.mark.parametrize("hb", [(1.0, 0.5), (1.0, 1.5), (0.5, 0.5), (0.1, 10.0)], ids=str)
def test_a_trickled_frame_never_moves_a_deadline(clock: FakeClock, hb: Tuple[float, float]) -> None:
    """One never-ending message (one frame, or fragments), a byte at a time."""
    for protocol in PROTOCOLS:
        for fragmented in (False, True):
            trickle(link(clock, protocol, hb), hb, fragmented)


def trickle(peer: Peer, hb: Tuple[float, float], fragmented: bool) -> None:
    interval, timeout = hb
    opened = peer.clock.now
    chunk = begin_endless_message(peer, fragmented)

    def trickle_until(end: float) -> None:
        # Bytes (never a whole message) ten times per interval, up to the last tick.
        step = interval / 10
        t = peer.clock.now + step
        while t < end:
            at(peer, t)
            peer.feed(chunk)
            t += step
        at(peer, just_before(end))
        peer.feed(chunk)

    ping_at = opened + interval
    trickle_until(ping_at)
    the_ping(fire(peer, ping_at))
    trickle_until(ping_at + timeout)
    assert codes(fire(peer, ping_at + timeout)) == [4000]


def test_pings_keep_their_schedule_while_a_refresh_is_in_flight(clock: FakeClock) -> None:
    """A slow get_token() (TokenNeeded unanswered) delays no ping and moves no deadline."""
    interval = 0.0625  # 1/16 s and a budget of 2 + 1/32 s: exact sums, no tie
    rng = TopRng()
    session = auth_session(clock, heartbeat=(interval, 1.0), auth_timeout=2.03125, rng=rng)
    peer = open_auth(Peer(clock, session))
    opened = clock.now
    assert peer.session.refresh(clock.now)
    peer.pump()
    assert peer.new_events()[-1] == TokenNeeded(True)
    ping_at = opened
    while ping_at + interval < opened + 2.03125:
        ping_at += interval
        ping = the_ping(fire(peer, ping_at))
        reply = pong_for(ping)
        assert reply is not None
        peer.feed(reply)
    assert len(peer.of(RoundTrip)) == 32
    assert peer.of(AuthTrouble) == []
    # The token's budget was not moved by the pings: it runs out on time, and the
    # link stays up (its token may still be valid) while the fetch is retried.
    fire(peer, opened + 2.03125)
    (trouble,) = peer.of(AuthTrouble)
    assert isinstance(trouble.error, TimeoutError) and not trouble.final
    assert peer.session.is_open and peer.close_frames() == []
    assert peer.session.next_deadline() == ping_at + interval


# ---------------------------------------------------------------- hello and auth deadlines


def test_the_hello_safety_net_opens_exactly_auth_timeout_after_start(clock: FakeClock) -> None:
    """No auth, a server that answers neither the hello nor its ping."""
    for auth_timeout in [0.5, 3.0, 20.0]:
        peer = Peer(clock, heartbeat=(1.0, 0.5), auth_timeout=auth_timeout).start()
        started = clock.now
        fire(peer, started + auth_timeout)
        assert peer.of(Opened) == [Opened(())]
        # The heartbeat starts with the link: its first ping interval after opening.
        assert peer.session.next_deadline() == started + auth_timeout + 1.0


def test_auth_timeout_counts_from_the_request_and_covers_the_answer(clock: FakeClock) -> None:
    """One budget for get_token() and the server's auth-ok: a token does not restart it."""
    for token_at in [None, 0.0, 5.0, 19.5]:
        auth_budget(Peer(clock, auth=True, extensions=(), auth_timeout=20.0), token_at)


def auth_budget(peer: Peer, token_at: Optional[float]) -> None:
    clock = peer.clock
    peer.start()
    requested = clock.now
    assert peer.session.next_deadline() == requested + 20.0
    if token_at is not None:
        at(peer, requested + token_at)
        peer.session.token_ready("tok", None, clock.now)
        peer.pump()
        assert peer.sent_types() == ["tether:auth"]
    new = fire(peer, requested + 20.0)
    (trouble,) = peer.of(AuthTrouble)
    assert not trouble.final and isinstance(trouble.error, TimeoutError)
    assert [(f.close_code, f.payload[2:]) for f in new] == [(1000, b"Token unavailable")]
    # A silent server: the attempt ends the close grace later.
    fire(peer, requested + 20.0 + CLOSE_GRACE)
    assert peer.closed_event() == Closed(1000, "Token unavailable", False)


def test_a_refusal_restarts_the_auth_deadline_for_the_fresh_token(clock: FakeClock) -> None:
    peer = Peer(clock, auth=True, extensions=(), auth_timeout=20.0).start()
    peer.session.token_ready("tok-1", None, clock.now)
    at(peer, clock.now + 3.0)
    refused = clock.now
    peer.send_json(AUTH_NO)
    assert peer.new_events()[-1] == TokenNeeded(True)
    fire(peer, refused + 20.0)
    assert isinstance(peer.of(AuthTrouble)[0].error, TimeoutError)


def test_after_the_second_refusal_the_1008_close_ends_exactly_after_the_grace(
    clock: FakeClock,
) -> None:
    peer = Peer(clock, auth=True, extensions=()).start()
    peer.session.token_ready("tok-1", None, clock.now)
    peer.send_json(AUTH_NO)
    peer.session.token_ready("tok-2", None, clock.now)
    peer.send_json(AUTH_NO)
    refused = clock.now
    assert [f.close_code for f in peer.close_frames()] == [1008]
    fire(peer, refused + CLOSE_GRACE)
    closed = peer.closed_event()
    assert (closed.code, closed.was_clean) == (1008, False)
    assert isinstance(closed.error, AuthError)


def test_nothing_but_hello_and_auth_goes_out_before_auth_ok_however_late(
    clock: FakeClock,
) -> None:
    peer = Peer(clock, auth=True, subscriptions=["news"], queue=[data_msg(i) for i in range(3)])
    peer.start()
    started = clock.now
    peer.session.token_ready("tok", None, clock.now)
    peer.pump()
    late = just_before(started + 20.0)  # the last tick of the auth budget
    at(peer, late)
    assert peer.sent_types() == ["tether:hello", "tether:auth"]
    peer.send_json(AUTH_OK)
    assert peer.sent_types() == ["tether:hello", "tether:auth", "subscribe", *["data"] * 3]
    stamps = [s for f, s in zip(peer.frames, peer.frame_stamps) if f.opcode == frames.OP_TEXT]
    assert stamps == [started, started, late, late, late, late]


ROTATIONS = [
    # (token lifetime, refresh_before, seconds from acceptance to the rotation)
    (300.0, 60.0, 240.0),
    (3.0, 2.0, 1.0),  # the old integration test: rotated about 1 s after connecting
    (10.0, 60.0, 5.0),  # shorter than refresh_before: half-way through its life
    (1.5, 60.0, 1.0),  # half-way would be 0.75 s: floored at MIN_REFRESH_INTERVAL
    (-5.0, 60.0, 1.0),  # already expired: no tight loop either
    (60.0, 0.0, 60.0),  # refresh_before 0: at the expiry itself
]


@pytest.mark.parametrize("ttl,refresh_before,after", ROTATIONS, ids=str)
def test_rotation_is_due_exactly_refresh_before_ahead_of_expiry(
    clock: FakeClock, ttl: float, refresh_before: float, after: float
) -> None:
    peer = Peer(clock, auth_session(clock, refresh_before=refresh_before))
    accepted = clock.now
    expiry = accepted + WALL + ttl  # wall-clock seconds, as the token says
    open_auth(peer, expiry)
    assert peer.of(AuthAccepted) == [AuthAccepted(expiry)]
    rotate = accepted + after
    fire(peer, rotate)
    assert peer.new_events()[-1] == TokenNeeded(True)
    assert peer.session.is_open
    # While the new token is fetched, its own budget is the only deadline.
    assert peer.session.next_deadline() == rotate + 20.0
    # Accepted half a second later: the next rotation follows the new expiry.
    at(peer, rotate + 0.5)
    peer.session.token_ready("tok-2", expiry + 300.0, clock.now)
    peer.send_json(AUTH_OK)
    assert peer.of(AuthAccepted)[-1] == AuthAccepted(expiry + 300.0)
    # (Every value here is a multiple of 0.5 near 2**30: float sums are exact.)
    assert peer.session.next_deadline() == expiry + 300.0 - refresh_before - WALL
    assert peer.close_frames() == []


def test_a_failed_refresh_keeps_the_link_and_retries_after_full_jitter(clock: FakeClock) -> None:
    rng = TopRng()
    peer = open_auth(Peer(clock, auth_session(clock, rng=rng)))
    assert peer.session.refresh(clock.now)
    caps = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # min(30, 0.5 * 2**n)
    for n, cap in enumerate(caps, start=1):
        if n % 2:
            # get_token() raised, half a second after it was asked for.
            at(peer, clock.now + 0.5)
            peer.session.token_failed(ConnectionError("idp down"), clock.now)
            peer.pump()
        else:
            # Or nothing came back: the auth budget runs out.
            fire(peer, clock.now + 20.0)
        failed = clock.now
        trouble = peer.new_events()[-1]
        assert isinstance(trouble, AuthTrouble) and not trouble.final
        assert peer.session.is_open and peer.close_frames() == []
        assert rng.calls[-1] == (0.0, cap)
        fire(peer, failed + cap)
        assert peer.new_events()[-1] == TokenNeeded(True)
    assert len(rng.calls) == len(caps)
    # A success resets the failure count: the next failure waits the first cap again.
    peer.session.token_ready("tok-ok", None, clock.now)
    peer.send_json(AUTH_OK)
    assert peer.session.refresh(clock.now)
    peer.session.token_failed(ConnectionError("again"), clock.now)
    assert rng.calls[-1] == (0.0, 1.0)


# ---------------------------------------------------------------- closing


def test_our_close_ends_exactly_after_its_grace(clock: FakeClock) -> None:
    for grace in [0.01, HEARTBEAT_CLOSE_GRACE, CLOSE_GRACE, 7.5]:
        peer = open_peer(clock)
        at(peer, clock.now + 0.3)
        closing = clock.now
        peer.session.close(1000, "Client disconnect", closing, grace=grace)
        assert codes(peer.pump()) == [1000]
        fire(peer, closing + grace)
        assert peer.closed_event() == Closed(1000, "Client disconnect", False)
        assert peer.session.next_deadline() is None


def test_a_close_without_grace_ends_at_the_next_deadline_check(clock: FakeClock) -> None:
    for grace in [0.0, -1.0]:
        peer = open_peer(clock)
        peer.session.close(1000, "bye", clock.now, grace=grace)
        peer.pump()
        assert peer.session.next_deadline() == clock.now
        at(peer, clock.now)
        assert peer.closed_event().code == 1000


def test_the_peers_answer_ends_the_close_at_once(clock: FakeClock) -> None:
    peer = open_peer(clock)
    peer.session.close(1000, "bye", clock.now)
    peer.pump()
    at(peer, clock.now + CLOSE_GRACE / 2)
    peer.feed(server_frame(frames.OP_CLOSE, b"\x03\xe8"))
    assert peer.closed_event() == Closed(1000, "bye", True)
    assert peer.when(Closed) == clock.now


def test_a_protocol_violation_ends_exactly_close_grace_later(clock: FakeClock) -> None:
    peer = open_peer(clock)
    at(peer, clock.now + 0.7)
    violated = clock.now
    peer.feed(server_frame(0x3, b""))  # a reserved opcode
    assert codes(peer.take()) == [1002]
    fire(peer, violated + CLOSE_GRACE)
    assert (peer.closed_event().code, peer.closed_event().was_clean) == (1002, False)


@pytest.mark.parametrize("how", ["close", "violation"])
def test_closing_leaves_no_heartbeat_deadline_behind(clock: FakeClock, how: str) -> None:
    peer = open_peer(clock, heartbeat=(1.0, 0.5))
    opened = clock.now
    at(peer, opened + 0.5)  # the first ping is due at opened + 1.0, inside the grace
    if how == "close":
        peer.session.close(1000, "Client disconnect", clock.now)
    else:
        peer.feed(server_frame(0x3, b""))
    peer.pump()
    closing = clock.now
    # Every deadline handed out is consumed: the first one is the close's own.
    assert peer.session.next_deadline() == closing + CLOSE_GRACE


def test_a_pong_that_arrives_while_closing_schedules_no_ping(clock: FakeClock) -> None:
    peer = open_peer(clock, heartbeat=(1.0, 0.5))
    at(peer, clock.now + 1.0)  # the ping goes out
    pings = [f for f in peer.frames if is_heartbeat_ping(f)]
    assert pings, peer.log[-3:]
    peer.session.close(1000, "Client disconnect", clock.now)
    closing = clock.now
    reply = pong_for(pings[-1])
    assert reply
    peer.feed(reply)
    peer.pump()
    assert peer.session.next_deadline() == closing + CLOSE_GRACE


def test_every_deadline_is_consumed_by_on_deadline(clock: FakeClock) -> None:
    """Random scripts: on_deadline(next_deadline()) always moves the deadline on."""
    rnd = random.Random(9)
    for _ in range(40):
        hb = (rnd.choice([0.05, 0.5, 1.0]), rnd.choice([0.05, 0.5, 2.0]))
        peer = link(clock, rnd.choice(PROTOCOLS), hb)
        for _ in range(60):
            when = peer.session.next_deadline()
            if when is None or peer.session.closed:
                break
            at(peer, max(clock.now, when))
            after = peer.session.next_deadline()
            assert after is None or after > when, (when, after, peer.log[-3:])
            roll = rnd.random()
            pending = [f for f in peer.frames[-3:] if is_heartbeat_ping(f)]
            if roll < 0.6 and pending:
                reply = pong_for(pending[-1])
                if reply:
                    peer.feed(reply)
            elif roll < 0.7:
                peer.feed(text(DATA))


def test_the_inventory_names_only_tests_that_exist() -> None:
    """A guard against renames: every test the inventory above names is defined."""
    import pathlib
    import re

    unit = pathlib.Path(__file__).parents[1] / "unit" / "test_close_and_retry_timing.py"
    defined = set(globals()) | set(re.findall(r"^def (test_\w+)", unit.read_text(), re.M))
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", __doc__ or ""))
    assert len(named) > 20 and named <= defined, named - defined
