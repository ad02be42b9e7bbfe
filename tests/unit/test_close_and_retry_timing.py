"""The loop's timing policy, pure, on a fake clock: close() deadlines, retries, min_uptime.

``tether_sync.engine.closing.Shutdown`` decides when draining stops, how long the
closing handshake may take and how a retry fits inside close()'s deadline;
``tether_sync.engine.retry`` decides whether a link lived long enough to reset the
backoff (``min_uptime``) and the delay of the next attempt. The wall-clock
versions of these assertions are in tests/integration/test_reconnect.py
(``_assert_closes_within``, the backoff bounds) and test_delivery.py (a drained
close returns at once); the inventory is in tests/protocol/test_session_timing.py.
Backoff's own arithmetic is in test_backoff.py and test_retry_policy.py.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import pytest
from support.rng import TopRng

from tether_sync.backoff import Backoff
from tether_sync.delivery import Delivery
from tether_sync.engine.closing import Shutdown
from tether_sync.engine.retry import GiveUp, Retry, after_close, plan_retry
from tether_sync.exceptions import AuthError, ClientClosed, TetherError
from tether_sync.options import Reconnect
from tether_sync.protocol.session import Closed

NOW = 1000.0


def just_before(t: float) -> float:
    return math.nextafter(t, -math.inf)


# ---------------------------------------------------------------- Shutdown: close(timeout)


@pytest.mark.parametrize("timeout", [0.0, 0.5, 1.0, 20.0])
def test_the_close_deadline_passes_exactly_at_it(timeout: float) -> None:
    shutdown = Shutdown()
    deadline = NOW + timeout
    shutdown.request(deadline)
    assert not shutdown.past_deadline(just_before(deadline))
    assert shutdown.past_deadline(deadline)
    # With work left, close() keeps draining until the deadline, then closes anyway.
    assert not shutdown.due(True, just_before(deadline))
    assert shutdown.due(True, deadline)


def test_a_drained_close_is_due_at_once_whatever_its_deadline() -> None:
    """close(timeout=20) after the queue drained does not sit out its 20 s."""
    shutdown = Shutdown()
    shutdown.request(NOW + 20.0)
    assert shutdown.drained(False, NOW) and shutdown.due(False, NOW)
    assert not shutdown.due(True, NOW)


def test_without_a_deadline_close_drains_for_ever() -> None:
    shutdown = Shutdown()
    assert not shutdown.due(False, NOW), "nothing was requested"
    shutdown.request(None)
    assert not shutdown.past_deadline(1e300)
    assert not shutdown.due(True, 1e300)
    assert shutdown.due(False, NOW)


@pytest.mark.parametrize(
    "left,default,grace",
    [
        (None, 1.0, 1.0),  # no deadline: the full default grace
        (5.0, 1.0, 1.0),  # plenty of time left
        (1.0, 1.0, 1.0),  # exactly the default left
        (0.25, 1.0, 0.25),  # the handshake never outlives close()'s deadline
        (0.0, 1.0, 0.0),  # at the deadline: no grace at all
        (-3.0, 1.0, 0.0),  # past it: still none (never negative)
        (0.5, 0.25, 0.25),  # a smaller default (the heartbeat's) wins
    ],
)
def test_the_closing_handshake_grace_fits_inside_the_deadline(
    left: Optional[float], default: float, grace: float
) -> None:
    shutdown = Shutdown()
    shutdown.request(None if left is None else NOW + left)
    assert shutdown.grace(NOW, default) == grace


def test_close_returns_within_its_timeout_whatever_the_moment_it_starts_closing() -> None:
    """Drain, then handshake: the two together never pass close()'s deadline."""
    timeout = 1.0
    shutdown = Shutdown()
    shutdown.request(NOW + timeout)
    for spent in [0.0, 0.1, 0.5, 0.9, 1.0, 2.0]:
        now = NOW + spent
        ends = now + shutdown.grace(now)
        assert ends <= max(now, NOW + timeout)


@pytest.mark.parametrize(
    "requested,left,delay,expected",
    [
        (False, None, 7.0, 7.0),  # no close(): the backoff's delay
        (True, None, 7.0, 7.0),  # close() without a deadline: the same
        (True, 10.0, 7.0, 5.0),  # retry half-way to the deadline
        (True, 10.0, 3.0, 3.0),  # a shorter delay is kept
        (True, 0.0, 3.0, 0.0),  # at the deadline: at once
        (True, -1.0, 3.0, 0.0),  # never negative
    ],
)
def test_a_retry_while_close_drains_fits_inside_the_deadline(
    requested: bool, left: Optional[float], delay: float, expected: float
) -> None:
    shutdown = Shutdown()
    if requested:
        shutdown.request(None if left is None else NOW + left)
    assert shutdown.retry_delay(delay, NOW) == expected


# ---------------------------------------------------------------- after_close: min_uptime


def closed(code: int = 1006, clean: bool = False, error: Optional[BaseException] = None) -> Closed:
    return Closed(code, "x", clean, error)


