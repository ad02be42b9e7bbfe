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
        _pending_in: Deque[Tuple[InboundBuffer, Any]]
        _reading: bool
        _phase: int

        _emit: Callable[[Any], None]
        _wants: Callable[[str], bool]

        def post(self, name: str, arg: Any = None) -> None: ...
        def _send_control_text(self, text: str) -> None: ...

    def _deliver(self, channel: Optional[str], payload: Any, raw: Any) -> None:
        """Route one inbound payload to its channel's buffers and the message stream."""
        self.counters.received += 1
        targets: List[Tuple[InboundBuffer, Any]] = []
        if channel is not None:
            for buf in self._routes.get(channel, ()):
                targets.append((buf, payload))
        stream = self.message_buffer
        if stream is not None:
            targets.append((stream, MessageEvent(channel, raw if channel is None else payload)))
        if self._pending_in:
            self._pending_in.extend(targets)  # keep order behind what is held back
            return
        for i, (buf, item) in enumerate(targets):
            if not self._offer(buf, item, channel):
                self._pending_in.extend(targets[i:])
                self._reading = False
                return

    def _offer(self, buf: InboundBuffer, item: Any, channel: Optional[str]) -> bool:
        dropped, accepted = buf.offer(item)
        if dropped:
            self.counters.dropped_inbound += dropped
            if self._wants("backpressure"):
                self._emit(BackpressureEvent("inbound", len(buf), channel, dropped))
        elif not accepted and self._wants("backpressure"):
            self._emit(BackpressureEvent("inbound", len(buf), channel, 0))
        return accepted

    def _cmd_resume_inbound(self, _: Any) -> None:
        pending = self._pending_in
        while pending:
            buf, item = pending[0]
            channel = item.channel if isinstance(item, MessageEvent) else None
            if not self._offer(buf, item, channel):
                return
            pending.popleft()
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
