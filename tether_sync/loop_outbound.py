"""Outbound for the I/O loop: the queue drains into the socket under backpressure.

A mixin of :class:`~tether_sync.loop.IoLoop`; its methods run on the I/O thread.
The queue drains only while the link is ``open`` and ``buffered_amount`` (our
write buffer plus the kernel's unsent bytes, Linux ``SIOCOUTQ``) is under the
high-water mark. Above it, draining pauses and resumes on a real signal: the
socket's writability (with TCP_NOTSENT_LOWAT set near the mark) rather than a
polling loop. The socket itself is written by ``IoLoop._flush_out`` only: what
the kernel does not take waits in the :class:`~tether_sync.writebuf.WriteBuffer`
for the next writable event.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, ContextManager, List

from . import frames, transport
from .buffers import Ring
from .clock import Clock
from .delivery import Delivery
from .events import BackpressureEvent, FlushedEvent
from .loop_session import OPEN
from .stats import Counters
from .timers import TimerHeap
from .writebuf import WriteBuffer

if TYPE_CHECKING:
    from .loop import LoopConfig

log = logging.getLogger("tether_sync")

BATCH_MESSAGES = 512  # messages framed per pass, so pings and reads interleave
BATCH_BYTES = 256 * 1024
KERNEL_POLL = 0.005  # seconds between SIOCOUTQ checks where no event can tell


class OutboundMixin:
    """Draining the outbound queue into the socket (see the module docstring)."""

    if TYPE_CHECKING:  # provided by IoLoop
        config: LoopConfig
        counters: Counters
        _lock: ContextManager[Any]  # the loop's outbox lock
        _queue: Ring[Delivery]
        _wbuf: WriteBuffer
        _sock: Any  # the socket, or None between connections
        _phase: int
        _clock: Clock
        _timers: TimerHeap
        _want_write: bool
        _lowat: bool
        _kernel_bound: int
        _stalled_wakeups: int
        _outbound_paused: bool
        _pressure_reported: bool
        _emit: Callable[[Any], None]
        _wants: Callable[[str], bool]

        @property
        def buffered_amount(self) -> int: ...
        def _flush_out(self) -> None: ...

    def _send_control(self, opcode: int, payload: bytes) -> None:
        """Frame a control frame (or protocol text) ahead of the queue."""
        if self._sock is None:
            return
        self._wbuf.add_control(opcode, payload)
        self._flush_out()

    def _send_control_text(self, text: str) -> None:
        self._send_control(frames.OP_TEXT, text.encode())

    def _pump(self) -> None:
        """Move queued messages into the write buffer while under the high-water mark."""
        if self._phase != OPEN or self._sock is None:
            return
        hwm = self.config.backpressure.high_water_mark
        queue = self._queue
        if self._pressure_reported and self.buffered_amount < hwm // 2:
            # The episode ends at the low-water mark (half the high one), so a
            # buffer hovering around the mark reports one episode, not many.
            self._pressure_reported = False
        while queue:
            if self._above_mark(hwm):
                self._pause_outbound()
                break
            if self._outbound_paused:
                self._outbound_paused = False
                log.debug("outbound resumed at %d bytes", self.buffered_amount)
            with self._lock:
                batch: List[Delivery] = []
                size = 0
                while queue and len(batch) < BATCH_MESSAGES and size < BATCH_BYTES:
                    d = queue.pop()
                    batch.append(d)
                    size += len(d._data)
            self._wbuf.add_messages(batch)
            self._flush_out()
            if self._sock is None:
                return

    def _above_mark(self, hwm: int) -> bool:
        """Whether ``buffered_amount`` is at or above the high-water mark.

        The kernel's part costs an ioctl; skip it while an upper bound (what it
        held at the last look plus everything written since) is under the mark.
        """
        wbuf_size = self._wbuf.size
        if wbuf_size + self._kernel_bound < hwm:
            return False
        sock = self._sock
        self._kernel_bound = transport.kernel_unsent(sock) if sock is not None else 0
        return wbuf_size + self._kernel_bound >= hwm

    def _pause_outbound(self) -> None:
        """Stop draining the queue until ``buffered_amount`` falls under the mark."""
        if not self._outbound_paused:
            self._outbound_paused = True
            self._stalled_wakeups = 0
            depth = self.buffered_amount
            log.debug("outbound paused at %d bytes", depth)
            if not self._pressure_reported:
                self._pressure_reported = True
                if self._wants("backpressure"):
                    self._emit(BackpressureEvent("outbound", depth))
        if self._wbuf:
            return  # our own bytes wait: the socket's writability resumes us
        # Only the kernel holds bytes. With TCP_NOTSENT_LOWAT (set on connect) the
        # socket turns writable when the kernel's unsent bytes drop under the
        # low-water mark, which is the signal to resume on. SIOCOUTQ also counts
        # bytes sent but not yet acknowledged, which no event reports: if a
        # writability wake-up finds us still above the mark a few times in a row,
        # re-check on a short timer instead of spinning on an always-writable socket.
        if self._lowat and self._stalled_wakeups < 3:
            self._stalled_wakeups += 1
            self._want_write = True
        else:
            self._timers.schedule(self._clock.monotonic() + 4 * KERNEL_POLL, "kernel_poll")

    def _on_written(self, done: List[Delivery]) -> None:
        """Messages whose frames the kernel accepted: resolve them, in order."""
        counters = self.counters
        counters.sent += len(done)
        counters.flushed += len(done)
        flushed = self._wants("flushed")
        for d in done:
            d.set_result()
            if flushed:
                self._emit(FlushedEvent(d.id, d.channel, d.payload))
