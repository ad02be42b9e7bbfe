"""Telemetry: counters kept by the I/O thread and the frozen snapshot ``stats()`` returns."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional


class Counters:
    """Running totals. Written by the I/O thread only; read anywhere (ints are atomic)."""

    __slots__ = (
        "acked",
        "auth_refreshes",
        "dropped_inbound",
        "dropped_outbound",
        "flushed",
        "queued",
        "received",
        "reconnects",
        "resent",
        "sent",
    )

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.queued = 0
        self.flushed = 0
        self.dropped_inbound = 0
        self.dropped_outbound = 0
        self.reconnects = 0
        self.auth_refreshes = 0
        self.acked = 0
        self.resent = 0


@dataclasses.dataclass(frozen=True)
class Stats:
    """A snapshot of the client, as ``TetherClient.stats()`` returns it.

    Attributes:
        state: ``idle``, ``connecting``, ``open``, ``reconnecting`` or ``closed``.
        attempt: The current reconnection attempt (0 while open).
        next_delay: Seconds of the pending backoff delay, or ``None``.
        queue_depth: Messages waiting in the outbound queue.
        in_flight: Messages framed into the write buffer but not yet fully written.
        buffered_amount: Bytes framed but not accepted by the kernel, plus the
            kernel's unsent bytes where the OS reports them (Linux ``SIOCOUTQ``).
        high_water_mark: The outbound mark ``buffered_amount`` is held under.
        inbound_depth: Channel -> payloads waiting in its subscriptions' buffers
            (the ``message`` event stream is listed under ``"*"``).
        sent: Data messages handed to the socket.
        received: Inbound messages handed to the application (data envelopes, and
            frames that are no Tether protocol message); pongs and auth answers excluded.
        queued: Messages that had to wait in the queue because the client was not open.
        flushed: Messages handed to the socket (``flushed`` events).
        dropped_inbound: Inbound payloads dropped by an overflow policy (once per buffer).
        dropped_outbound: Outbound messages dropped by the queue's overflow policy.
        reconnects: Connections opened after the first.
        auth_refreshes: Tokens accepted by the server (the first included).
        last_rtt: Seconds of the last heartbeat round trip, or ``None``.
        auth_expires_at: Wall-clock expiry of the current token, if known.
        unacked: Messages written and awaiting the server's ack (DESIGN §5).
        acked: Messages the server acknowledged.
        resent: Messages written again after a reconnect because no ack came.
        session_id: The reliable-sessions id (DESIGN §5).
        extensions: The §5 features the current (or last) server granted.
        endpoint: The URL connected to while open; else the one being tried, or
            tried next (with several endpoints they take turns, round robin).
            Redacted: no password or secret query value (:mod:`tether_sync.redact`).
    """

    state: str
    attempt: int
    next_delay: Optional[float]
    queue_depth: int
    in_flight: int
    buffered_amount: int
    high_water_mark: int
    inbound_depth: Mapping[str, int]
    sent: int
    received: int
    queued: int
    flushed: int
    dropped_inbound: int
    dropped_outbound: int
    reconnects: int
    auth_refreshes: int
    last_rtt: Optional[float]
    auth_expires_at: Optional[float] = None
    unacked: int = 0
    acked: int = 0
    resent: int = 0
    session_id: str = ""
    extensions: tuple[str, ...] = ()
    endpoint: str = ""