@pytest.mark.parametrize("min_uptime", [0.0, 2.0, 30.0])
def test_the_backoff_resets_once_the_link_lived_exactly_min_uptime(min_uptime: float) -> None:
    reconnect = Reconnect(min_uptime=min_uptime)
    opened = NOW
    exactly = after_close(closed(), [], opened, False, opened + min_uptime, reconnect, False)
    assert exactly.reset_backoff
    if min_uptime > 0:
        early = after_close(
            closed(), [], opened, False, just_before(opened + min_uptime), reconnect, False
        )
        assert not early.reset_backoff


def test_a_short_link_that_delivered_something_resets_the_backoff() -> None:
    after = after_close(closed(), [], NOW, True, NOW, Reconnect(min_uptime=30.0), False)
    assert after.reset_backoff


def test_an_attempt_that_never_opened_never_resets_the_backoff() -> None:
    after = after_close(closed(), [], None, True, NOW + 1e6, Reconnect(min_uptime=0.0), False)
    assert not after.reset_backoff


def test_without_reconnect_min_uptime_is_zero() -> None:
    assert after_close(closed(), [], NOW, False, NOW, None, False).reset_backoff


def test_after_close_carries_numbered_messages_and_gives_back_the_rest() -> None:
    a, b, c = (Delivery(f"m{i}", "c", i) for i in range(3))
    a._seq, c._seq = 4, 5
    after = after_close(closed(), [a, b, c], NOW, False, NOW, Reconnect(), False)
    assert (after.carried, after.give_back) == ([a, c], [b])


@pytest.mark.parametrize(
    "event,requested,terminal",
    [
        (closed(1008, clean=True), False, True),  # the server's policy close
        (closed(1008, clean=True), True, False),  # close() was called: ours, not final
        (closed(1008, clean=False), False, False),  # unclean: never the server's word
        (closed(4000, clean=False), False, False),  # our heartbeat close: retried
        (closed(1000, clean=True), False, False),  # a restart: retried
    ],
)
def test_terminal_closes(event: Closed, requested: bool, terminal: bool) -> None:
    after = after_close(event, [], NOW, False, NOW, Reconnect(), requested)
    assert after.terminal is terminal
    assert isinstance(after.cause, TetherError if terminal else ClientClosed)


def test_a_close_carrying_an_error_is_terminal_with_that_cause() -> None:
    error = AuthError("refused twice")
    after = after_close(closed(1008, error=error), [], NOW, False, NOW, Reconnect(), False)
    assert after.terminal and after.cause is error


# ---------------------------------------------------------------- plan_retry: delays


def test_each_retry_waits_the_full_jitter_of_its_attempt_then_gives_up() -> None:
    """The old integration test's bounds, exactly: 3 attempts, then closed."""
    reconnect = Reconnect(base_delay=0.01, max_delay=0.05, max_attempts=3)
    backoff = Backoff(reconnect.base_delay, reconnect.max_delay, reconnect.max_attempts)
    rng = TopRng()
    delays = []
    for n in range(3):
        plan = plan_retry(OSError("refused"), False, False, reconnect, backoff, rng, NOW + n)
        assert isinstance(plan, Retry)
        delays.append(plan.delay)
        backoff = plan.backoff
    assert rng.calls == [(0.0, min(0.05, 0.01 * 2**n)) for n in (1, 2, 3)]
    assert delays == [0.02, 0.04, 0.05]
    last = plan_retry(OSError("refused"), False, False, reconnect, backoff, rng, NOW + 3)
    assert isinstance(last, GiveUp) and "3 reconnection attempt" in str(last.reason)
    assert len(rng.calls) == 3, "giving up draws no delay"


def test_a_finished_close_gives_up_quietly_even_on_a_terminal_cause() -> None:
    plan = plan_retry(OSError("x"), True, True, Reconnect(), Backoff(0.3, 30.0), TopRng(), NOW)
    assert plan == GiveUp(None)


def test_a_terminal_cause_or_no_reconnect_gives_up_with_the_cause() -> None:
    cause = OSError("x")
    for terminal, reconnect in ((True, Reconnect()), (False, None)):
        rng = TopRng()
        plan = plan_retry(cause, terminal, False, reconnect, Backoff(0.3, 30.0), rng, NOW)
        assert plan == GiveUp(cause) and rng.calls == []


def test_a_policy_that_says_stop_gives_up_after_the_attempts_made() -> None:
    reconnect = Reconnect(policy=lambda attempt, elapsed, reason: None)
    plan = plan_retry(OSError("x"), False, False, reconnect, Backoff(0.3, 30.0), TopRng(), NOW)
    assert isinstance(plan, GiveUp) and "stopped retrying after 0 attempt" in str(plan.reason)


def test_a_policy_delay_is_taken_exactly_and_counts_elapsed_from_the_first_failure() -> None:
    seen: List[Tuple[int, float]] = []

    def policy(attempt: int, elapsed: float, reason: Optional[BaseException]) -> float:
        seen.append((attempt, elapsed))
        return 0.125 * attempt

    reconnect = Reconnect(policy=policy)
    backoff = Backoff(0.3, 30.0)
    delays = []
    for spent in (0.0, 0.5, 2.0):
        plan = plan_retry(OSError("x"), False, False, reconnect, backoff, TopRng(), NOW + spent)
        assert isinstance(plan, Retry)
        delays.append(plan.delay)
        backoff = plan.backoff
    assert delays == [0.125, 0.25, 0.375]
    assert seen == [(1, 0.0), (2, 0.5), (3, 2.0)]
