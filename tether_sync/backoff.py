"""Full-jitter exponential backoff as an immutable value.

``delay = uniform(0, min(max_delay, base_delay * 2**attempt))`` with attempts
counted from 1, so the first delay lies in ``[0, 2 * base_delay]`` (as tether-ws).
The RNG is passed in, so tests can assert exact delays.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, Tuple


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
    """

    base_delay: float
    max_delay: float
    max_attempts: Optional[int] = None
    attempt: int = 0

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
        """The backoff after a successful open: attempt back to 0."""
        return dataclasses.replace(self, attempt=0)
