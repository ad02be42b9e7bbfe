"""Full-jitter exponential backoff, endpoint rotation and retry policies, as immutable values.

``delay = uniform(0, min(max_delay, base_delay * 2**attempt))`` with attempts
counted from 1, so the first delay lies in ``[0, 2 * base_delay]`` (as tether-ws).
The RNG is passed in, so tests can assert exact delays.

With several endpoints, attempt ``n`` of a run goes to the next endpoint (round
robin) and its delay is that of the *round* ``ceil(n / endpoints)``: every
endpoint backs off on its own schedule, so a dead primary costs one short delay
before the secondary is tried, and a total outage still backs off. A user's
:data:`RetryPolicy` replaces the default delay; :meth:`Backoff.retry` asks it,
and falls back to the default when it misbehaves.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
from typing import Any, Callable, Optional, Protocol, Tuple

from .exceptions import TetherError

RetryPolicy = Callable[[int, float, Optional[BaseException]], Optional[float]]
"""``policy(attempt, elapsed, reason) -> delay | None`` (see ``Reconnect.policy``)."""

MAX_POLICY_DELAY = 86400.0
"""Seconds: the largest delay a policy may return (a day, like ``connect_timeout``)."""


class UniformRng(Protocol):
    """The part of :class:`random.Random` that backoff needs."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Where a run of reconnection attempts stands.

    Attributes:
        base_delay: Seconds; the cap of attempt ``n`` is ``base_delay * 2**n``.
        max_delay: Seconds; no cap exceeds it.
        max_attempts: Attempts allowed after a loss, or ``None`` for no limit.
        attempt: Attempts made so far in this run (0 after a successful open).
        endpoints: How many endpoints take turns (1 for a single URL).
        endpoint: Index of the endpoint the current (or next) attempt goes to.
        since: Monotonic seconds of this run's first failure (``None`` between runs).
    """

    base_delay: float
    max_delay: float
    max_attempts: Optional[int] = None
    attempt: int = 0
    endpoints: int = 1
    endpoint: int = 0
    since: Optional[float] = None

    def cap(self, attempt: int) -> float:
        """The upper bound of the delay of ``attempt`` (counted from 1)."""
        # 2**attempt overflows float for huge attempt numbers: clamp the exponent.
        return min(self.max_delay, self.base_delay * 2.0 ** min(attempt, 1000))

    @property
    def exhausted(self) -> bool:
        """Whether no further attempt is allowed."""
        return self.max_attempts is not None and self.attempt >= self.max_attempts

    def next(self, rng: UniformRng) -> Tuple[float, Backoff]:
        """Draw the delay of the next attempt.

        Returns:
            ``(delay, state)``: the delay in seconds and the backoff with
            ``attempt`` advanced by one.
        """
        attempt = self.attempt + 1
        delay = rng.uniform(0.0, self.cap(attempt))
        return delay, dataclasses.replace(self, attempt=attempt)

    def reset(self) -> Backoff:
        """The backoff after a successful open: attempt back to 0 (the endpoint stays)."""
        return dataclasses.replace(self, attempt=0, since=None)

    def round(self, attempt: int) -> int:
        """The round of ``attempt`` (from 1): ``ceil(attempt / endpoints)``."""
        return -(-attempt // max(1, self.endpoints))

    def retry(
        self,
        rng: UniformRng,
        now: float,
        reason: Optional[BaseException] = None,
        policy: Optional[RetryPolicy] = None,
    ) -> Tuple[Optional[float], Backoff, Optional[TetherError]]:
        """Decide the next attempt after a failure or a lost link.

        Args:
            rng: Draws the default (full-jitter) delay.
            now: Monotonic seconds; the first failure of a run starts its clock.
            reason: Why the last connection or attempt ended (handed to ``policy``).
            policy: The user's policy, or ``None`` for full jitter.

        Returns:
            ``(delay, state, problem)``: the delay in seconds, or ``None`` if the
            policy said stop; the backoff with ``attempt`` advanced and the next
            endpoint chosen; and, if the policy raised or returned something that
            is no delay, the error to report (the delay is then the default one).
        """
        since = now if self.since is None or self.attempt == 0 else self.since
        attempt = self.attempt + 1
        rnd = self.round(attempt)
        state = dataclasses.replace(
            self,
            attempt=attempt,
            endpoint=(self.endpoint + 1) % max(1, self.endpoints),
            since=since,
        )
        if policy is None:
            return rng.uniform(0.0, self.cap(rnd)), state, None
        delay, problem = ask_policy(policy, rnd, max(0.0, now - since), reason)
        if problem is not None:
            return rng.uniform(0.0, self.cap(rnd)), state, problem
        return delay, state, None


def ask_policy(
    policy: RetryPolicy, attempt: int, elapsed: float, reason: Optional[BaseException]
) -> Tuple[Optional[float], Optional[TetherError]]:
    """Call a user's policy and check its answer.

    Returns:
        ``(delay, None)`` for a good delay, ``(None, None)`` for "stop", or
        ``(None, problem)`` if the policy raised or returned something that is
        not a finite number of seconds in ``[0, MAX_POLICY_DELAY]``.
    """
    try:
        value: Any = policy(attempt, elapsed, reason)
    except BaseException as exc:
        # Anything, BaseException included: the policy runs on the I/O thread,
        # where a SystemExit would only end the loop (never the process) and a
        # KeyboardInterrupt can only be the policy's own raise (Python delivers
        # Ctrl-C to the main thread). Either is reported and the default used.
        problem = TetherError(
            f"reconnect policy raised {type(exc).__name__}: {exc}; using the default delay"
        )
        problem.__cause__ = exc
        return None, problem
    if value is None:
        return None, None
    try:
        return check_delay(value), None
    except (TypeError, ValueError) as exc:
        return None, TetherError(f"reconnect policy {exc}; using the default delay")


def check_delay(value: Any) -> float:
    """A policy's answer as seconds.

    Raises:
        TypeError: not a real number (``bool`` included).
        ValueError: NaN, infinite, negative or above :data:`MAX_POLICY_DELAY`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"returned {type(value).__name__}, not a number of seconds or None")
    delay = float(value)
    if math.isnan(delay) or not 0.0 <= delay <= MAX_POLICY_DELAY:
        raise ValueError(f"returned {delay!r}, not a delay in [0, {MAX_POLICY_DELAY:g}] seconds")
    return delay


