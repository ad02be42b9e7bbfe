"""From session events to what the application sees: deliveries, events, counters.

Runs on the I/O thread. A message is done when the session says so: written
(no ack awaited) or acknowledged; it fails when refused or dropped. Each done
message releases its room in the :class:`~tether_sync.engine.outbox.Outbox`, which
wakes senders waiting for room.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence

from ..delivery import Delivery
from ..durable import DurableStore
from ..events import (
    AuthRefreshedEvent,
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

if TYPE_CHECKING:
    from .loop import IoLoop

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
        self.pending_close: Optional[CloseEvent] = None  # emitted with the next state change
        self.last_failure: Optional[BaseException] = None  # the last failed attempt's cause
        self._reported: Optional[str] = None  # the last cause reported as an error event
        self.reported_error: Optional[BaseException] = None  # the last error event's error
        self.failures = 0  # messages dropped or failed, ever
        self.store: Optional[DurableStore] = None  # the durable outbox, if any

    def handle(self, loop: IoLoop, session: s.Session, event: s.Event) -> None:
        kind = type(event)
        if kind is s.Received:
            assert isinstance(event, s.Received)
            loop.router.deliver_many(event.items)
        elif kind is s.Written or kind is s.Acked:
            assert isinstance(event, (s.Written, s.Acked))
            self.done(_deliveries(event.items), acked=kind is s.Acked)
        elif kind is s.Opened:
            self._reported = None
            self.last_failure = None
            loop.life.opened(session)
        elif kind is s.TokenNeeded:
            assert isinstance(event, s.TokenNeeded) and loop.authflow is not None
            loop.authflow.request(event.force)
        elif kind is s.AuthAccepted:
            assert isinstance(event, s.AuthAccepted) and loop.authflow is not None
            self._counters.auth_refreshes += 1
            loop.authflow.accepted(event.expires_at, loop.wall_time())
            if self._wants("auth_refreshed"):
                self._emit(AuthRefreshedEvent(event.expires_at))
        elif kind is s.AuthTrouble:
            assert isinstance(event, s.AuthTrouble) and loop.authflow is not None
            self.error(event.error)
            loop.authflow.resolve(event.error)
            if event.final:
                loop.life.fatal = event.error
        elif kind is s.Refused:
            assert isinstance(event, s.Refused)
            self.fail(_deliveries(event.items), event.error, None)
        elif kind is s.RoundTrip:
            assert isinstance(event, s.RoundTrip)
            loop.last_rtt = event.rtt
            self._counters.round_trip(event.rtt)
        elif kind is s.Problem:
            assert isinstance(event, s.Problem)
            self.error(event.error)
        elif kind is s.Recovery:
            assert isinstance(event, s.Recovery)
            if self._wants("recovery"):
                self._emit(RecoveryEvent(event.channel, event.recovered, event.epoch, event.offset))

    def done(self, items: List[Delivery], acked: bool = False) -> None:
        """Messages written (or acknowledged): resolve them, in order."""
        counters = self._counters
        counters.sent += len(items)
        counters.flushed += len(items)
        if acked:
            counters.acked += len(items)
        flushed = self._wants("flushed")
        for d in items:
            d.set_result()
            if flushed:
                self._emit(FlushedEvent(d.id, d.channel, d.payload))
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
        self.failures += len(items)
        for d in items:
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
        self.pending_close = CloseEvent(event.code, event.reason, event.was_clean)

    def outbound_pressure(self, depth: int) -> None:
        log.debug("outbound paused at %d bytes", depth)
        if self._wants("backpressure"):
            self._emit(BackpressureEvent("outbound", depth))


def _deliveries(items: Sequence[Any]) -> List[Delivery]:
    """The session's items are the client's Deliveries (it only needs their frame)."""
    return items  # type: ignore[return-value]  # (no typing.cast: this is per message)
