"""Telemetry: counters kept by the I/O thread and the frozen snapshot ``stats()`` returns."""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Deque, Dict, Mapping, Optional, Tuple

SAMPLES = 1024
"""Round trips and attempt durations kept for a metrics reader (the oldest go first)."""


def close_cause(code: int, was_clean: bool) -> str:
    """Why a link was lost, as a short low-cardinality name (a metric attribute).

    Args:
        code: The close code the ``close`` event reports.
        was_clean: Whether the closing handshake completed.

    Returns:
        ``server_close`` (a clean 1000/1001), ``heartbeat`` (4000: no pong),
        ``connection_lost`` (1006: no close frame), ``protocol_error`` (1002,
        1007, 1009), ``server_error`` (1011-1014), ``policy`` (1008) or
        ``close_<code>`` for any other code.
    """
    if code in (1000, 1001):
        return "server_close" if was_clean else "connection_lost"
    named = {
        4000: "heartbeat",
        1006: "connection_lost",
        1002: "protocol_error",
        1007: "protocol_error",
        1009: "protocol_error",
        1008: "policy",
        1011: "server_error",
        1012: "server_error",
        1013: "server_error",
        1014: "server_error",
    }
    return named.get(code, f"close_{code}")


class Counters:
    """Running totals. Written by the I/O thread only; read anywhere (ints are atomic).

    The byte counters take one integer add per socket read or write call; the
    rest changes once per connection attempt, close or heartbeat, never per
    message. ``rtt_samples`` and ``attempt_samples`` are bounded deques that a
    metrics reader drains with ``popleft()`` (appends and pops of a deque are
    atomic, so no lock is needed between the I/O thread and the reader).
    """

    __slots__ = (
        "_attempt_started",
        "acked",
        "attempt_samples",
        "attempts",
        "attempts_failed",
        "auth_refreshes",
        "bytes_received",
        "bytes_sent",
        "dropped_inbound",
        "dropped_inbound_by_policy",
        "dropped_outbound",
        "flushed",
        "last_cause",
        "last_close",
        "lost_cause",
        "queued",
        "received",
        "reconnects",
        "reconnects_by_cause",
        "resent",
        "rtt_samples",
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
        self.bytes_sent = 0  # bytes the kernel took (frames, close frames included)
        self.bytes_received = 0  # bytes read from the socket after the handshake
        self.last_close: Optional[Tuple[int, str]] = None  # (code, reason) of the last link
        self.attempts = 0  # connection attempts started
        self.attempts_failed = 0  # ... that ended before the link opened
        self.reconnects_by_cause: Dict[str, int] = {}  # close_cause() -> reconnects
        self.dropped_inbound_by_policy: Dict[str, int] = {}  # overflow policy -> drops
        self.lost_cause = "connect_failed"  # why the next open is a reconnect
        self.last_cause = ""  # the last failure, as text (for log records)
        self.rtt_samples: Deque[float] = deque(maxlen=SAMPLES)
        self.attempt_samples: Deque[Tuple[float, bool]] = deque(maxlen=SAMPLES)
        self._attempt_started: Optional[float] = None

    # The hooks below run on the I/O thread, once per attempt, close or pong.

    def attempt_started(self, now: float) -> None:
        """A connection attempt began (monotonic ``now``)."""
        self.attempts += 1
        self._attempt_started = now

    def attempt_ended(self, now: float, opened: bool, cause: Any = None) -> None:
        """The pending attempt opened or failed (nothing happens if none is pending)."""
        started, self._attempt_started = self._attempt_started, None
        if started is None:
            return
        self.attempt_samples.append((max(0.0, now - started), opened))
        if not opened:
            self.attempts_failed += 1
            if cause is not None:
                self.last_cause = f"{type(cause).__name__}: {cause}"

    def opened(self, now: float, reconnect: bool) -> None:
        """The link opened: the attempt succeeded; a reconnect counts by what lost the last."""
        self.attempt_ended(now, True)
        self.last_cause = ""
        if reconnect:
            cause = self.lost_cause
            self.reconnects_by_cause[cause] = self.reconnects_by_cause.get(cause, 0) + 1

    def link_closed(self, now: float, code: int, reason: str, was_clean: bool) -> None:
        """A connection's session ended (before or after it opened)."""
        self.last_close = (code, reason)
        if self._attempt_started is None:  # the link had opened: this loss is what we retry
            self.lost_cause = close_cause(code, was_clean)
        self.last_cause = f"closed {code} {reason}".rstrip()
        self.attempt_ended(now, False)

    def round_trip(self, rtt: float) -> None:
        """A heartbeat pong arrived ``rtt`` seconds after its ping."""
        self.rtt_samples.append(rtt)

    def inbound_dropped(self, policy: str, count: int) -> None:
        """``count`` inbound payloads dropped by a buffer with overflow ``policy``."""
        self.dropped_inbound += count
        by = self.dropped_inbound_by_policy
        by[policy] = by.get(policy, 0) + count

    def snapshot(self) -> Dict[str, Any]:
        """The fields of :class:`Stats` kept here beyond the original ones (DESIGN §8)."""
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "last_close": self.last_close,
            "connect_attempts": self.attempts,
            "connect_failures": self.attempts_failed,
            "reconnects_by_cause": dict(self.reconnects_by_cause),
            "dropped_inbound_by_policy": dict(self.dropped_inbound_by_policy),
        }


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
        bytes_sent: Bytes the kernel accepted on every connection so far
            (WebSocket frames after the opening handshake, close frames included).
        bytes_received: Bytes read from every connection after its handshake.
        last_close: ``(code, reason)`` of the last connection that ended, or ``None``.
        connect_attempts: Connection attempts started (the first included).
        connect_failures: Attempts that ended before the link opened.
        reconnects_by_cause: What lost the link before each reconnect, by cause
            (``server_close``, ``heartbeat``, ``connection_lost``, ``connect_failed``...;
            see :func:`close_cause`); the values add up to ``reconnects``.
        dropped_inbound_by_policy: ``dropped_inbound`` by the overflow policy
            of the buffer that dropped.
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
    bytes_sent: int = 0
    bytes_received: int = 0
    last_close: Optional[Tuple[int, str]] = None
    connect_attempts: int = 0
    connect_failures: int = 0
    reconnects_by_cause: Mapping[str, int] = dataclasses.field(default_factory=dict)
    dropped_inbound_by_policy: Mapping[str, int] = dataclasses.field(default_factory=dict)
