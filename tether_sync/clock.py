"""Time, from one injectable place.

The I/O loop and every blocking call take time from a :class:`Clock`, so tests can
drive timers with a fake clock and wall-clock expiry with freezegun.
"""

from __future__ import annotations

import time
from typing import Optional, Protocol


class Clock(Protocol):
    """Where tether_sync reads time from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; used for every timer and timeout."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch; used only for token expiry."""


class SystemClock:
    """The real clocks: :func:`time.monotonic` and :func:`time.time`."""

    def __init__(self) -> None:
        # The functions themselves, not methods that call them: the I/O loop reads
        # the clock several times per round trip.
        self.monotonic = time.monotonic
        self.time = time.time


class Deadline:
    """One deadline shared by every step of a blocking call.

    Args:
        timeout: Seconds from now, or ``None`` for no deadline.
        clock: Where to read the time.
    """

    __slots__ = ("_clock", "_end")

    def __init__(self, timeout: Optional[float], clock: Optional[Clock] = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._end = None if timeout is None else self._clock.monotonic() + max(0.0, timeout)

    def remaining(self) -> Optional[float]:
        """Seconds left (never negative), or ``None`` without a deadline."""
        if self._end is None:
            return None
        return max(0.0, self._end - self._clock.monotonic())

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self._end is not None and self._clock.monotonic() >= self._end
