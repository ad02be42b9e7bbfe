"""The bundled server's connections: the hub's one protocol, plus records, latency and faults.

Each connection of :class:`~tether_sync.server.TetherServer` is driven by a
:class:`BundledConnection`: the hub's connection driver (the same sans-I/O
:class:`~tether_sync.server.hub.ServerProtocol`, the same claim/commit of
runs, the same fan-out every adapter uses) with the hooks only the bundled
server fills in. Dispatch follows the reference server (``ws-handler.ts``,
see ``TETHER-WIRE.md``); two of its bugs are deliberately not copied: in
``require_auth`` mode auth is enforced (S1), and a non-numeric ``ms``/``count``
counts as missing instead of leaking ``NaN``/``null`` (S5).

* Every frame is recorded (:class:`~tether_sync.server.state.Received`)
  before anything is sent in reply, so a client that got the echo may assert
  the record. Accepted data is written to the ``--record`` file between its
  claim and its commit, so before the ack that covers it.
* Accepted data is echoed, or in broadcast mode published (rule 8: a
  subscribed sender gets the published copy instead of the echo).
* Replies (pong, hello-ok, auth-ok, error, echo, ack) go through the
  connection's latency; published envelopes, ``tether:subscribed`` and
  replays never wait, but share one ordered path per connection with the
  replies, so each subscriber sees a channel's offsets in order.
* Acks (rule 5): cumulative, on the connection the data came on, at most
  ``ACK_DELAY`` after the first unacked one and at once at the ``ACK_EVERY``-th;
  with a store on the network (Redis), one ack per batch read.
* ``tether:control`` frames, also tunnelled in a data envelope's payload
  (rule 7: a tunnelled one with a ``seq`` runs once), drive per-connection
  faults; see :mod:`tether_sync.server.core`.

Numbers: Python's JSON keeps integers integral (``1`` echoes as ``1``), and a
number too big for a float (``1e400``) is read as infinity, which goes out as
``null``, as ``JSON.stringify`` writes it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from websockets.exceptions import ConnectionClosed

from .codec import encode
from .hub import (
    ACK_EVERY,
    Deliver,
    Event,
    Frame,
    Message,
    Peer,
    ServerProtocol,
    Subscribe,
    Unsubscribe,
    _Connection,
    serve_batches,
)
from .state import TetherConnection
from .tokens import decode_token, now_ms
from .transport import GatedConnection, send_text

if TYPE_CHECKING:
    from .base import ServerBase

__all__ = ["ACK_DELAY", "ACK_EVERY", "FORCE_CLOSE_REASON", "BundledConnection", "serve_bundled"]

log = logging.getLogger("tether_sync.server")

FORCE_CLOSE_REASON = "Server forced close"
MAX_LATENCY_MS = 2000
FLOOD_DEFAULT, FLOOD_MAX = 500, 1000
# Per-connection fault controls (our extension): how long they last by default and at most.
FAULT_DEFAULT_MS, FAULT_MAX_MS = 5000, 60000
# Acks (rule 5): seconds after the first unacked message (well inside the 50 ms
# the rule allows, so a busy loop's timer lag stays within it).
ACK_DELAY = 0.02
# Bytes waiting to go out to one client above which the server stops reading
# from it until they went out (a client that does not read its echoes).
_BACKLOG = 1 << 20


def _number(value: Any) -> Optional[Union[int, float]]:
    # JSON numbers only: strings, booleans and NaN count as missing (bug S5 not copied).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _clamp(value: Any, low: int, high: int, default: int) -> Union[int, float]:
    number = _number(value)
    if number is None:
        return default
    return min(max(number, low), high)


def _control_ack(action: str, **fields: Any) -> str:
    return encode({"type": "tether:control-ack", "action": action, **fields})


class BundledConnection(_Connection):
    """One bundled-server connection: the hub's driver with records, latency and faults.

    Frames are handled on the event loop, or (a store that does network I/O)
    on a worker thread; whatever touches the websocket is then handed to the
    loop in order (``call_soon_threadsafe`` keeps it).
    """

    echo = True

    def __init__(
        self, server: ServerBase, conn: TetherConnection, ws: GatedConnection, peer: Peer
    ) -> None:
        """Bind the driver to its server, its public record and its websocket."""
        proto = ServerProtocol(
            require_auth=server.require_auth, extensions=server.extensions, controls=True
        )
        super().__init__(server.hub, peer, proto)
        self.server = server
        self.conn = conn
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.ack_timer: Optional[asyncio.TimerHandle] = None
        # While a batch is handled on a worker thread: what it hands to the
        # loop, in order, to go in one hop (see _hand_over), and that thread.
        self._pending: Optional[List[Tuple[Callable[..., Any], Tuple[Any, ...]]]] = None
        self._worker: Optional[int] = None

    def _on_loop(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` on the loop: now when called there, else in posting order."""
        ident = threading.get_ident()
        if ident == self.thread:
            func(*args)
        elif self._pending is not None and ident == self._worker:
            self._pending.append((func, args))
        else:
            try:
                self.loop.call_soon_threadsafe(func, *args)
            except RuntimeError:  # the loop is closed: the server stopped
                pass

    def _hand_over(self) -> None:
        """Hand what the worker collected to the loop in one hop, before anything else is posted.

        Called before a hub call that may post to this connection itself (a
        subscribe's answer and replay, a broadcast), so the order holds.
        """
        pending = self._pending
        if pending:
            self._pending = []
            try:
                self.loop.call_soon_threadsafe(_run_all, pending)
            except RuntimeError:  # the loop is closed: the server stopped
                pass

    # Driving

    def process(self, batch: Sequence[Union[str, bytes]]) -> Optional[Tuple[int, str]]:
        """:meth:`_Connection.process`, where one bad message never ends the connection."""
        offloaded = threading.get_ident() != self.thread
        if offloaded:
            self._worker = threading.get_ident()
            self._pending = []
        try:
            return super().process(batch)
        except Exception:
            log.exception("connection %d: error while handling a message", self.conn.id)
            return None
        finally:
            if offloaded:
                self._hand_over()
                self._pending = None
                self._worker = None

    def _do(self, event: Event) -> None:
        if isinstance(event, (Subscribe, Unsubscribe)):
            self._hand_over()
        super()._do(event)

    def _flush(self, run: List[Tuple[Frame, Deliver]]) -> None:
        if self.hub.broadcast:
            self._hand_over()
        super()._flush(run)

    async def settle(self) -> None:
        """Read no further while a client that does not read has a backlog (backpressure)."""
        sender = self.ws.sender
        if sender.queued_size > _BACKLOG:
            await sender.wait_sent()

    # Hooks

    def reply(self, text: str) -> None:
        """Send a reply after the connection's latency (each its own timer, like setTimeout)."""
        delay = self.conn.latency
        if delay <= 0:
            self._on_loop(self.ws.sender.post, text)
        else:
            self._on_loop(self.loop.call_later, delay, self.ws.sender.post, text)

    def reply_many(self, texts: List[str]) -> None:
        """Send a run's echoes: handed to the loop in one go when there is no latency."""
        if self.conn.latency <= 0:
            self._on_loop(self.ws.sender.post_many, texts)
        else:
            super().reply_many(texts)

    def received(self, frame: Frame, duplicate: bool) -> None:
        """Record the frame (accepted data went to the record file when delivered)."""
        self.received_run([(frame, duplicate)])
        if frame.kind is None:
            data = frame.data
            log.debug("connection %d: ignored a message (%s)", self.conn.id, type(data).__name__)

    def received_run(self, handled: List[Tuple[Frame, bool]]) -> None:
        """Record a run of frames in one go (one lock, one wake-up of the server's waiters)."""
        self.server._record_run(self.conn.id, self.proto.session, handled)

    def delivered(self, message: Message) -> None:
        """Write accepted data to the ``--record`` file, before the ack that covers it."""
        self.server._write_record(message.session, message.envelope)

    def authenticate(self, token: Any) -> Any:
        """Check a demo token (:func:`~tether_sync.server.tokens.decode_token`) and keep it."""
        claims = decode_token(token)
        ok = claims is not None and claims["exp"] > now_ms()
        self.conn._present_token(
            token if isinstance(token, str) else None,
            float(claims["exp"]) if ok and claims is not None else None,
            str(claims["sub"]) if ok and claims is not None else None,
        )
        # Log the subject and the outcome, never the token itself.
        log.info(
            "connection %d: auth %s%s",
            self.conn.id,
            "ok" if ok else "refused",
            f" (sub {claims['sub']!r})" if ok and claims is not None else "",
        )
        return float(claims["exp"]) / 1000.0 if ok and claims is not None else False

    def subscribed(self, channel: str, on: bool) -> None:
        """Keep the connection's public subscription set."""
        self.conn._subscribe(channel, on)

    def attached(self) -> None:
        """Show the session and its granted features on the public record."""
        self.conn._set(_session=self.proto.session, _features=frozenset(self.proto.granted))

    def ack_later(self) -> None:
        """One process: ack ``ACK_DELAY`` after the first unacked message; else at once."""
        if self.hub.store.blocking:
            self.send_ack()
        else:
            self._on_loop(self._arm_ack_timer)

    def _arm_ack_timer(self) -> None:
        if self.ack_timer is None and self.unacked:
            self.ack_timer = self.loop.call_later(ACK_DELAY, self._ack_due)

    def _ack_due(self) -> None:
        self.ack_timer = None
        if self.unacked:
            self.send_ack()

    def send_ack(self) -> None:
        """Send the cumulative ack now (and forget a pending timer)."""
        timer, self.ack_timer = self.ack_timer, None
        if timer is not None:
            self._on_loop(timer.cancel)
        super().send_ack()

    def ended(self) -> None:
        """The connection is gone: stop the ack timer, leave every channel and the session."""
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        super().ended()

    # Fault controls (our extension)

    def control(self, message: Dict[str, Any]) -> None:
        """Run a ``tether:control`` action, in turn with the frames before it; unknown: nothing."""
        action = message.get("action")
        ws, sender = self.ws, self.ws.sender
        if action == "force-close":
            log.info("connection %d: force-close requested", self.conn.id)

            async def close() -> None:
                await ws.close(1000, FORCE_CLOSE_REASON)

            self._on_loop(sender.post_action, close)
        elif action == "set-latency":
            ms = _clamp(message.get("ms"), 0, MAX_LATENCY_MS, 0)
            self.conn._set(_latency=ms / 1000.0)
            # Control acks are never delayed: they may overtake replies still waiting.
            self._on_loop(sender.post, _control_ack("set-latency", ms=ms))
        elif action == "flood":
            count = _clamp(message.get("count"), 1, FLOOD_MAX, FLOOD_DEFAULT)
            frames = [_control_ack("flood", count=count)]
            # ``for (i = 0; i < count; i++)``: a fractional count rounds up.
            for index in range(math.ceil(count)):
                frames.append(
                    encode(
                        {
                            "channel": "flood",
                            "type": "data",
                            "payload": {"index": index, "ts": int(now_ms())},
                            "id": f"flood-{index}",
                        }
                    )
                )

            async def flood() -> None:
                # One write per frame, as the reference server's loop of sends
                # does: a client reading them sees many arrivals, not one burst
                # its inbound buffer would take whole (a batch never evicts its
                # own items), so the flood overflows it as it is meant to.
                for text in frames:
                    if not await send_text(ws, text):
                        return

            self._on_loop(sender.post_action, flood)
        elif action == "drop":
            log.info("connection %d: drop requested", self.conn.id)

            async def drop() -> None:
                ws.abort_with_reset()

            self._on_loop(sender.post_action, drop)
        elif action in ("blackhole", "pause-reading"):
            ms = _clamp(message.get("ms"), 0, FAULT_MAX_MS, FAULT_DEFAULT_MS)
            name = str(action)
            server = self.server

            async def fault() -> None:
                # Fault first, so that a client holding the ack knows the fault
                # is on; the ack itself is the last frame out, past the
                # blackhole's send check.
                server._local_fault(ws, name, ms / 1000.0)
                try:
                    await ws.send(_control_ack(name, ms=ms))
                except ConnectionClosed:
                    pass

            self._on_loop(sender.post_action, fault)


def _run_all(calls: List[Tuple[Callable[..., Any], Tuple[Any, ...]]]) -> None:
    for func, args in calls:
        func(*args)


async def serve_bundled(
    server: ServerBase, conn: TetherConnection, ws: GatedConnection, peer: Peer
) -> BundledConnection:
    """Serve one bundled-server connection until it ends; returns its (ended) driver."""
    driver = BundledConnection(server, conn, ws, peer)

    async def recv() -> Optional[Union[str, bytes]]:
        try:
            data: Union[str, bytes] = await ws.recv()
            return data
        except ConnectionClosed:
            return None
        except UnicodeDecodeError:
            # websockets 13.0 raises this for a text frame that is not UTF-8
            # instead of failing the connection with 1007 as later versions do.
            await ws.close(1007, "invalid UTF-8")
            return None

    try:
        verdict = await serve_batches(driver, recv, offload=server.hub.store.blocking)
        if verdict is not None:
            # Nothing the store did not confirm is acked: the client reconnects
            # (to this node or another) and resends.
            log.warning("connection %d: %s, closing with %d", conn.id, verdict[1], verdict[0])
            await ws.sender.wait_sent()
            await ws.close(*verdict)
    finally:
        driver.ended()
    return driver
