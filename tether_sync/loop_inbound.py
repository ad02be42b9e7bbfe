"""Inbound routing for the I/O loop: channels, subscriptions, the message stream.

A mixin of :class:`~tether_sync.loop.IoLoop`; its methods run on the I/O thread.
Each inbound payload goes to every buffer of its channel and to the ``message``
stream's buffer (when a ``message`` handler exists). A ``block`` buffer that is
full refuses the item: it is held in ``_pending_in``, in order, and the socket is
not read until the consumer makes room (``resume_inbound``).
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple

from . import envelope
from .events import BackpressureEvent, MessageEvent
from .loop_session import OPEN
from .stats import Counters
from .subscription import InboundBuffer

if TYPE_CHECKING:
    from .loop import LoopConfig


class InboundMixin:
    """Routing of inbound payloads to subscriptions (see the module docstring)."""

    if TYPE_CHECKING:  # provided by IoLoop
        config: LoopConfig
        counters: Counters
        message_buffer: Optional[InboundBuffer]
        _routes: Dict[str, List[InboundBuffer]]
        _pending_in: Deque[Tuple[InboundBuffer, Optional[str], Any]]
        _inbound_batch: Dict[InboundBuffer, Tuple[Optional[str], List[Any]]]
        _reading: bool
        _phase: int

        _emit: Callable[[Any], None]
        _wants: Callable[[str], bool]

        def post(self, name: str, arg: Any = None) -> None: ...
        def _send_control_text(self, text: str) -> None: ...

    def _deliver(self, channel: Optional[str], payload: Any, raw: Any) -> None:
        """Route one inbound payload to its channel's buffers and the message stream.

        Payloads are collected per buffer while one read is parsed and handed over
        by :meth:`_flush_inbound`: one lock and one wake-up per buffer per read,
        not per message.
        """
        self.counters.received += 1
        batch = self._inbound_batch
        if channel is not None:
            for buf in self._routes.get(channel, ()):
                entry = batch.get(buf)
                if entry is None:
                    batch[buf] = (channel, [payload])
                else:
                    entry[1].append(payload)
        stream = self.message_buffer
        if stream is not None:
            event = MessageEvent(channel, raw if channel is None else payload)
            entry = batch.get(stream)
            if entry is None:
                batch[stream] = (None, [event])
            else:
                entry[1].append(event)

    def _flush_inbound(self) -> None:
        """Hand the payloads of the last read to their buffers."""
        batch = self._inbound_batch
        if not batch:
            return
        self._inbound_batch = {}
        pending = self._pending_in
        for buf, (channel, items) in batch.items():
            if pending:
                # Something is held back already: queue behind it, in order.
                pending.extend((buf, channel, item) for item in items)
                continue
            dropped, accepted = buf.offer_many(items)
            self._count_overflow(buf, channel, dropped, accepted < len(items))
            if accepted < len(items):
                pending.extend((buf, channel, item) for item in items[accepted:])
        if pending:
            self._reading = False  # a "block" consumer is full: TCP pushes back

    def _count_overflow(
        self, buf: InboundBuffer, channel: Optional[str], dropped: int, refused: bool
    ) -> None:
        if dropped:
            self.counters.dropped_inbound += dropped
        if (dropped or refused) and self._wants("backpressure"):
            self._emit(BackpressureEvent("inbound", len(buf), channel, dropped))

    def _cmd_resume_inbound(self, _: Any) -> None:
        pending = self._pending_in
        while pending:
            # Hand over the run of items at the head that share one buffer at once.
            buf, channel, _ = pending[0]
            run = []
            for entry in pending:
                if entry[0] is not buf:
                    break
                run.append(entry[2])
            dropped, accepted = buf.offer_many(run)
            self._count_overflow(buf, channel, dropped, accepted < len(run))
            for _ in range(accepted):
                pending.popleft()
            if accepted < len(run):
                return  # still full: wait for the next resume
        self._reading = True

    def wake_inbound(self) -> None:
        """Called by a consumer that made room in a ``block`` buffer."""
        self.post("resume_inbound")

    # ------------------------------------------------------------ subscriptions

    def _cmd_subscribe(self, arg: Tuple[str, InboundBuffer]) -> None:
        channel, buf = arg
        bufs = self._routes.setdefault(channel, [])
        first = not bufs
        bufs.append(buf)
        if first and self._phase == OPEN and self.config.protocol == "tether":
            self._send_control_text(
                envelope.encode_subscription(channel, "subscribe", str(uuid.uuid4()))
            )

    def _cmd_unsubscribe(self, arg: Tuple[str, InboundBuffer]) -> None:
        channel, buf = arg
        bufs = self._routes.get(channel)
        if not bufs or buf not in bufs:
            return
        bufs.remove(buf)
        self._pending_in = deque(p for p in self._pending_in if p[0] is not buf)
        self._inbound_batch.pop(buf, None)
        if not bufs:
            del self._routes[channel]
            if self._phase == OPEN and self.config.protocol == "tether":
                self._send_control_text(
                    envelope.encode_subscription(channel, "unsubscribe", str(uuid.uuid4()))
                )
        if not self._pending_in:
            self._reading = True

    def inbound_depth(self) -> Dict[str, int]:
        depth: Dict[str, int] = {}
        for channel, bufs in list(self._routes.items()):
            depth[channel] = sum(len(b) for b in bufs)
        if self.message_buffer is not None:
            depth["*"] = len(self.message_buffer)
        return depth
