"""One open connection: its sans-I/O Session, its Link, and the bytes between them.

Runs on the I/O thread only, and starts no thread. The loop creates a
:class:`Connection` when a connector hands a socket over and drops it when the
session is over; in between it moves inbound bytes into the session, writes
what the session has framed (as much as the kernel takes, never blocking), and
drains the :class:`~tether_sync.outbox.Outbox` into the session while under the
high-water mark. It talks back through two narrow callables: ``process`` hands
the session's events on (the loop's event step), ``wrote`` tells the loop that
bytes went to the kernel. The socket calls themselves are in
:class:`~tether_sync.transport.Link`; the selector stays in ``loop.py``.
"""

from __future__ import annotations

from typing import Callable, Optional

from .clock import Clock
from .delivery import Delivery
from .flow import Resume
from .handoff import Handoff
from .outbox import Outbox
from .routing import Router
from .session import Event, Session
from .transport import Link

BATCH_MESSAGES = 512  # messages framed per pass, so pings and reads interleave
BATCH_BYTES = 256 * 1024


class Connection:
    """A session and the socket it runs on; both end together.

    Args:
        session: The connection's protocol, already started.
        link: The connection's socket.
        clock: Monotonic time for the session.
        process: Hands the session's events on (may end this connection).
        wrote: Called after bytes went to the kernel (the loop re-reads its
            unsent bytes shortly).
    """

    def __init__(
        self,
        session: Session,
        link: Link,
        clock: Clock,
        process: Callable[[], None],
        wrote: Callable[[], None],
    ) -> None:
        self.session = session
        self.link = link
        self._clock = clock
        self._process = process
        self._wrote = wrote

    @property
    def buffered_amount(self) -> int:
        """User-space bytes not yet written plus the kernel's unsent bytes (as last read)."""
        return self.session.buffered + self.link.kernel_unsent

    def readable(self, router: Router) -> None:
        """Read what the socket has into the session (the socket was readable)."""
        session = self.session
        try:
            data = self.link.recv()
        except OSError as exc:
            session.abort(1006, f"read failed: {exc}")
            self._process()
            return
        if data is None:
            return
        now = self._clock.monotonic()
        if data:
            session.receive_data(data, now)
        else:
            session.receive_eof(now)
        self._process()
        router.flush()  # what arrived before a close is still delivered
        session.reading_paused = router.holding

    def send_some(self) -> int:
        """Write what the session has framed; the bytes written, or -1 if the socket failed."""
        total = self.link.send_some(self.session)
        if total > 0:
            self._wrote()
        return total

    def write(self) -> None:
        """Write what the session has framed, as much as the kernel takes, without blocking."""
        session = self.session
        wrote = self.send_some()
        if wrote < 0:
            session.abort(1006, "write failed")
        if wrote:
            self._process()
        self.link.io.want_write = session.buffered > 0

    def pump(
        self,
        outbox: Outbox[Delivery],
        handoff: Handoff,
        poll_later: Callable[[], None],
        linger_later: Optional[Callable[[], None]] = None,
    ) -> None:
        """Move queued messages into the session while under the high-water mark.

        ``poll_later`` schedules a re-check of the kernel's unsent bytes where no
        event can tell that they drained.
        """
        session = self.session
        link = self.link
        flow = link.flow
        flow.episode_over(self.buffered_amount)
        while len(outbox):
            if flow.above_mark(session.buffered, link.read_kernel):
                report, resume = flow.pause(session.buffered)
                if report:
                    handoff.outbound_pressure(self.buffered_amount)
                if resume is Resume.WRITABLE:
                    link.io.want_write = True
                else:
                    poll_later()
                return
            flow.resume()
            # A trickle of durable sends: take it, and look again shortly instead
            # of being woken by each one (see Outbox.linger).
            linger = linger_later is not None and len(outbox) < LINGER_BELOW
            batch = outbox.take(BATCH_MESSAGES, BATCH_BYTES, _size, linger)
            if linger and linger_later is not None:
                linger_later()
            if not batch:
                return
            session.send(batch)
            if self.send_some() < 0:
                session.abort(1006, "write failed")
            self._process()
            if link.closed or not session.is_open:
                return

    def last_write(self, handle: Callable[[Event], None]) -> None:
        """The session is over: write what is left (e.g. our close frame); what it took counts."""
        session = self.session
        if session.data_to_send():
            self.send_some()
            for late in session.events():
                handle(late)


LINGER_BELOW = 32  # messages: fewer queued than this is a trickle


def _size(d: Delivery) -> int:
    return len(d._data)


__all__ = ["BATCH_BYTES", "BATCH_MESSAGES", "Connection"]
