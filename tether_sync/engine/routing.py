"""Inbound routing: channel -> subscription buffers, and the ``message`` stream.

Used by the I/O thread only. Each inbound payload goes to every buffer of its
channel and to the ``message`` stream's buffer (while a ``message`` handler
exists). Payloads of one read are collected per buffer and handed over in one
batch (one lock, one wake-up per buffer per read). A full ``block`` buffer
refuses what does not fit: it is held here, in order, and the loop stops
reading the socket until the consumer makes room (:meth:`Router.resume`), so
TCP pushes back on the server and nothing is dropped.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

from ..events import BackpressureEvent, MessageEvent
from ..protocol.session import Received, Session
from ..stats import Counters
from ..subscription import InboundBuffer
from . import commands as cmd

_NO_CHANNEL = object()  # deliver_many's "no run yet": equal to no channel name

SubscriptionCommand = Union[cmd.Subscribe, cmd.Unsubscribe, cmd.ResumeInbound]


class Router:
    """Where inbound payloads go (see the module docstring).

    Args:
        counters: Incremented for received and dropped messages.
        emit: Hands an event to the application.
        wants: Whether anyone listens to an event name.
    """

    def __init__(
        self,
        counters: Counters,
        emit: Callable[[Any], None],
        wants: Callable[[str], bool],
    ) -> None:
        self._counters = counters
        self._emit = emit
        self._wants = wants
        # channel -> its subscriptions' buffers, in subscription order (several
        # Subscriptions of one channel each get every payload).
        self.routes: Dict[str, List[InboundBuffer]] = {}
        # The ``message`` stream's buffer: set and cleared by the client's on()
        # (a user thread, under the client's lock), read here once per read.
        self.message_buffer: Optional[InboundBuffer] = None
        # (buffer, channel, item) refused by a full "block" buffer, in arrival order.
        # Payloads waiting for a full "block" consumer (reading stops while any wait).
        self.held: Deque[Tuple[InboundBuffer, Optional[str], Any]] = deque()
        # What the current read routed, per buffer: handed over by flush().
        self._batch: Dict[InboundBuffer, Tuple[Optional[str], List[Any]]] = {}

    @property
    def holding(self) -> bool:
        """Whether payloads wait for a full ``block`` consumer (reading must stop)."""
        return bool(self.held)

    def received(self, event: Received) -> None:
        """The session's :class:`~tether_sync.protocol.session.Received` (the loop's table).

        Collected only: :meth:`flush` hands them over once the read that
        produced them is fully parsed (one batch per buffer per read).
        """
        self.deliver_many(event.items)

    def deliver(self, channel: Optional[str], payload: Any) -> None:
        """Route one inbound payload (``channel`` None: no Tether message, stream only)."""
        self.deliver_many([(channel, payload)])

    def deliver_many(self, items: List[Tuple[Optional[str], Any]]) -> None:
        """:meth:`deliver` for each ``(channel, payload)``, in order (the hot path).

        A run of payloads on one channel looks its buffers up once.
        """
        self._counters.received += len(items)
        stream = self.message_buffer
        events: Optional[List[Any]] = None  # the stream's batch list, once looked up
        last: Any = _NO_CHANNEL
        targets: List[List[Any]] = []
        for channel, payload in items:
            if channel != last:
                last = channel
                targets = self._targets(channel)
            for target in targets:
                target.append(payload)
            if stream is not None:
                if events is None:  # after the first payload's buffers: flush order as before
                    events = self._batched(stream, None)
                events.append(MessageEvent(channel, payload))

    def _targets(self, channel: Optional[str]) -> List[List[Any]]:
        # This read's batch list of every buffer subscribed to ``channel``.
        if channel is None:
            return []
        return [self._batched(buf, channel) for buf in self.routes.get(channel, ())]

    def _batched(self, buf: InboundBuffer, channel: Optional[str]) -> List[Any]:
        entry = self._batch.get(buf)
        if entry is None:
            entry = self._batch[buf] = (channel, [])
        return entry[1]

    def flush(self) -> None:
        """Hand the payloads of the last read to their buffers."""
        batch = self._batch
        if not batch:
            return
        self._batch = {}
        pending = self.held
        # Order per buffer is arrival order, across reads: once anything is held
        # for one buffer, everything after it for every buffer queues behind it
        # (the loop stops reading, so this list stays bounded by one read).
        for buf, (channel, items) in batch.items():
            if pending:
                # Something is held back already: queue behind it, in order.
                pending.extend((buf, channel, item) for item in items)
                continue
            dropped, accepted = buf.offer_many(items)
            self._count(buf, channel, dropped, accepted < len(items))
            if accepted < len(items):
                pending.extend((buf, channel, item) for item in items[accepted:])

    def _count(
        self, buf: InboundBuffer, channel: Optional[str], dropped: int, refused: bool
    ) -> None:
        if dropped:
            self._counters.inbound_dropped(buf.overflow, dropped)
        if (dropped or refused) and self._wants("backpressure"):
            self._emit(BackpressureEvent("inbound", len(buf), channel, dropped))

    def resume(self) -> bool:
        """A consumer made room: hand over what was held. True once nothing is held."""
        pending = self.held
        while pending:
            # Hand over the run of items at the head that share one buffer at once.
            buf, channel, _ = pending[0]
            run = []
            for entry in pending:
                if entry[0] is not buf:
                    break
                run.append(entry[2])
            dropped, accepted = buf.offer_many(run)
            self._count(buf, channel, dropped, accepted < len(run))
            for _ in range(accepted):
                pending.popleft()
            if accepted < len(run):
                return False  # still full: wait for the next resume
        return True

    def subscribe(self, channel: str, buf: InboundBuffer) -> bool:
        """Add a buffer; True if it is the channel's first (announce it)."""
        bufs = self.routes.setdefault(channel, [])
        bufs.append(buf)
        return len(bufs) == 1

    def unsubscribe(self, channel: str, buf: InboundBuffer) -> bool:
        """Remove a buffer; True if the channel has none left (announce it)."""
        bufs = self.routes.get(channel)
        if not bufs or buf not in bufs:
            return False
        bufs.remove(buf)
        self.held = deque(p for p in self.held if p[0] is not buf)
        self._batch.pop(buf, None)
        if bufs:
            return False
        del self.routes[channel]
        return True

    def command(self, c: SubscriptionCommand, session: Optional[Session]) -> None:
        """Run a subscription command on the I/O thread; the open session announces it.

        Offline, the route is only recorded: the lifecycle announces every
        route when the next link opens.
        """
        if isinstance(c, cmd.Subscribe):
            if self.subscribe(c.channel, c.buffer) and session is not None:
                session.subscribe(c.channel, str(uuid.uuid4()))
        elif isinstance(c, cmd.Unsubscribe):
            if self.unsubscribe(c.channel, c.buffer) and session is not None:
                session.unsubscribe(c.channel, str(uuid.uuid4()))
        else:  # ResumeInbound: a "block" consumer made room
            self.resume()
            if session is not None:
                session.reading_paused = self.holding

    def close_all(self) -> None:
        """The client ended: wake every consumer; nothing will be read again."""
        for buf in [b for bufs in self.routes.values() for b in bufs]:
            buf.close()
        if self.message_buffer is not None:
            self.message_buffer.close()
        self.held.clear()

    def depth(self) -> Dict[str, int]:
        """Payloads waiting per channel (``"*"``: the message stream), for ``stats()``."""
        # Called from a user thread (stats()): copy the items first, the I/O
        # thread may add or remove a route meanwhile.
        depth: Dict[str, int] = {}
        for channel, bufs in list(self.routes.items()):
            depth[channel] = sum(len(b) for b in bufs)
        stream = self.message_buffer
        if stream is not None:
            depth["*"] = len(stream)
        return depth
