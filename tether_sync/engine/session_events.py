"""What a session's events mean to the application: deliveries, events, counters.

Runs on the I/O thread only. The loop hands each event of the open
:class:`~tether_sync.protocol.session.Session` to the handler its table names
(:meth:`IoLoop._hand_on <tether_sync.engine.loop.IoLoop>`); :class:`Handoff` owns
the handlers that end at the application's side of the client:

* outbound messages: a message is done when the session says so, written (no ack
  awaited, :class:`~tether_sync.protocol.session.Written`) or acknowledged
  (:class:`~tether_sync.protocol.session.Acked`); it fails when refused or never
  sent. Each one done or failed releases its room in the
  :class:`~tether_sync.engine.outbox.Outbox`, which wakes senders waiting for room,
  and leaves the durable outbox file;
* ``error``, ``flushed``, ``recovery`` and ``backpressure`` events, and the error
  reporting that keeps a run of failed attempts from repeating one cause;
* the round-trip time and the ``close`` event the next state change carries.

What the other events mean belongs elsewhere: inbound messages go to the
:class:`~tether_sync.engine.routing.Router`, ``Opened`` and the auth events to the
:class:`~tether_sync.engine.lifecycle.Lifecycle`, ``Closed`` to the loop (it owns
the socket). Handoff knows neither the loop nor the lifecycle: it is given the
counters, the outbox and the two callables that reach the dispatcher, and the
lifecycle reads what it recorded (``pending_close``, ``last_failure``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Sequence

from ..delivery import Delivery, set_results
from ..durable import DurableStore
from ..events import (
    BackpressureEvent,
    CloseEvent,
    ErrorEvent,
    FlushedEvent,
    RecoveryEvent,
)
from ..exceptions import ClientClosed
from ..protocol import session as s
from ..stats import Counters
from .outbox import Outbox

log = logging.getLogger("tether_sync")


class Handoff:
    """Turns one session's events into resolutions and public events.

    Args:
        counters: The client's counters.
        outbox: Room is released here for every message done.
        emit: Hands an event to the dispatcher.
        wants: Whether anyone listens to an event name.
    """

    def __init__(
        self,
        counters: Counters,
        outbox: Outbox[Delivery],
        emit: Callable[[Any], None],
        wants: Callable[[str], bool],
    ) -> None:
        self._counters = counters
        self._outbox = outbox
        self._emit = emit
        self._wants = wants
        # All of these are written on the I/O thread only. User threads read
        # single references (last_failure for connect(wait=True)'s message,
        # failures for flush()): a stale value costs nothing there.
        self.pending_close: Optional[CloseEvent] = None  # emitted with the next state change
        self.last_failure: Optional[BaseException] = None  # the last failed attempt's cause
        self._reported: Optional[str] = None  # the last cause reported as an error event
        self.reported_error: Optional[BaseException] = None  # the last error event's error
        self.failures = 0  # messages dropped or failed, ever
        self.last_rtt: Optional[float] = None  # seconds, the last heartbeat round trip
        self.store: Optional[DurableStore] = None  # the durable outbox, if any

    # ------------------------------------------------ session events (the loop's table)

    def written(self, event: s.Written) -> None:
        """:class:`~tether_sync.protocol.session.Written`: the kernel took them (no ack awaited)."""
        self.done(_deliveries(event.items))

    def acked(self, event: s.Acked) -> None:
        """:class:`~tether_sync.protocol.session.Acked`: the server acknowledged them."""
        self.done(_deliveries(event.items), acked=True)

    def refused(self, event: s.Refused) -> None:
        """:class:`~tether_sync.protocol.session.Refused`: never to be resent."""
        self.fail(_deliveries(event.items), event.error, None)

    def round_trip(self, event: s.RoundTrip) -> None:
        """:class:`~tether_sync.protocol.session.RoundTrip`: a pong came back."""
        self.last_rtt = event.rtt
        self._counters.round_trip(event.rtt)

    def problem(self, event: s.Problem) -> None:
        """:class:`~tether_sync.protocol.session.Problem`: an ``error`` event; the link goes on."""
        self.error(event.error)

    def recovery(self, event: s.Recovery) -> None:
        """:class:`~tether_sync.protocol.session.Recovery`: was a channel's gap recovered?"""
        if self._wants("recovery"):
            self._emit(RecoveryEvent(event.channel, event.recovered, event.epoch, event.offset))

    def opened(self) -> None:
        """The link opened: the next failed attempt is reported again, whatever its cause."""
        self._reported = None
        self.last_failure = None

    # ------------------------------------------------ messages done or failed

    def done(self, items: List[Delivery], acked: bool = False) -> None:
        """Messages written (or acknowledged): resolve them, in order."""
        counters = self._counters
        counters.sent += len(items)
        counters.flushed += len(items)
        if acked:
            counters.acked += len(items)
        # Resolving wakes waiters and hands the Deliveries' callbacks to the
        # dispatcher each one carries: no user code runs here (DESIGN §4).
        if self._wants("flushed"):  # asked once per batch, not per message
            emit = self._emit
            for d in items:  # each message's callbacks, then its event, as ever
                d.set_result()
                emit(FlushedEvent(d.id, d.channel, d.payload))
        else:
            set_results(items)  # one lock hold for the batch, no call per message
        # One release per batch (one lock, one notify of senders waiting for room).
        self._outbox.release(len(items))
        self._discard(items)

    def _discard(self, items: List[Delivery]) -> None:
        # The durable outbox forgets what is done (never blocks: the store's
        # committer writes it).
        store = self.store
        if store is not None:
            seqs = [d._seq for d in items if d._seq > 0]
            if seqs:
                store.discard(seqs)

    def fail(
        self,
        items: List[Delivery],
        error: BaseException,
        cause: Optional[BaseException],
        keep: bool = False,
    ) -> None:
        """Messages that will never be sent here: fail each with ``error``.

        ``keep``: they stay in the durable outbox (the client closed; the next
        process with the same file sends them).
        """
        if not items:
            return
        if not keep:
            self._discard(items)
        self.failures += len(items)  # flush() and close() return False after any
        for d in items:
            # Chained to a cause, each message gets its own copy of the error.
            exc = type(error)(*error.args) if cause is not None else error
            if cause is not None:
                exc.__cause__ = cause
            d.set_exception(exc)
        self._outbox.release(len(items))

    def fail_left(self, left: List[Delivery], reason: Optional[BaseException]) -> None:
        """The client ended: fail every message it did not send (``reason`` None: close())."""
        why = reason if reason is not None else "the client was closed"
        if self.store is not None:  # they stay in the file, for the next process
            why = f"{why} (kept in the outbox file {self.store.path})"
        self.fail(left, ClientClosed(f"message not sent: {why}"), reason, keep=True)

    def error(self, exc: BaseException) -> None:
        """An ``error`` event (the lifecycle's too: it skips one already reported)."""
        self.reported_error = exc
        if self._wants("error"):
            self._emit(ErrorEvent(exc))

    def attempt_failed(self, cause: BaseException) -> None:
        """A connection attempt failed: report each distinct cause once per run."""
        self.last_failure = cause
        status = getattr(cause, "status_code", None)
        # An HTTP refusal's text carries the response headers (a Date among them):
        # the status alone tells one cause from another.
        key = f"HTTP {status}" if isinstance(status, int) else f"{type(cause).__name__}: {cause}"
        if key != self._reported:
            self._reported = key
            log.warning("connection attempt failed: %s", key)
            self.error(cause)

    def connection_closed(self, event: s.Closed) -> None:
        """Keep the ``close`` event: it goes out after the state change it causes."""
        self.pending_close = CloseEvent(event.code, event.reason, event.was_clean)

    def outbound_pressure(self, depth: int) -> None:
        """The queue stopped draining at the high-water mark (once per episode)."""
        log.debug("outbound paused at %d bytes", depth)
        if self._wants("backpressure"):
            self._emit(BackpressureEvent("outbound", depth))


def _deliveries(items: Sequence[Any]) -> List[Delivery]:
    """The session's items are the client's Deliveries (it only needs their frame)."""
    return items  # type: ignore[return-value]  # (no typing.cast: this is per message)
