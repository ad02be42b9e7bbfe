"""close() and flush() as policy: when to stop draining, and who waits for empty.

Pure (no threads, no I/O, no clock: ``now`` is passed in). ``close(timeout)``
drains the queue, across reconnects, until it is empty or the deadline passes;
then the link closes with 1000. ``flush()`` callers are answered once the
queue, the session's buffer and the kernel are empty, or when the loop ends.

Kept apart from :mod:`~tether_sync.engine.lifecycle`, which applies it, so the
arithmetic of one ``close(timeout)`` (drain, handshake grace, retries inside
the deadline) can be tested with plain numbers. Owned by the I/O thread: the
``Close`` and ``Flush`` commands bring the requests here.
"""

from __future__ import annotations

from typing import Callable, List, Optional

Done = Callable[[], None]


class Shutdown:
    """The close request and the flush waiters; the loop asks it what to do."""

    def __init__(self) -> None:
        self.requested = False  # close() was called
        self.deadline: Optional[float] = None  # monotonic; None: drain without limit
        self.flush_waiters: List[Done] = []  # flush() callers waiting for an empty link

    def request(self, deadline: Optional[float]) -> None:
        """close(): drain until ``deadline`` (monotonic), then close with 1000."""
        self.requested = True
        self.deadline = deadline

    def past_deadline(self, now: float) -> bool:
        d = self.deadline
        return d is not None and now >= d

    def drained(self, has_work: bool, now: float) -> bool:
        """Nothing is left to drain, or the deadline forces the close."""
        return not has_work or self.past_deadline(now)

    def due(self, has_work: bool, now: float) -> bool:
        """close() was called and draining is over: close (or finish) now."""
        return self.requested and self.drained(has_work, now)

    def grace(self, now: float, default: float = 1.0) -> float:
        """Seconds the closing handshake may take: ``default``, within the deadline."""
        # The peer's close frame is waited for at most this long; close()'s own
        # deadline still wins (the client keeps a reserve for joins after it).
        if self.deadline is None:
            return default
        return max(0.0, min(default, self.deadline - now))

    def retry_delay(self, delay: float, now: float) -> float:
        """A reconnect delay; while close() is still draining, retry within its deadline."""
        if self.requested and self.deadline is not None:
            # Half the time left: the attempt itself, and a drain on the new
            # link, must fit in what remains after the wait.
            return min(delay, max(0.0, self.deadline - now) / 2)
        return delay

    # -- flush() ---------------------------------------------------------------------

    def add_flush_waiter(self, done: Done) -> None:
        self.flush_waiters.append(done)

    def release_flush_waiters(self) -> None:
        """Answer every flush() caller (the loop found everything written, or ended)."""
        # Each ``done`` only sets its caller's Event: flush() itself then reads
        # whether anything was left or failed, so one answer serves both cases.
        waiters, self.flush_waiters = self.flush_waiters, []
        for done in waiters:
            done()


__all__ = ["Shutdown"]
