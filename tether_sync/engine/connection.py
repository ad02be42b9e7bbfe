"""One open connection: its sans-I/O Session, its Link, and the bytes between them.

Runs on the I/O thread only, and starts no thread. The loop opens a
:class:`Connection` when a connector hands a socket over and releases it when
the session is over; in between it moves inbound bytes into the session, writes
what the session has framed (as much as the kernel takes, never blocking),
drains the :class:`~tether_sync.engine.outbox.Outbox` into the session while under the
high-water mark, and keeps the socket's selector registration to exactly what
it can act on. Its own timers (the kernel's unsent bytes, the durable linger)
live in the loop's timer heap. It talks back through one callable, ``process``
(the loop's event step), called after every step that fed the session, so a
step's events (acks, a Closed) are handled before the next step looks at the
session. It knows neither the loop, nor where inbound messages go (the loop's
event table sends them to the router), nor what outlives it. The socket calls
are in :class:`~tether_sync.engine.transport.Link`; the selector in
:class:`~tether_sync.engine.poller.Poller`.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Optional

from ..clock import Clock
from ..delivery import Delivery
from ..protocol.session import Continuity, Event, Session
from ..stats import Counters
from . import commands as cmd
from .auth import AuthFlow
from .config import LoopConfig, Timer, session_config
from .flow_control import Resume
from .outbox import Outbox
from .poller import READ, WRITE, Poller
from .session_events import Handoff
from .timers import TimerHeap
from .transport import Link, read_size

BATCH_MESSAGES = 512  # messages framed per pass, so pings and reads interleave
# Bytes per pass. Without acks, each pass that holds a large message ends with a
# barrier ping the server must answer (reliability.py): at 256 KiB, a stream of
# 64 KiB messages cost a ping and a pong per four messages (with 1 MiB passes the
# sink of benchmarks/bench_client.py's big rows spent about a third less CPU per
# message). Big payloads are masked only as they are written (writebuf.py), so a
# bigger pass holds no more memory; a pass also ends at the high-water mark (pump).
BATCH_BYTES = 1024 * 1024
LINGER_BELOW = 32  # messages: fewer queued than this is a trickle
KERNEL_POLL = 0.005  # seconds between SIOCOUTQ checks where no event can tell
# After a write, the kernel's unsent bytes are re-read shortly (for buffered_amount)
# only once this much may sit there: a trickle drains within microseconds, and an
# ioctl after each round trip would cost more than the round trip's own Python.
KERNEL_POLL_BYTES = 16 * 1024


@dataclasses.dataclass(frozen=True)
class Parts:
    """What every connection of one loop is made with (the loop's own, shared)."""

    config: LoopConfig
    authflow: Optional[AuthFlow]
    continuity: Continuity  # what outlives each connection: session id, seq, offsets
    clock: Clock
    rng: random.Random
    process: Callable[[], None]  # hands the session's events on (may end the connection)
    timers: TimerHeap  # the loop's timer heap (this connection's timers go there)
    poller: Poller  # the loop's selector (this socket's registration)
    counters: Counters  # the client's counters (bytes sent and received)


class Connection:
    """A session and the socket it runs on; both end together.

    Args:
        session: The connection's protocol, not started yet.
        link: The connection's socket.
        parts: The loop's clock, timers, selector and event step.
    """

    def __init__(self, session: Session, link: Link, parts: Parts) -> None:
        # Both public, read by the loop's iteration (deadlines, want_write,
        # TLS pending) without a call: it runs once per wake-up.
        self.session = session
        self.link = link
        self._clock = parts.clock
        self._process = parts.process
        self._timers = parts.timers
        self._poller = parts.poller
        self._counters = parts.counters
        self._poller.watch(link, READ)

    @classmethod
    def open(cls, c: cmd.Connected, url: str, parts: Parts) -> Connection:
        """The connection for a socket a connector handed over (its session not started)."""
        config, flow, clock = parts.config, parts.authflow, parts.clock
        size = read_size(c.deflate is not None, config.max_message_size)  # inflation bound
        link = Link(c.sock, url, config.backpressure.high_water_mark, size)
        now = clock.monotonic()
        auth = flow.auth.options if flow is not None else None
        rotate = flow is not None and flow.rotates_in_band
        session = Session(
            session_config(config, auth, rotate, c.deflate),
            parts.continuity,
            now,
            wall_offset=clock.time() - now,
            rng=parts.rng,
        )
        return cls(session, link, parts)

    @property
    def buffered_amount(self) -> int:
        """User-space bytes not yet written plus the kernel's unsent bytes (as last read)."""
        return self.session.buffered + self.link.kernel_unsent

    def readable(self) -> None:
        """Read what the socket has into the session (the socket was readable).

        The session's events are handed on before this returns (``process``),
        inbound messages included: the loop then hands them to their buffers.
        """
        session = self.session
        try:
            data = self.link.recv()
        except OSError as exc:
            session.abort(1006, f"read failed: {exc}")
            self._process()
            return
        if data is None:
            return  # would block (TLS wanted more, or a spurious wake-up)
        self._counters.bytes_received += len(data)
        now = self._clock.monotonic()
        if data:
            session.receive_data(data, now)
        else:
            session.receive_eof(now)
        self._process()

    def send_some(self) -> int:
        """Write what the session has framed; the bytes written, or -1 if the socket failed."""
        total = self.link.send_some(self.session)
        if total > 0:
            self._counters.bytes_sent += total
            # buffered_amount reads kernel_unsent (user threads may not ioctl the
            # socket): re-read it shortly once enough may sit there.
            link = self.link
            if (
                link.flow.kernel_bound >= KERNEL_POLL_BYTES or link.kernel_unsent
            ) and not self._timers.scheduled(Timer.KERNEL_POLL):
                self._poll_kernel_in(KERNEL_POLL)
        return total

    def write(self) -> None:
        """Write what the session has framed, as much as the kernel takes, without blocking."""
        session = self.session
        wrote = self.send_some()
        if wrote < 0:
            session.abort(1006, "write failed")  # its Closed event ends the link
        if wrote:
            self._process()  # Written events: deliveries done, room released
        # Ask for writability only while our own bytes wait: a socket registered
        # for writing while nothing waits wakes the selector at once, every time.
        self.link.io.want_write = session.buffered > 0

    def poll_kernel(self) -> None:
        """The kernel-poll timer: re-read the kernel's unsent bytes (again soon if any)."""
        if self.link.read_kernel():
            self._poll_kernel_in(KERNEL_POLL)

    def drained(self) -> bool:
        """The kernel has sent every byte (if not, the kernel poll looks again soon)."""
        if self.link.read_kernel() > 0:
            self._poll_kernel_in(KERNEL_POLL)
            return False
        return True

    def _poll_kernel_in(self, delay: float) -> None:
        self._timers.schedule(self._clock.monotonic() + delay, Timer.KERNEL_POLL)

    def watch(self, reading: bool) -> None:
        """Ask the selector for exactly what we can act on (STYLE §3.4)."""
        self._poller.watch(
            self.link, (READ if reading else 0) | (WRITE if self.link.io.want_write else 0)
        )

    def pump(self, outbox: Outbox[Delivery], handoff: Handoff) -> None:
        """Move queued messages into the session while under the high-water mark."""
        session = self.session
        link = self.link
        flow = link.flow
        flow.episode_over(self.buffered_amount)  # below the low-water mark: report again
        linger = outbox.linger
        while len(outbox):
            if flow.above_mark(session.buffered, link.read_kernel):
                report, resume = flow.pause(session.buffered)
                if report:
                    handoff.outbound_pressure(self.buffered_amount)
                if resume is Resume.WRITABLE:
                    link.io.want_write = True
                else:
                    self._poll_kernel_in(4 * KERNEL_POLL)  # no event can tell: poll
                return
            flow.resume()
            # A trickle of durable sends: take it, and look again shortly instead
            # of being woken by each one (see Outbox.linger).
            trickle = linger > 0 and len(outbox) < LINGER_BELOW
            # A pass stops about at the mark (it takes one message at least), so
            # it never takes buffered_amount past the mark by more than a message.
            room = flow.high_water_mark - session.buffered - flow.kernel_bound
            batch = outbox.take(BATCH_MESSAGES, min(BATCH_BYTES, room), _size, trickle)
            if trickle and not self._timers.scheduled(Timer.LINGER):
                self._timers.schedule(self._clock.monotonic() + linger, Timer.LINGER)
            if not batch:
                return
            session.send(batch)
            # Written batch by batch, not after the whole queue was framed: the
            # first bytes leave at once, the write buffer stays near one batch,
            # and the mark is judged on what the kernel really took.
            if self.send_some() < 0:
                session.abort(1006, "write failed")
            self._process()
            if link.closed or not session.is_open:
                return  # the link ended inside this pump (a failed write, a close)

    def last_write(self, handle: Callable[[Event], None]) -> None:
        """The session is over: write what is left (e.g. our close frame); what it took counts."""
        session = self.session
        if session.data_to_send():
            self.send_some()
            for late in session.events():
                handle(late)

    def release(self, outbox: Outbox[Delivery]) -> None:
        """The connection is over: its timers, its registration, its socket."""
        # Unregister before closing: a closed fd cannot be removed from epoll,
        # and the fd number may be reused by the next link's socket.
        self._timers.cancel(Timer.KERNEL_POLL)
        if self._timers.scheduled(Timer.LINGER):
            self._timers.cancel(Timer.LINGER)
            outbox.end_linger()  # puts must wake the loop again
        self._poller.forget(self.link)
        self.link.close()


def _size(d: Delivery) -> int:
    return len(d._data)


__all__ = ["BATCH_BYTES", "BATCH_MESSAGES", "Connection", "Parts"]
