"""Outbound flow control of one link: when may the queue drain into the socket?

Pure policy (DESIGN §1 Backpressure): the queue drains only while
``buffered_amount`` (bytes framed but not yet written, plus the kernel's unsent
bytes, Linux ``SIOCOUTQ``) is under ``high_water_mark``. Reading the kernel's
part costs an ioctl, so it is read only when an upper bound (the last reading
plus everything written since) reaches the mark. Above the mark, draining
pauses and resumes on a real signal: the socket's writability (with
``TCP_NOTSENT_LOWAT`` set near the mark), or, where no event can tell (bytes
sent but not yet acknowledged), a short timer. Never a synthetic rate limit.
"""

from __future__ import annotations

import enum
from typing import Callable


class Resume(enum.Enum):
    """How a paused link learns that it may drain again."""

    WRITABLE = "writable"
    """Our own bytes wait, or TCP_NOTSENT_LOWAT makes writability meaningful."""
    TIMER = "timer"
    """Only the kernel holds bytes and no event reports their draining: poll."""


class OutboundFlow:
    """The high-water-mark state of one connection.

    Args:
        high_water_mark: Bytes.
        lowat: Whether TCP_NOTSENT_LOWAT is set on the socket.
    """

    def __init__(self, high_water_mark: int, lowat: bool = False) -> None:
        self.high_water_mark = high_water_mark
        self.lowat = lowat
        self.kernel_bound = 0  # upper bound of the kernel's unsent bytes
        self.paused = False  # draining stopped at the mark
        self.reported = False  # a backpressure event went out for this episode
        self._stalled = 0  # writability wake-ups that found us still paused

    def wrote(self, n: int) -> None:
        """The kernel took ``n`` more bytes."""
        self.kernel_bound += n

    def above_mark(self, user_bytes: int, kernel_unsent: Callable[[], int]) -> bool:
        """Whether ``buffered_amount`` is at or above the mark (reads the kernel lazily)."""
        hwm = self.high_water_mark
        if user_bytes + self.kernel_bound < hwm:
            return False
        self.kernel_bound = kernel_unsent()
        return user_bytes + self.kernel_bound >= hwm

    def episode_over(self, buffered: int) -> None:
        """End the pressure episode at the low-water mark (half the high one), so a
        buffer hovering around the mark reports one episode, not many."""
        if self.reported and buffered < self.high_water_mark // 2:
            self.reported = False

    def pause(self, user_bytes: int) -> tuple[bool, Resume]:
        """Stop draining. Returns whether to report a ``backpressure`` event, and
        what resumes the link."""
        report = False
        if not self.paused:
            self.paused = True
            self._stalled = 0
            report = not self.reported
            self.reported = True
        if user_bytes:
            return report, Resume.WRITABLE  # our own bytes wait
        # SIOCOUTQ also counts bytes sent but not yet acknowledged, which no event
        # reports: if writability finds us still above the mark a few times in a
        # row, re-check on a short timer instead of spinning on a writable socket.
        if self.lowat and self._stalled < 3:
            self._stalled += 1
            return report, Resume.WRITABLE
        return report, Resume.TIMER

    def resume(self) -> None:
        self.paused = False
