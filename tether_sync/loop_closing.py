"""Flushing and closing for the I/O loop.

A mixin of :class:`~tether_sync.loop.IoLoop`; its methods run on the I/O thread.

``flush()`` waits until the queue, the write buffer and the kernel's send queue
are empty; the kernel offers no event for the last, so it is re-checked on a
short timer while someone flushes. ``close()`` drains first (the queue keeps
draining, reconnecting if it must) until its deadline, then sends close 1000 and
gives the peer a short grace to answer (RFC 6455 §7.1.2). A close frame from the
server is echoed with its code (§5.5.1) and ends the link cleanly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, List, Optional, Protocol, Tuple

from . import frames, transport
from .buffers import Ring
from .clock import Clock
from .delivery import Delivery
from .exceptions import ProtocolError
from .loop_outbound import KERNEL_POLL
from .loop_session import AUTH, CLOSING, OPEN
from .state import State
from .timers import TimerHeap
from .writebuf import WriteBuffer

log = logging.getLogger("tether_sync")

CLOSE_GRACE = 1.0  # seconds to wait for the peer's close frame after ours


class Settable(Protocol):
    """What flush() waits on (a threading.Event)."""

    def set(self) -> None: ...


class ClosingMixin:
    """Flush waiters and the closing handshake (see the module docstring)."""

    if TYPE_CHECKING:  # provided by IoLoop
        state: State
        stopped: Any  # threading.Event: set when the loop has ended for good
        _queue: Ring[Delivery]
        _wbuf: WriteBuffer
        _sock: Any
        _phase: int
        _clock: Clock
        _timers: TimerHeap
        _handshaker: Any
        _attempt_id: int
        _flush_waiters: List[Settable]
        _close_requested: bool
        _close_deadline: Optional[float]
        _close_sent: bool
        _closing_code: Tuple[int, str]

        def _send_control(self, opcode: int, payload: bytes) -> None: ...
        def _lost(self, code: int, reason: str, was_clean: bool) -> None: ...
        def _reset_connection_state(self) -> None: ...
        def _finish(self, cause: Optional[BaseException]) -> None: ...

    def _cmd_flush(self, event: Settable) -> None:
        self._flush_waiters.append(event)

    def _check_flush_waiters(self) -> None:
        if not self._flush_waiters:
            return
        if self._queue or self._wbuf:
            return
        sock = self._sock
        if sock is not None and transport.kernel_unsent(sock) > 0:
            self._timers.schedule(self._clock.monotonic() + KERNEL_POLL, "kernel_poll")
            return
        for event in self._flush_waiters:
            event.set()
        self._flush_waiters.clear()

    def _cmd_close(self, deadline: Optional[float]) -> None:
        """close(): drain until ``deadline`` (monotonic), then close with 1000."""
        self._close_requested = True
        self._close_deadline = deadline
        if deadline is not None:
            self._timers.schedule(deadline, "close_deadline")
        self._maybe_close()

    def _maybe_close(self) -> None:
        if not self._close_requested or self.stopped.is_set():
            return
        if self._queue or self._wbuf:
            if self._phase == OPEN or self.state in (State.CONNECTING, State.RECONNECTING):
                return  # still draining; _timer_close_deadline forces it
        self._close_now()

    def _timer_close_deadline(self) -> None:
        if not self.stopped.is_set():
            self._close_now()

    def _close_now(self) -> None:
        if self._phase in (OPEN, AUTH) and not self._close_sent:
            # A link exists (open, or still waiting for auth-ok): close it cleanly.
            self._close_link(1000, "Client disconnect", final=True)
        elif self._phase == CLOSING:
            return  # our close frame is out; _timer_close_grace ends it
        else:
            if self._handshaker is not None:
                transport.abort(self._handshaker)
                self._attempt_id += 1
            self._reset_connection_state()
            self._finish(None)

    def _close_link(self, code: int, reason: str, final: bool) -> None:
        """Send a close frame and give the peer a short grace to answer."""
        if self._sock is None or self._close_sent:
            return  # no link, or our close frame is already out
        self._send_control(frames.OP_CLOSE, frames.encode_close_payload(code, reason))
        self._close_sent = True
        self._phase = CLOSING
        self._closing_code = (code, reason)
        grace = CLOSE_GRACE
        if final and self._close_deadline is not None:
            grace = max(0.0, min(grace, self._close_deadline - self._clock.monotonic()))
        self._timers.schedule(self._clock.monotonic() + grace, "close_grace")

    def _timer_close_grace(self) -> None:
        if self._phase == CLOSING:
            code, reason = self._closing_code
            self._lost(code, reason, False)

    def _on_close_frame(self, payload: bytes) -> None:
        try:
            code, reason = frames.parse_close(payload)
        except ProtocolError as exc:
            code, reason = exc.close_code, str(exc)
        if self._phase == CLOSING:
            # The answer to our close frame: the closing handshake is complete.
            mine = self._closing_code
            self._lost(mine[0], mine[1], True)
            return
        # The server closes: echo its code (RFC 6455 §5.5.1), then end the link.
        echo = code if code not in (1005, 1006, 1015) else 1000
        self._send_control(frames.OP_CLOSE, frames.encode_close_payload(echo, ""))
        log.info("server closed the connection: %d %s", code, reason)
        self._lost(code, reason, True)