class FullJitter:
    """The default policy as a value, for policies that build on it.

    ``FullJitter(0.3, 30.0)(attempt, elapsed, reason)`` returns
    ``uniform(0, min(max_delay, base_delay * 2**attempt))``. For example, give up
    after a minute of outage, else back off as usual::

        jitter = FullJitter(0.3, 30.0)
        Reconnect(policy=lambda a, elapsed, r: None if elapsed > 60 else jitter(a, elapsed, r))
    """

    def __init__(
        self, base_delay: float, max_delay: float, rng: Optional[UniformRng] = None
    ) -> None:
        for name, value in (("base_delay", base_delay), ("max_delay", max_delay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"FullJitter {name} must be a number, not {type(value).__name__}")
            if not 0.0 < value < math.inf:
                raise ValueError(f"FullJitter {name} must be finite and > 0, got {value!r}")
        if max_delay < base_delay:
            raise ValueError("FullJitter max_delay must be >= base_delay")
        self._backoff = Backoff(float(base_delay), float(max_delay))
        self._rng: UniformRng = rng if rng is not None else random.Random()

    def __call__(self, attempt: int, elapsed: float, reason: Optional[BaseException]) -> float:
        return self._rng.uniform(0.0, self._backoff.cap(attempt))

    def __repr__(self) -> str:
        return f"FullJitter({self._backoff.base_delay!r}, {self._backoff.max_delay!r})"
