"""``TetherServer``: the bundled Tether-protocol server, run on a background thread.

Every public method is thread-safe. A :meth:`TetherServer.wait_for` predicate
runs under the server's lock, so it should use only the read-only accessors.

Faults, from the Python API and (our extension to the reference controls) from
the wire, as ``{"type": "tether:control", "action": ..., "ms": N}``, also
tunnelled in a data envelope's payload; the wire forms act on the sending
connection only and are acked like ``set-latency``:

========================  ==========================================================
``drop_all()``            RST every TCP connection (``SO_LINGER`` 0): no close frame.
                          Wire: ``"drop"`` (no ack: the reset is the answer).
``stop(abrupt=...)``      Close the listening socket (connects are refused), then close
                          connections with 1001, or RST them. ``start()`` rebinds the port.
``blackhole(on)``         No reads, no writes; new TCP connections are accepted but their
                          handshake never answered. Lifting resumes reading (what was sent
                          meanwhile is then answered) or, with ``drop=True``, RSTs them.
                          Wire: ``"blackhole"`` for ``ms`` (default 5000, max 60000).
``pause_reading(on)``     No reads (kernel buffers fill, the client's writes block);
                          writes still go out. Wire: ``"pause-reading"`` for ``ms``.
``set_latency(s)``        Delay pong/auth-ok/echo/error replies. Wire: ``"set-latency"``.
``force_close_all()``     Close 1000 ``"Server forced close"``. Wire: ``"force-close"``.
========================  ==========================================================
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .base import ServerBase, is_data, to_frame
from .bundled import FORCE_CLOSE_REASON
from .codec import encode
from .state import OutgoingData, Received, TetherConnection
from .transport import GatedConnection

__all__ = ["TetherServer"]

log = logging.getLogger("tether_sync.server")


class TetherServer(ServerBase):
    """A Tether-protocol WebSocket server with fault injection, for tests and demos.

    Args:
        host: Interface to listen on.
        port: TCP port; 0 picks a free one at the first :meth:`start`, and later
            starts reuse it, so a restarted server is reachable at the same URL.
        require_auth: Refuse data and subscribe messages (``tether:error``) from a
            connection that holds no currently valid token.
        max_size: Largest incoming message in bytes; a bigger one closes that
            connection with 1009.
        close_timeout: Seconds the server waits for the peer's close frame after
            sending its own before dropping the TCP connection.
        extensions: Serve the reliable-sessions extension (DESIGN §5: hello,
            acks and dedupe, channel history and resume). False makes the server
            behave like the reference one: ``tether:hello`` is ignored like any
            unknown type (recorded, never answered), ``seq`` is ignored, and
            published envelopes carry no ``offset``/``epoch``.
        broadcast: Broadcast channels: a client's data on channel ``c`` is
            published to every subscriber of ``c`` (rule 8: a subscribed sender
            gets the published copy instead of its echo). False keeps the demo
            echo.
        session_ttl: Seconds a session (id -> highest accepted ``seq``) is kept
            after the last connection of that session ended.
        history_size: Published envelopes kept per channel for resume (0: none).
        history_max_age: Seconds a published envelope stays in the history.
        record_path: Append every accepted data envelope (as :meth:`data_payloads`
            counts them: not refused, not a duplicate) as one JSON line
            ``{"session", "seq", "channel", "payload"}`` to this file, with an
            unbuffered ``os.write`` before the ack that covers it can go out, so
            after a kill -9 the file holds every acked message. Opened at
            :meth:`start` (``OSError`` if it can't be).
        compression: ``"deflate"`` negotiates permessage-deflate (RFC 7692, by
            websockets) with clients that offer it; None (the default, like the
            reference server) offers none.
        clock: Monotonic seconds for session expiry and history age; tests pass
            a fake one. Ack timers use the event loop's own clock.

    Sessions are kept across :meth:`stop`/:meth:`start` (like the records, as if
    the table were durable; :meth:`reset_sessions` forgets it), while every
    channel's history restarts at each :meth:`start` with a new epoch, as a
    restarted process's would.

    Example::

        with TetherServer() as server:
            ws = websocket.create_connection(server.url)
            ...
            assert server.wait_for_data(3, timeout=5)
    """

    # Inspection

    @property
    def connections(self) -> List[TetherConnection]:
        """Open connections (handshake done, not yet closed), oldest first."""
        with self._cond:
            return sorted(self._open.values(), key=lambda conn: conn.id)

    @property
    def all_connections(self) -> List[TetherConnection]:
        """Every connection this server object ever accepted, across restarts."""
        with self._cond:
            return list(self._history)

    @property
    def connection_count(self) -> int:
        """How many WebSocket connections are open now."""
        with self._cond:
            return len(self._open)

    @property
    def total_connections(self) -> int:
        """How many WebSocket connections were ever opened (handshake completed)."""
        with self._cond:
            return len(self._history)

    @property
    def tcp_connection_count(self) -> int:
        """TCP connections alive now, including ones whose handshake has not completed."""
        with self._cond:
            return len(self._transports)

    def connection(self, conn_id: int) -> TetherConnection:
        """Return the connection with id ``conn_id`` (open or closed).

        Raises:
            KeyError: If no connection has that id.
        """
        with self._cond:
            for conn in self._history:
                if conn.id == conn_id:
                    return conn
        raise KeyError(conn_id)

    def received(
        self, conn: Union[TetherConnection, int, None] = None, type: Optional[str] = None
    ) -> List[Received]:
        """Everything received, in arrival order, optionally filtered.

        Args:
            conn: Only messages from this connection (object or id).
            type: Only JSON objects whose ``type`` equals this (e.g. ``"tether:auth"``).
        """
        conn_id = conn.id if isinstance(conn, TetherConnection) else conn
        with self._cond:
            return [
                record
                for record in self._records
                if (conn_id is None or record.conn_id == conn_id)
                and (type is None or record.type == type)
            ]

    def data_payloads(
        self,
        channel: Optional[str] = None,
        *,
        include_refused: bool = False,
        include_duplicates: bool = False,
    ) -> List[Any]:
        """Payloads of received data envelopes, in arrival order across all connections.

        By default these are what the server's application accepted: neither
        refused nor dropped as a duplicate ``seq``.

        Args:
            channel: Only envelopes for this channel.
            include_refused: Also count envelopes refused in ``require_auth`` mode.
            include_duplicates: Also count duplicates (acked, not delivered).
        """
        with self._cond:
            return [
                record.payload
                for record in self._records
                if is_data(record)
                and (channel is None or record.channel == channel)
                and (include_refused or not record.refused)
                and (include_duplicates or not record.duplicate)
            ]

    @property
    def received_count(self) -> int:
        """How many messages were received (and recorded) in all."""
        with self._cond:
            return len(self._records)

    def data_count(self, channel: Optional[str] = None) -> int:
        """How many accepted data envelopes arrived (``len(data_payloads(channel))``, cheaper)."""
        with self._cond:
            if channel is None:
                return self._data_total
            return self._data_by_channel.get(channel, 0)

    def clear_records(self) -> None:
        """Forget every received-message record (and the duplicate count)."""
        with self._cond:
            self._records.clear()
            self._data_total = 0
            self._data_by_channel.clear()
            self._duplicates = 0
            self._cond.notify_all()

    # Reliable sessions (DESIGN §5)

    @property
    def duplicates_dropped(self) -> int:
        """Data envelopes acked but not delivered because their ``seq`` was not new."""
        with self._cond:
            return self._duplicates

    @property
    def sessions(self) -> Dict[str, int]:
        """Known sessions (live or within ``session_ttl``): ``{session id: highest seq}``."""
        return self._store.sessions()

    def session_acked(self, sid: str) -> int:
        """The highest ``seq`` accepted in session ``sid``: what ``hello-ok`` would say now.

        0 for an unknown or expired session.
        """
        return self.sessions.get(sid, 0)

    def reset_sessions(self) -> None:
        """Forget every session's highest ``seq``, as a server that lost its table would."""
        self._store.reset_sessions()
        with self._cond:
            self._cond.notify_all()

    def channel_position(self, channel: str) -> Tuple[str, int]:
        """The channel's history ``(epoch, newest offset)``, as ``tether:subscribed`` reports it."""
        return self._store.position(channel)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` is true; it is re-checked on every server event.

        Events are: a message received, a connection (TCP or WebSocket) opened or
        closed, a subscription, auth or latency change. The predicate runs with
        the server's lock held, so it may use the server's accessors but must be quick.

        Returns:
            The predicate's last value (False on timeout).
        """
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` WebSocket connections are open."""
        return self.wait_for(lambda: len(self._open) >= count, timeout)

    def wait_for_data(
        self, count: int, timeout: float = 5.0, *, channel: Optional[str] = None
    ) -> bool:
        """Block until at least ``count`` data payloads (see :meth:`data_payloads`) arrived."""
        return self.wait_for(lambda: self.data_count(channel) >= count, timeout)

    # Pushing and faults

    def broadcast(self, channel: str, payload: Any) -> int:
        """Publish a data envelope (id ``"bc-<n>"``) to every connection subscribed to ``channel``.

        With the extension on it goes through the channel's history: it gets the
        next ``offset`` and the ``epoch``, and a resubscribe can recover it.
        Blackholed connections are skipped (a resume connection recovers it later).

        Returns:
            How many connections it was handed to (0, and nothing kept, when stopped).
        """
        with self._cond:
            self._broadcasts += 1
            number = self._broadcasts
        # Encode here so an unencodable payload fails in the caller's thread.
        envelope = {"channel": channel, "type": "data", "payload": payload, "id": f"bc-{number}"}
        encode(envelope)
        return self._on_loop(lambda: self._publish(channel, envelope), 0)

    def send_raw_all(self, data: OutgoingData) -> int:
        """Send one frame, unprompted, to every open, non-blackholed connection.

        Args:
            data: ``str`` goes as a text frame and ``bytes`` as a binary frame,
                unchanged (anything, e.g. text that is not JSON); a dict or list is
                JSON-encoded into a text frame.

        Returns:
            How many connections it was handed to.
        """
        payload = to_frame(data)

        def run() -> int:
            with self._cond:
                targets = sorted(self._open.values(), key=lambda c: c.id)
            sent = 0
            for conn in targets:
                if not conn._ws.blackholed:
                    conn._ws.sender.post(payload)
                    sent += 1
            return sent

        return self._on_loop(run, 0)

    def drop_all(self) -> int:
        """Reset every TCP connection (RST, no close frame), handshaken or not.

        Returns once the sockets are closed, i.e. the resets are on their way.

        Returns:
            How many TCP connections were reset.
        """

        def run() -> List[GatedConnection]:
            transports = list(self._transports)
            for ws in transports:
                ws.abort_with_reset()
            return transports

        none: List[GatedConnection] = []
        dropped = self._on_loop(run, none)
        if not self._on_loop_thread():
            # abort() closes the socket one loop iteration later; wait for that.
            self.wait_for(lambda: self._transports.isdisjoint(dropped), 2.0)
        log.info("dropped %d connection(s)", len(dropped))
        return len(dropped)

    def force_close_all(self) -> int:
        """Close every open, non-blackholed connection cleanly: 1000 ``"Server forced close"``.

        Returns:
            How many connections were told to close.
        """

        def run() -> int:
            with self._cond:
                targets = [c._ws for c in self._open.values() if not c._ws.blackholed]
            for ws in targets:
                self._spawn(ws.close(1000, FORCE_CLOSE_REASON))
            return len(targets)

        return self._on_loop(run, 0)

    def blackhole(self, on: bool = True, *, drop: bool = False) -> int:
        """Turn the blackhole on or off for every connection, existing and new.

        While on, connections stay open at the TCP level but the server reads
        nothing and writes nothing (replies already waiting on a latency timer are
        discarded). New TCP connections are accepted, but their HTTP upgrade
        request is never read, so the client's handshake hangs.

        Turning it off resumes reading: whatever the clients sent meanwhile is then
        read and answered, as after a healed partition. With ``drop=True`` the
        blackholed connections are instead reset (RST).

        Returns:
            How many TCP connections were affected.
        """
        with self._cond:
            self._blackhole = on
            self._cond.notify_all()

        def run() -> int:
            affected = 0
            for ws in list(self._transports):
                if on:
                    ws.set_faults(blackholed=True)
                    affected += 1
                elif ws.blackholed:
                    affected += 1
                    if drop:
                        ws.abort_with_reset()
                    else:
                        ws.set_faults(blackholed=False)
            return affected

        return self._on_loop(run, 0)

    def pause_reading(self, on: bool = True) -> int:
        """Stop (or resume) reading from every connection, existing and new.

        The kernel buffers fill up, so the clients' sockets stop accepting
        writes. Replies and broadcasts still go out. When resumed, everything the
        clients sent meanwhile is read, recorded and answered in order.

        Returns:
            How many TCP connections were affected.
        """
        with self._cond:
            self._paused = on
            self._cond.notify_all()

        def run() -> int:
            transports = list(self._transports)
            for ws in transports:
                ws.set_faults(reading_paused=on)
            return len(transports)

        return self._on_loop(run, 0)

    def set_latency(self, seconds: float) -> None:
        """Delay every pong, auth-ok, echo and error reply by ``seconds``.

        Applies to all open connections and to connections opened later, until
        changed (a ``set-latency`` control changes it for its own connection only).

        Raises:
            ValueError: If ``seconds`` is negative or not finite.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {seconds!r}")
        with self._cond:
            self._default_latency = float(seconds)
            for conn in self._open.values():
                conn._latency = float(seconds)
            self._cond.notify_all()
