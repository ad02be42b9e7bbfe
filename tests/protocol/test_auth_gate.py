"""The auth gate alone: its deadline() and on_deadline() with a fake clock (no session)."""

from __future__ import annotations

import json
from typing import List, Optional, Tuple

import pytest
from protocol.sessionkit import FakeClock, Wire

from tether_sync.exceptions import AuthError
from tether_sync.protocol import frames
from tether_sync.protocol.auth_gate import AuthGate, CloseLink
from tether_sync.protocol.events import AuthAccepted, AuthTrouble, TokenNeeded
from tether_sync.protocol.token_expiry import MIN_REFRESH_INTERVAL

TIMEOUT = 20.0
BEFORE = 60.0
WALL = 1_700_000_000.0  # wall - monotonic


class Rng:
    """Records what full jitter asked for, answers a fixed fraction of it."""

    def __init__(self) -> None:
        self.asked: List[Tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return b * 0.25


def gate(
    wire: Wire, *, tether: bool = True, rotates: bool = True, rng: Optional[Rng] = None
) -> AuthGate:
    return AuthGate(
        wire.output,
        tether=tether,
        rotates=rotates,
        timeout=TIMEOUT,
        refresh_before=BEFORE,
        wall_offset=WALL,
        rng=rng,
    )


def test_a_request_is_due_within_the_auth_timeout(clock: FakeClock) -> None:
    wire = Wire()
    g = gate(wire)
    assert g.deadline() is None
    g.request(clock.now, force=True)
    assert wire.events() == [TokenNeeded(True)]
    assert g.busy and g.deadline() == clock.now + TIMEOUT


def test_no_answer_before_open_closes_the_link_exactly_at_the_deadline(clock: FakeClock) -> None:
    wire = Wire()
    g = gate(wire)
    t0 = clock.now
    g.request(t0, force=False)
    wire.events()
    assert g.on_deadline(t0 + TIMEOUT - 0.001, opening=True) is None
    assert wire.events() == []
    verdict = g.on_deadline(t0 + TIMEOUT, opening=True)
    assert verdict == CloseLink(1000, "Token unavailable")
    (trouble,) = wire.events()
    assert isinstance(trouble, AuthTrouble) and isinstance(trouble.error, TimeoutError)
    assert not trouble.final
    assert not g.busy and g.deadline() is None


def test_a_failed_rotation_on_an_open_link_is_retried_after_full_jitter(clock: FakeClock) -> None:
    wire = Wire()
    rng = Rng()
    g = gate(wire, rng=rng)
    g.request(clock.now, force=True)
    wire.events()
    now = clock.advance(1.0)
    assert g.failed(RuntimeError("idp down"), now, opening=False) is None
    assert [type(e) for e in wire.events()] == [AuthTrouble]
    assert rng.asked == [(0.0, 1.0)]  # cap 0.5 * 2**1
    assert g.deadline() == now + 0.25
    assert g.on_deadline(now + 0.25, opening=False) is None
    assert wire.events() == [TokenNeeded(True)]
    g.failed(RuntimeError("still down"), clock.advance(1.0), opening=False)
    assert rng.asked[-1] == (0.0, 2.0)  # the cap doubles


def test_tether_sends_the_token_and_opens_on_auth_ok_then_schedules_rotation(
    clock: FakeClock,
) -> None:
    wire = Wire()
    g = gate(wire)
    now = clock.now
    g.request(now, force=False)
    wire.events()
    expiry = now + WALL + 3600.0
    g.token_ready("tok-secret", expiry, now, None)
    (auth,) = wire.frames()
    assert json.loads(auth.payload) == {"type": "tether:auth", "token": "tok-secret"}
    assert g.deadline() == now + TIMEOUT  # the answer is still awaited
    assert g.on_auth_ok(True, clock.advance(0.5)) is True
    assert wire.events() == [AuthAccepted(expiry)]
    assert g.expires_at == expiry
    # Rotation: refresh_before ahead of expiry (monotonic).
    assert g.deadline() == pytest.approx(now + 3600.0 - BEFORE)


def test_the_rotation_waits_while_a_request_is_in_flight(clock: FakeClock) -> None:
    wire = Wire()
    g = gate(wire)
    now = clock.now
    g.request(now, force=False)
    g.token_ready("t", now + WALL + 2.0, now, None)  # a very short-lived token
    g.on_auth_ok(True, now)
    rotate_at = g.deadline()
    assert rotate_at == pytest.approx(now + MIN_REFRESH_INTERVAL)
    assert g.refresh(now)  # refresh_auth(): in flight now
    assert g.deadline() == now + TIMEOUT  # not the rotation time while busy
    assert g.on_deadline(now + MIN_REFRESH_INTERVAL, opening=False) is None
    assert [type(e) for e in wire.events()] == [TokenNeeded, AuthAccepted, TokenNeeded]


def test_a_second_refusal_in_a_row_is_final(clock: FakeClock) -> None:
    wire = Wire()
    g = gate(wire)
    g.request(clock.now, force=False)
    g.token_ready("t1", None, clock.now, None)
    assert g.on_auth_ok(False, clock.now) is False
    assert wire.events()[-1] == TokenNeeded(True)  # a fresh token
    g.token_ready("t2", None, clock.now, None)
    verdict = g.on_auth_ok(False, clock.now)
    assert isinstance(verdict, CloseLink) and verdict[:2] == (1008, "Auth refused")
    assert isinstance(verdict.error, AuthError)
    trouble = wire.events()[-1]
    assert isinstance(trouble, AuthTrouble) and trouble.final and trouble.error is verdict.error
    assert g.deadline() is None


def test_an_unasked_auth_ok_is_ignored(clock: FakeClock) -> None:
    wire = Wire()
    g = gate(wire)
    assert g.on_auth_ok(True, clock.now) is False
    assert wire.events() == [] and g.deadline() is None


def test_raw_rotation_writes_the_frame_and_counts_as_accepted(clock: FakeClock) -> None:
    wire = Wire(tether=False)
    g = gate(wire, tether=False)
    assert g.refresh(clock.now)
    g.token_ready("t", None, clock.now, (frames.OP_TEXT, b"rotate"))
    (frame,) = wire.frames()
    assert frame.payload == b"rotate"
    assert wire.events() == [TokenNeeded(True), AuthAccepted(None)]
    assert not g.busy and g.deadline() is None


def test_a_link_without_rotation_schedules_none(clock: FakeClock) -> None:
    wire = Wire()
    g = gate(wire, rotates=False)
    assert g.refresh(clock.now) is False
    g.accepted(clock.now + WALL + 3600.0, clock.now)
    assert g.deadline() is None


def test_stop_clears_every_deadline_and_a_late_token_writes_nothing(clock: FakeClock) -> None:
    wire = Wire()
    g = gate(wire)
    g.request(clock.now, force=False)
    g.accepted(clock.now + WALL + 3600.0, clock.now)  # a rotation scheduled too
    g.stop()
    assert g.deadline() is None
    assert g.on_deadline(clock.advance(1e6), opening=False) is None
    g.token_ready("late", None, clock.now, None)
    assert wire.frames() == []
    assert g.failed(RuntimeError("late"), clock.now, opening=True) is None
