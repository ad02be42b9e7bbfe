"""The per-TCP-connection layer under the Tether server: read gating and abrupt resets.

``websockets`` owns the framing. What it does not offer is a way to *keep* a
connection from reading: its frame buffer calls ``transport.resume_reading()``
whenever it drains, which would undo a fault that paused reading. So each
connection routes those calls through a gate that also knows about the faults
(blackhole, pause-reading) and only really resumes when nobody wants it paused.

Every frame the server sends goes through the connection's :class:`OrderedSender`,
so frames leave in the order the server decided to send them, even when they come
from different places: the connection's own replies, fan-out from other
connections and :meth:`~tether_sync.server.TetherServer.broadcast` (published
envelopes must reach each subscriber in ``offset`` order, DESIGN §5).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    ClassVar,
    Deque,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Type,
    Union,
)

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

if TYPE_CHECKING:
    _AdapterBase = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter is not subscriptable at runtime before Python 3.11.
    _AdapterBase = logging.LoggerAdapter

__all__ = [
    "GatedConnection",
    "NoDebugLogger",
    "OrderedSender",
    "TransportHub",
    "connection_class",
    "send_frames",
    "send_text",
]

log = logging.getLogger("tether_sync.server")


class NoDebugLogger(_AdapterBase):
    """A logger adapter that never enables DEBUG.

    websockets logs every frame, payload included, when its logger is enabled
    for DEBUG. Frames carry tokens, and tokens must never reach a log line, so
    the server hands websockets this adapter instead of a plain logger.
    """

    def isEnabledFor(self, level: int) -> bool:
        """Report DEBUG (and below) as disabled, defer to the logger otherwise."""
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


class TransportHub(Protocol):
    """What a :class:`GatedConnection` tells its server about its TCP life."""

    def _transport_made(self, conn: GatedConnection) -> None:
        """Called once the TCP connection is accepted, before the handshake is read."""

    def _transport_lost(self, conn: GatedConnection) -> None:
        """Called once the TCP connection is gone, however it ended."""


class GatedConnection(ServerConnection):
    """A websockets server connection whose reading can be held off by faults.

    Attributes:
        blackholed: While true nothing is read and nothing is written.
        reading_paused: While true nothing is read; writes still go out.
    """

    hub: ClassVar[Optional[TransportHub]] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Create the connection; arguments are those of ``ServerConnection``."""
        super().__init__(*args, **kwargs)
        self.blackholed = False
        self.reading_paused = False
        # Whether websockets' frame buffer asked for a pause (it is full).
        self._library_paused = False
        # Whether the asyncio transport is actually paused right now.
        self._transport_paused = False
        # Enforces websockets' close deadline on the receive path (see data_received).
        self._close_timer: Optional[asyncio.TimerHandle] = None
        self.sender = OrderedSender(self)

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the hub and reroute websockets' flow control through the gate."""
        super().connection_made(transport)
        assembler = self.recv_messages
        assembler.pause = self._library_pause
        assembler.resume = self._library_resume
        if self.hub is not None:
            # The hub may apply a fault now, before a single byte (even the HTTP
            # request) is read: that is what makes a blackholed handshake hang.
            self.hub._transport_made(self)
        # Before Python 3.10 the transport starts reading in a callback queued
        # *before* connection_made, which ignores a pause requested meanwhile;
        # re-assert the pause once that callback has run (same loop iteration,
        # so still before any read).
        self.loop.call_soon(self._reassert_pause)

    def _reassert_pause(self) -> None:
        transport = getattr(self, "transport", None)
        if self._transport_paused and transport is not None and not transport.is_closing():
            transport.resume_reading()
            transport.pause_reading()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        """Tell the hub, after websockets has marked the connection closed."""
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        try:
            super().connection_lost(exc)
        finally:
            if self.hub is not None:
                self.hub._transport_lost(self)

    def data_received(self, data: bytes) -> None:
        """Feed websockets, then make sure a failed connection cannot linger.

        When incoming data makes websockets fail the connection (a message over
        ``max_size``, invalid UTF-8...) or answer a close frame, it sets a close
        deadline but only enforces it on the send path; a peer that then never
        closes its socket would keep the connection (and its handler) forever.
        """
        super().data_received(data)
        deadline: Optional[float] = getattr(self, "close_deadline", None)
        if deadline is not None and self._close_timer is None:
            self._close_timer = self.loop.call_at(deadline, self._close_deadline_passed)

    def _close_deadline_passed(self) -> None:
        self._close_timer = None
        transport = getattr(self, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()

    # Gate

    def _library_pause(self) -> None:
        self._library_paused = True
        self._apply()

    def _library_resume(self) -> None:
        self._library_paused = False
        self._apply()

    def set_faults(
        self, *, blackholed: Optional[bool] = None, reading_paused: Optional[bool] = None
    ) -> None:
        """Turn the blackhole and/or pause-reading faults on or off for this connection.

        Must run on the event loop thread.
        """
        if blackholed is not None:
            self.blackholed = blackholed
        if reading_paused is not None:
            self.reading_paused = reading_paused
        self._apply()

    def _apply(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is None or transport.is_closing():
            return
        want_paused = self._library_paused or self.blackholed or self.reading_paused
        if want_paused and not self._transport_paused:
            transport.pause_reading()
            self._transport_paused = True
        elif not want_paused and self._transport_paused:
            transport.resume_reading()
            self._transport_paused = False

    # Abrupt end

    def abort_with_reset(self) -> None:
        """Drop the TCP connection with a reset: no close frame, no FIN.

        ``SO_LINGER`` on with a zero timeout makes the kernel answer ``close()``
        with RST, which is what a crashed peer or a middlebox kill looks like.
        Must run on the event loop thread.
        """
        transport = getattr(self, "transport", None)
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # already closed: nothing left to reset
                pass
        transport.abort()

    def send_data(self) -> None:
        """Write what the protocol has to send, each run of frames as one write.

        websockets writes every frame on its own, which for a burst of small
        frames (a batch's echoes and its ack) costs one ``send()`` system call
        per frame, here and in the peer's reads. An empty chunk (the end of
        the TCP stream, after a close) is handled as websockets does.
        """
        run: List[bytes] = []
        for data in self.protocol.data_to_send():
            if data:
                run.append(data)
                continue
            if run:
                self.transport.write(b"".join(run))
                run = []
            if self.transport.can_write_eof():
                try:
                    self.transport.write_eof()
                except Exception:  # not documented which: websockets ignores them too
                    pass
            else:  # pragma: no cover (TLS)
                self.transport.close()
        if run:
            self.transport.write(run[0] if len(run) == 1 else b"".join(run))

    @property
    def write_buffer_size(self) -> int:
        """Bytes the server sent and the kernel has not accepted yet.

        Both what sits in the transport's buffer and the frames waiting in the
        :class:`OrderedSender` queue behind it.
        """
        transport = getattr(self, "transport", None)
        if transport is None or transport.is_closing():
            return 0
        return int(transport.get_write_buffer_size()) + self.sender.queued_size


async def send_text(ws: GatedConnection, data: Union[str, bytes]) -> bool:
    """Send one frame on ``ws`` now, dropped silently when blackholed or closed.

    websockets writes an unfragmented frame synchronously, before its first
    ``await`` (which waits for the buffer to drain): that is what lets
    :class:`OrderedSender` keep frames in order.

    Returns:
        Whether the frame was written.
    """
    if ws.blackholed:
        return False
    try:
        await ws.send(data)
    except ConnectionClosed:
        return False
    return True


async def send_frames(ws: GatedConnection, frames: Sequence[Union[str, bytes]]) -> bool:
    """Send several frames on ``ws`` now, in one write; dropped silently when blackholed or closed.

    Like :func:`send_text` the frames are written before the first ``await``
    (which waits for the buffer to drain).

    Returns:
        Whether the frames were written.
    """
    if ws.blackholed:
        return False
    protocol = ws.protocol
    try:
        async with ws.send_context():
            for data in frames:
                if isinstance(data, str):
                    protocol.send_text(data.encode("utf-8"))
                else:
                    protocol.send_binary(data)
    except ConnectionClosed:
        return False
    return True


#: What an :class:`OrderedSender` queue holds: a frame, or an action run in its turn.
Outgoing = Union[str, bytes, Callable[[], Awaitable[None]]]


# Frames taken from an OrderedSender queue into one write, up to about this many bytes.
_RUN_BYTES = 1 << 16


async def _nothing() -> None:
    return None


class OrderedSender:
    """Sends a connection's frames strictly in the order they were handed over.

    Frames posted while others wait go to a FIFO drained by one task; a frame
    sent when nothing waits is written at once by its caller (no task hop on the
    common path). An action (:meth:`post_action`) takes its turn in the same
    FIFO, so e.g. a fault or a close happens after the replies posted before it.
    Every method runs on the event loop thread.
    """

    def __init__(self, ws: GatedConnection) -> None:
        """Bind the sender to its connection."""
        self._ws = ws
        self._queue: Deque[Tuple[Outgoing, Optional[asyncio.Future[bool]]]] = deque()
        self._task: Optional[asyncio.Task[None]] = None
        # Size of what waits in the queue (characters for text: bytes for ASCII).
        self.queued_size = 0

    async def send(self, data: Union[str, bytes]) -> bool:
        """Send ``data`` after every frame handed over before it; wait until it is written.

        Returns:
            Whether the frame was written (False when blackholed or closed).
        """
        if not self._queue:
            return await send_text(self._ws, data)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((data, future))
        self.queued_size += len(data)
        self._ensure_task()
        return await future

    def post(self, data: Union[str, bytes]) -> None:
        """Hand ``data`` over without waiting: it goes out after every frame before it."""
        self._queue.append((data, None))
        self.queued_size += len(data)
        self._ensure_task()

    def post_many(self, frames: Sequence[Union[str, bytes]]) -> None:
        """:meth:`post` each of ``frames``, in order."""
        queue = self._queue
        for data in frames:
            queue.append((data, None))
            self.queued_size += len(data)
        self._ensure_task()

    def post_action(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action()`` (awaited) once every frame handed over before it went out."""
        self._queue.append((action, None))
        self._ensure_task()

    async def wait_sent(self) -> None:
        """Wait until everything handed over so far went out (or was dropped)."""
        if not self._queue and self._task is None:
            return
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((_nothing, future))
        self._ensure_task()
        await future

    def _ensure_task(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                # No await between popleft and the write inside send_text, so a
                # frame sent directly meanwhile cannot overtake this one.
                data, future = self._queue.popleft()
                if callable(data):
                    try:
                        await data()
                        written = True
                    except Exception:
                        log.exception("sending a frame failed")
                        written = False
                    if future is not None and not future.done():
                        future.set_result(written)
                    continue
                # The frames waiting behind this one go in the same write (up
                # to _RUN_BYTES), so a burst costs one system call, not one each.
                frames, futures, size = [data], [future], len(data)
                queue = self._queue
                while queue and size < _RUN_BYTES and not callable(queue[0][0]):
                    more, waiter = queue.popleft()
                    assert not callable(more)
                    frames.append(more)
                    futures.append(waiter)
                    size += len(more)
                self.queued_size -= size
                try:
                    written = await send_frames(self._ws, frames)
                except Exception:
                    log.exception("sending a frame failed")
                    written = False
                for waiter in futures:
                    if waiter is not None and not waiter.done():
                        waiter.set_result(written)
        finally:
            self._task = None
            # Cancelled (the server stops): release whoever waits.
            self.queued_size = 0
            while self._queue:
                _, future = self._queue.popleft()
                if future is not None and not future.done():
                    future.set_result(False)


def connection_class(hub: TransportHub) -> Type[GatedConnection]:
    """Return a :class:`GatedConnection` subclass bound to ``hub``.

    ``websockets.serve`` takes a class, not a factory, for ``create_connection``,
    so the hub travels as a class attribute of a per-server subclass.
    """

    class _BoundConnection(GatedConnection):
        pass

    _BoundConnection.hub = hub
    return _BoundConnection
