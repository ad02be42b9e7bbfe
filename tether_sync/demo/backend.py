"""The control panel's backend: one bundled server, one real client, and what the page shows.

:class:`DemoBackend` owns a :class:`~tether_sync.server.TetherServer` and a
:class:`~tether_sync.TetherClient` connected to it, listens to every client event,
keeps the panel's model (event log, reconnect timeline, per-channel counts,
rotations) and runs the panel's buttons as fault injections on the server or calls
on the client. It knows nothing about HTTP: the Flask layer (:mod:`.app`) only
calls :meth:`DemoBackend.snapshot`, :meth:`DemoBackend.stream` and the action
methods.

Threads: client events arrive on the client's dispatcher; actions arrive on HTTP
request threads; timed faults (offline, blackhole, stall) and token refreshes run
on short-lived worker threads that end early when the backend stops. One
condition guards the model; it is held only to read or update it, never while
calling into the client or the server.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional

from ..client import TetherClient
from ..events import (
    AuthRefreshedEvent,
    BackpressureEvent,
    CloseEvent,
    ErrorEvent,
    FlushedEvent,
    OpenEvent,
    QueuedEvent,
    ReconnectingEvent,
    StateChangeEvent,
)
from ..exceptions import ClientClosed
from ..options import Auth, Backpressure, Heartbeat, Queue, Reconnect
from ..subscription import Subscription

__all__ = ["ActionConflict", "DemoBackend", "DemoConfig"]

log = logging.getLogger("tether_sync.demo")

FLOOD_CHANNEL = "flood"
"""The server floods this channel; the panel's slow subscriber sits on it."""
BURST_CHANNEL = "burst"
"""Bursts are sent here; the server echoes them back on the same channel."""
CONTROL_CHANNEL = "control"
"""Data envelopes carrying ``tether:control`` requests go here."""
CRASH_CHANNEL = "crash"
"""The "kill -9 mid-burst" action sends its numbered burst here."""

LOG_SIZE = 300
"""Log entries kept for pages that connect later."""
OUTAGES_KEPT = 6
"""Reconnect timeline: how many outages (runs of attempts) are kept."""
ATTEMPTS_KEPT = 30
"""Reconnect timeline: attempts kept per outage (the first ones and the latest)."""


class ActionConflict(Exception):
    """An action cannot run now (e.g. the server is already offline)."""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """The demo client's settings, chosen so every feature is visible within seconds.

    Attributes:
        token_ttl: Seconds each minted token lives.
        refresh_before: Seconds before expiry at which the client rotates the token.
        heartbeat_interval: Seconds between pings.
        heartbeat_timeout: Seconds a pong may take; a blackhole is caught within
            ``heartbeat_interval + heartbeat_timeout``.
        base_delay: Reconnect backoff base, seconds.
        max_delay: Reconnect backoff cap, seconds.
        connect_timeout: Seconds for one opening handshake (a blackholed server
            never answers the handshake).
        inbound_buffer_size: Messages held per subscription before drop-oldest applies.
        high_water_mark: Bytes of ``buffered_amount`` above which the queue stops draining.
        slow_consumer_delay: Seconds the flood subscriber spends on each message.
        queue_size: The outbound queue's bound (queued plus unacked messages); big
            enough that a "kill -9 mid-burst" burst never meets the drop policy.
        crash_downtime: Seconds the server stays dead in "kill -9 mid-burst".
        crash_timeout: Seconds "kill -9 mid-burst" waits for every message's ack.
    """

    token_ttl: float = 30.0
    refresh_before: float = 10.0
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 1.0
    base_delay: float = 0.3
    max_delay: float = 5.0
    connect_timeout: float = 3.0
    inbound_buffer_size: int = 100
    high_water_mark: int = 256 * 1024
    slow_consumer_delay: float = 0.02
    queue_size: int = 5000
    crash_downtime: float = 1.0
    crash_timeout: float = 30.0


@dataclasses.dataclass
class _Outage:
    """One run of reconnect attempts, from the loss of a connection to the next open."""

    started: float
    cause: str
    attempts: List[Dict[str, float]] = dataclasses.field(default_factory=list)
    total_attempts: int = 0
    ended: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return {
            "started": self.started,
            "cause": self.cause,
            "attempts": list(self.attempts),
            "total_attempts": self.total_attempts,
            "ended": self.ended,
        }


def _bounded(name: str, value: Any, low: float, high: float, *, integer: bool = False) -> float:
    """Validate a number coming from the page; ``ValueError`` names the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    if integer and value != int(value):
        raise ValueError(f"{name} must be a whole number")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


class DemoBackend:
    """The bundled server plus one real client, driven by the panel.

    Args:
        host: Interface of the bundled WebSocket server.
        server_port: Its TCP port (0 picks a free one; restarts keep it).
        config: The client's demo settings.

    Call :meth:`start`, then :meth:`close` (also after a failed start).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        server_port: int = 0,
        config: Optional[DemoConfig] = None,
    ) -> None:
        # Imported here: the server needs the ``server`` extra (websockets).
        from ..server import TetherServer

        self.config = config if config is not None else DemoConfig()
        self.server = TetherServer(host, server_port, require_auth=True)
        self.client: Optional[TetherClient] = None
        self._stopping = threading.Event()
        # Guards everything below; notified whenever something the page shows changed.
        self._cond = threading.Condition(threading.RLock())
        self._version = 0
        self._seq = itertools.count(1)
        self._bursts = itertools.count(1)
        self._log: Deque[Dict[str, Any]] = deque(maxlen=LOG_SIZE)
        self._state = "idle"
        self._outages: Deque[_Outage] = deque(maxlen=OUTAGES_KEPT)
        self._outage: Optional[_Outage] = None  # the one in progress
        self._channels: Dict[str, Dict[str, int]] = {}
        self._rotations = 0
        self._tokens_minted = 0
        self._flood_consumed = 0
        # Counts of high-frequency events, written to the log as one line each.
        self._pending: Dict[str, int] = {}
        self._latency = 0.0
        self._faults: Dict[str, float] = {}  # fault name -> wall time it ends
        self._workers: List[threading.Thread] = []
        self._flood_sub: Optional[Subscription] = None
        self._last_stats: Optional[Any] = None
        self._crashes = itertools.count(1)
        self._crash: Optional[Dict[str, Any]] = None  # the last "kill -9 mid-burst"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the server, then the client and the panel's helper threads.

        Raises:
            OSError: The server's port cannot be bound.
        """
        self.server.start()
        cfg = self.config
        client = TetherClient(
            self.server.url,
            auth=Auth(
                get_token=self._get_token,
                refresh_before=cfg.refresh_before,
                token_ttl=cfg.token_ttl,
                timeout=5.0,
            ),
            heartbeat=Heartbeat(interval=cfg.heartbeat_interval, timeout=cfg.heartbeat_timeout),
            reconnect=Reconnect(base_delay=cfg.base_delay, max_delay=cfg.max_delay),
            backpressure=Backpressure(
                high_water_mark=cfg.high_water_mark,
                inbound_buffer_size=cfg.inbound_buffer_size,
                inbound_overflow="drop-oldest",
            ),
            queue=Queue(max_size=cfg.queue_size),
            connect_timeout=cfg.connect_timeout,
            exit_flush_timeout=0,
        )
        self.client = client
        handlers: Dict[str, Callable[[Any], None]] = {
            "state_change": self._on_state_change,
            "open": self._on_open,
            "close": self._on_close,
            "reconnecting": self._on_reconnecting,
            "auth_refreshed": self._on_auth_refreshed,
            "backpressure": self._on_backpressure,
            "queued": self._on_queued,
            "flushed": self._on_flushed,
            "error": self._on_error,
        }
        for name, handler in handlers.items():
            client.on(name, handler)
        # No ``message`` handler: its stream would be one more inbound buffer, and
        # the drops shown would then mix two buffers. Messages are counted by the
        # panel's two subscriptions instead.
        # A queue subscription consumed by a deliberately slow thread of our own:
        # its buffer overflows under a flood, and the dispatcher stays free for
        # the events the panel shows.
        # Drop-oldest (above): its get() never reads the socket itself, the I/O
        # thread reads the flood at full speed and the buffer drops.
        self._flood_sub = client.subscribe(FLOOD_CHANNEL)
        client.subscribe(BURST_CHANNEL, self._on_burst_echo)
        self._spawn("tether-demo-slow-subscriber", self._slow_consumer)
        self._spawn("tether-demo-ticker", self._ticker)
        self._append("info", "demo", f"bundled server listening on {self.server.url}")
        client.connect()

    def begin_shutdown(self) -> None:
        """Wake and end every event stream and timed fault; idempotent and quick."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout: float = 3.0) -> None:
        """Stop everything: streams, client, server, helper threads (bounded by ``timeout``)."""
        self.begin_shutdown()
        deadline = time.monotonic() + timeout
        client = self.client
        if client is not None:
            # A short drain: offline, the queue cannot drain at all.
            client.close(timeout=max(0.1, min(1.5, deadline - time.monotonic())))
        # Workers first (they wake on _stopping), so that a pending "go offline"
        # cannot restart the server after it was stopped below.
        with self._cond:
            workers = list(self._workers)
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("demo thread %s still running at shutdown", thread.name)
        self.server.stop(timeout=0.5, abrupt=True)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`begin_shutdown` was called."""
        return self._stopping.is_set()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._cond:
            self._workers = [t for t in self._workers if t.is_alive()]
            self._workers.append(thread)
        thread.start()

    def _get_token(self) -> str:
        # Runs on the client's auth helper thread.
        from ..server import mint_token

        with self._cond:
            self._tokens_minted += 1
        return mint_token("demo-user", ttl=self.config.token_ttl)

    def _slow_consumer(self) -> None:
        sub = self._flood_sub
        assert sub is not None
        while not self._stopping.is_set():
            try:
                sub.get(timeout=0.5)
            except TimeoutError:
                continue
            except ClientClosed:
                return
            with self._cond:
                self._flood_consumed += 1
                self._channel(FLOOD_CHANNEL)["received"] += 1
            # The deliberate slowness: an interruptible wait, so shutdown is not held up.
            self._stopping.wait(self.config.slow_consumer_delay)

    def _ticker(self) -> None:
        # Writes the coalesced counts to the log and wakes the streams when the
        # client's numbers changed (queue depth, buffered amount... have no event).
        while not self._stopping.wait(0.2):
            client = self.client
            stats = client.stats() if client is not None else None
            with self._cond:
                self._flush_pending()
                if stats != self._last_stats:
                    self._last_stats = stats
                    self._changed()

    # ------------------------------------------------------------------ the model

    def _changed(self) -> None:
        # With _cond held.
        self._version += 1
        self._cond.notify_all()

    def _append(self, level: str, kind: str, text: str) -> None:
        with self._cond:
            # Coalesced counts first, so that the log keeps the order of events.
            self._flush_pending()
            self._log.append(
                {
                    "seq": next(self._seq),
                    "t": time.time(),
                    "level": level,
                    "kind": kind,
                    "text": text,
                }
            )
            self._changed()

    def _count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self._pending[key] = self._pending.get(key, 0) + n
            self._changed()

    def _flush_pending(self) -> None:
        # With _cond held.
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for key, n in pending.items():
            kind, _, detail = key.partition(":")
            if kind == "queued":
                text = f"queued {n} message(s) while not open"
            elif kind == "flushed":
                text = f"handed {n} message(s) to the socket"
            elif kind == "drop":
                where = "the message stream" if detail == "*" else f"channel {detail!r}"
                text = f"inbound backpressure: dropped {n} message(s) on {where} (drop-oldest)"
            else:  # outbound
                text = f"outbound backpressure: queue paused {n} time(s) at the high-water mark"
            level = "warn" if kind in ("drop", "outbound") else "info"
            self._log.append(
                {
                    "seq": next(self._seq),
                    "t": time.time(),
                    "level": level,
                    "kind": "backpressure" if kind in ("drop", "outbound") else kind,
                    "text": text,
                }
            )

    def _channel(self, name: str) -> Dict[str, int]:
        # With _cond held.
        entry = self._channels.get(name)
        if entry is None:
            entry = self._channels[name] = {"received": 0, "dropped": 0}
        return entry

    # ------------------------------------------------------------------ client events

    def _on_state_change(self, event: StateChangeEvent) -> None:
        with self._cond:
            self._state = event.current
        level = "warn" if event.current in ("reconnecting", "closed") else "info"
        self._append(level, "state_change", f"state: {event.previous} → {event.current}")

    def _on_open(self, event: OpenEvent) -> None:
        with self._cond:
            outage = self._outage
            if outage is not None:
                outage.ended = time.time()
                self._outage = None
        suffix = ""
        if outage is not None:
            suffix = f" after {outage.total_attempts} attempt(s)"
        self._append("ok", "open", f"open: connected to {event.url}{suffix}")

    def _on_close(self, event: CloseEvent) -> None:
        how = "clean" if event.was_clean else "unclean"
        reason = f" {event.reason!r}" if event.reason else ""
        text = f"close: code {event.code}{reason} ({how})"
        with self._cond:
            if self._outage is None:
                self._outage = _Outage(started=time.time(), cause=f"{event.code}{reason}")
                self._outages.append(self._outage)
        self._append("warn", "close", text)

    def _on_reconnecting(self, event: ReconnectingEvent) -> None:
        with self._cond:
            outage = self._outage
            if outage is None:  # the first connect failed: no close came before
                outage = self._outage = _Outage(started=time.time(), cause="connect failed")
                self._outages.append(outage)
            outage.total_attempts = max(outage.total_attempts, event.attempt)
            outage.attempts.append(
                {"attempt": event.attempt, "delay": event.delay, "at": time.time()}
            )
            if len(outage.attempts) > ATTEMPTS_KEPT:
                del outage.attempts[1]  # keep the first attempt and the latest ones
        self._append(
            "warn", "reconnecting", f"reconnecting: attempt {event.attempt} in {event.delay:.2f}s"
        )

    def _on_auth_refreshed(self, event: AuthRefreshedEvent) -> None:
        with self._cond:
            # Handlers run in order, so _state is the state when the token was accepted.
            rotation = self._state == "open"
            if rotation:
                self._rotations += 1
        left = (
            ""
            if event.expires_at is None
            else f", expires in {event.expires_at - time.time():.0f}s"
        )
        if rotation:
            self._append("ok", "auth", f"token rotated over the open socket (no close){left}")
        else:
            self._append("info", "auth", f"authenticated{left}")

    def _on_burst_echo(self, payload: Any) -> None:
        with self._cond:
            self._channel(BURST_CHANNEL)["received"] += 1
            self._changed()

    def _on_backpressure(self, event: BackpressureEvent) -> None:
        if event.direction == "inbound":
            channel = event.channel if event.channel is not None else "*"
            with self._cond:
                self._channel(channel)["dropped"] += event.dropped
            self._count(f"drop:{channel}", event.dropped)
        else:
            self._count("outbound")

    def _on_queued(self, event: QueuedEvent) -> None:
        self._count("queued")

    def _on_flushed(self, event: FlushedEvent) -> None:
        self._count("flushed")

    def _on_error(self, event: ErrorEvent) -> None:
        error = event.error
        self._append("error", "error", f"error: {type(error).__name__}: {error}")

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> Dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        client = self.client
        stats = client.stats() if client is not None else None
        now = time.time()
        with self._cond:
            faults = {name: end for name, end in self._faults.items() if end > now}
            data: Dict[str, Any] = {
                "now": now,
                "stats": None if stats is None else _stats_dict(stats),
                "rotations": self._rotations,
                "tokens_minted": self._tokens_minted,
                "flood_consumed": self._flood_consumed,
                "channels": {name: dict(c) for name, c in sorted(self._channels.items())},
                "outages": [outage.as_dict() for outage in self._outages],
                "crash": None if self._crash is None else dict(self._crash),
                "server": {
                    "url": self.server.url,
                    "running": self.server.running,
                    "connections": self.server.connection_count,
                    "latency": self._latency,
                    "faults": faults,
                },
                "config": dataclasses.asdict(self.config),
            }
        return data

    def log_entries(self, after: int = 0) -> List[Dict[str, Any]]:
        """Log entries with a sequence number above ``after``, oldest first."""
        with self._cond:
            return [dict(entry) for entry in self._log if entry["seq"] > after]

    def stream(self, keepalive: float = 1.0, min_interval: float = 0.1) -> Iterator[str]:
        """Server-sent events: an ``update`` (snapshot plus new log entries) per change.

        At most one update per ``min_interval`` seconds, at least one per
        ``keepalive`` (which also finds browsers that went away). Ends, with a
        ``bye`` event, as soon as the backend stops.
        """
        cursor = 0
        seen = -1

        def news() -> bool:
            return self._stopping.is_set() or self._version != seen

        yield "retry: 1000\n\n"
        while not self._stopping.is_set():
            with self._cond:
                self._cond.wait_for(news, keepalive)
                if self._stopping.is_set():
                    break
                seen = self._version
            entries = self.log_entries(cursor)
            if entries:
                cursor = entries[-1]["seq"]
            body = json.dumps({"snapshot": self.snapshot(), "log": entries}, allow_nan=False)
            yield f"event: update\ndata: {body}\n\n"
            if self._stopping.wait(min_interval):
                break
        yield "event: bye\ndata: {}\n\n"

    # ------------------------------------------------------------------ actions

    def _require_client(self) -> TetherClient:
        client = self.client
        if client is None or self._stopping.is_set():
            raise ActionConflict("the demo is stopping")
        return client

    def _action(self, text: str) -> Dict[str, Any]:
        self._append("action", "action", f"▶ {text}")
        return {"ok": True, "message": text}

    def kill_connection(self) -> Dict[str, Any]:
        """Reset every TCP connection to the server: no close frame (the client sees 1006)."""
        self._require_client()
        if not self.server.running:
            raise ActionConflict("the server is offline: there is no connection to kill")
        # Logged first, so the log reads cause before effect.
        self._action("Kill connection: TCP reset, no close frame")
        count = self.server.drop_all()
        return {"ok": True, "message": f"Kill connection: reset {count} TCP connection(s)"}

    def server_close(self) -> Dict[str, Any]:
        """Have the server close every connection cleanly (1000, "Server forced close")."""
        self._require_client()
        if not self.server.running:
            raise ActionConflict("the server is offline")
        self._action("Server close: the server closes with 1000")
        count = self.server.force_close_all()
        return {"ok": True, "message": f"Server close: closing {count} connection(s) with 1000"}

    def go_offline(self, seconds: Any) -> Dict[str, Any]:
        """Stop the server (1001 to the clients) and start it again after ``seconds``."""
        self._require_client()
        duration = _bounded("seconds", seconds, 1, 60)
        with self._cond:
            if "offline" in self._faults or not self.server.running:
                raise ActionConflict("the server is already offline")
            self._faults["offline"] = time.time() + duration
            # stop() lifts every server-side fault.
            self._faults.pop("blackhole", None)
            self._faults.pop("stall", None)
            self._latency = 0.0

        def run() -> None:
            try:
                self.server.stop(timeout=1.0)
            except Exception as exc:  # never let a worker die silently
                self._append("error", "error", f"server stop failed: {exc}")
            if self._stopping.wait(duration):
                return
            try:
                self.server.start()
                self._append("ok", "server", f"server back online on {self.server.url}")
            except Exception as exc:
                self._append("error", "error", f"server restart failed: {exc}")
            finally:
                with self._cond:
                    self._faults.pop("offline", None)
                    self._changed()

        result = self._action(f"Go offline: server stops for {duration:g}s")
        self._spawn("tether-demo-offline", run)
        return result

    def send_burst(self, count: Any, size: Any = 0) -> Dict[str, Any]:
        """Send ``count`` messages on channel ``burst`` (queued while not open)."""
        client = self._require_client()
        n = int(_bounded("count", count, 1, 1000, integer=True))
        pad = "x" * int(_bounded("size", size, 0, 64 * 1024, integer=True))
        state = client.state.value
        # Logged first: the sends' own events (queued, flushed...) come after it.
        self._action(f"Send burst: {n} message(s) to send() (client {state})")
        burst = next(self._bursts)
        for index in range(n):
            client.send({"burst": burst, "index": index, "pad": pad}, channel=BURST_CHANNEL)
        # send() returning says only that the client took them: say where they are.
        stats = client.stats()
        where = [f"{stats.queue_depth} waiting in the queue"]
        if stats.unacked:
            where.append(f"{stats.unacked} awaiting the server's ack")
        text = f"Send burst: {n} message(s) handed to send(); {', '.join(where)}"
        if stats.state != "open":
            text += f" (client {stats.state}: they go out once it is open)"
        return {"ok": True, "message": text}

    def flood(self, count: Any = 500) -> Dict[str, Any]:
        """Ask the server for ``count`` messages on channel ``flood`` (the slow subscriber)."""
        client = self._require_client()
        n = int(_bounded("count", count, 1, 1000, integer=True))
        state = client.state.value
        if state == "open":
            text = f"Flood: asking the server for {n} messages on {FLOOD_CHANNEL!r}"
        else:  # the request waits in the queue like any message
            text = (
                f"Flood: the request for {n} messages is queued (client {state}); "
                "the server floods once it arrives"
            )
        result = self._action(text)
        client.send({"type": "tether:control", "action": "flood", "count": n}, CONTROL_CHANNEL)
        return result

    def set_latency(self, seconds: Any) -> Dict[str, Any]:
        """Delay every server reply (pongs, auth-ok, echoes) by ``seconds``."""
        self._require_client()
        delay = _bounded("seconds", seconds, 0, 5)
        if not self.server.running:
            raise ActionConflict("the server is offline")
        self.server.set_latency(delay)
        with self._cond:
            self._latency = delay
        note = ""
        if delay >= self.config.heartbeat_timeout:
            note = " (not under the heartbeat timeout: pongs will be late)"
        return self._action(f"Set latency: {delay * 1000:.0f} ms on server replies{note}")

    def refresh_token(self) -> Dict[str, Any]:
        """Rotate the token over the open socket and report the server's answer.

        Refused at once while the client is not open (a rotation needs the open
        socket); otherwise the request waits for ``refresh_auth()`` (at most 5 s)
        so that the action line says how it ended.
        """
        client = self._require_client()
        state = client.state.value
        if state != "open":
            raise ActionConflict(
                f"the client is not connected ({state}): a token refresh needs the open socket"
            )
        self._action("Force token refresh")
        started = time.monotonic()
        try:
            client.refresh_auth(timeout=5.0)
        except Exception as exc:
            text = f"token refresh failed: {type(exc).__name__}: {exc}"
            self._append("error", "error", text)
            raise ActionConflict(text) from exc
        took = (time.monotonic() - started) * 1000
        self._append("info", "auth", f"refresh_auth() returned after {took:.0f} ms")
        return {
            "ok": True,
            "message": f"Force token refresh: the server accepted a new token ({took:.0f} ms)",
        }

    def crash_burst(self, count: Any = 2000) -> Dict[str, Any]:
        """Send ``count`` numbered messages and kill the server hard in the middle.

        The bundled server runs in this process, so kill -9 is emulated as closely
        as it can be: the listening socket and every connection are reset at once
        (RST, no close frame), and the server forgets its session table (a killed
        process loses it), then it starts again on the same port after
        ``crash_downtime``. What its application accepted is kept, like the
        ``--record`` file of ``tether-sync serve``: "lost" counts the burst's
        numbers that never reached it, "duplicates" the ones that reached it twice
        (accepted but not acked when it died, so resent to a server that had
        forgotten them).
        """
        client = self._require_client()
        n = int(_bounded("count", count, 10, 5000, integer=True))
        with self._cond:
            if self._crash is not None and self._crash["phase"] != "done":
                raise ActionConflict("a kill -9 burst is already running")
            if not self.server.running or "offline" in self._faults:
                raise ActionConflict("the server is offline")
            crash = next(self._crashes)
            self._crash = {
                "crash": crash,
                "count": n,
                "phase": "sending",
                "sent": 0,
                "acked_at_kill": None,
                "unacked_at_kill": None,
                "resolved": 0,
                "failed": 0,
                "lost": None,
                "duplicates": None,
                "resent": None,
            }
            self._changed()
        kill_at = max(1, n // 3)  # acks of the burst seen when the server dies
        acked = threading.Event()
        all_done = threading.Event()
        counts = {"resolved": 0, "failed": 0}
        lock = threading.Lock()

        def done(future: Any) -> None:
            failed = future.exception() is not None
            with lock:
                counts["resolved"] += 1
                counts["failed"] += failed
                resolved = counts["resolved"]
            if resolved >= kill_at:
                acked.set()
            if resolved >= n:
                all_done.set()

        def update(**changes: Any) -> None:
            with self._cond:
                if self._crash is not None and self._crash["crash"] == crash:
                    self._crash.update(changes)
                    self._changed()

        def wait(event: threading.Event) -> bool:
            # In slices, so that a shutdown is not held up.
            deadline = time.monotonic() + self.config.crash_timeout
            while not event.wait(0.2):
                if self._stopping.is_set() or time.monotonic() > deadline:
                    return False
            return not self._stopping.is_set()

        # Three phases, paced so that the kill lands mid-burst however fast client
        # and server are (a fast pair acked a whole burst of 2,000 before a killer
        # that only watched the acks could act): the first third is sent and acked;
        # the server then stops reading, so the second third goes out and waits
        # for its ack; the server dies; the last third queues while it is down.
        in_flight_at = min(n - 1, 2 * kill_at)
        reads_paused = threading.Event()
        killed = threading.Event()

        def sender() -> None:
            try:
                for index in range(n):
                    if index == kill_at:
                        if not wait(acked):
                            return
                        self.server.pause_reading(True)
                        reads_paused.set()
                    elif index == in_flight_at and not wait(killed):
                        return
                    delivery = client.send({"crash": crash, "index": index}, CRASH_CHANNEL)
                    delivery.add_done_callback(done)
                    if index % 100 == 99:
                        update(sent=index + 1)
                update(sent=n)
            except ClientClosed:
                pass  # the demo is stopping
            except Exception as exc:
                self._append("error", "error", f"kill -9 burst: send failed: {exc}")
            finally:
                reads_paused.set()
                killed.set()  # never leave the killer waiting for a sender that ended

        def killer() -> None:
            started = client.stats().resent
            # Mid-burst: a third of it acked, the next third sent and awaiting its
            # ack (the server reads nothing), the rest not sent yet.
            if not wait(acked) or not wait(reads_paused):
                update(phase="done")
                return
            deadline = time.monotonic() + 5.0
            while client.stats().unacked == 0 and time.monotonic() < deadline:
                if self._stopping.wait(0.01):  # the second third is reaching the wire
                    return
            with lock:
                acked_now = counts["resolved"]
            stats = client.stats()
            update(phase="killed", acked_at_kill=acked_now, unacked_at_kill=stats.unacked)
            self._append(
                "warn",
                "server",
                f"kill -9: server killed mid-burst ({acked_now} of {n} acked, "
                f"{stats.unacked} awaiting their ack, {stats.queue_depth} queued)",
            )
            try:
                self.server.stop(timeout=0.5, abrupt=True)
                self.server.reset_sessions()  # a killed process forgets its sessions
            except Exception as exc:
                self._append("error", "error", f"server kill failed: {exc}")
            finally:
                self.server.pause_reading(False)  # the restarted server reads again
                killed.set()
            if self._stopping.wait(self.config.crash_downtime):
                return
            try:
                self.server.start()
                self._append("ok", "server", f"server restarted on {self.server.url}")
            except Exception as exc:
                self._append("error", "error", f"server restart failed: {exc}")
            update(phase="recovering")
            if not wait(all_done) and self._stopping.is_set():
                return
            numbers = [
                p["index"]
                for p in self.server.data_payloads(CRASH_CHANNEL)
                if isinstance(p, dict) and p.get("crash") == crash
            ]
            unique = set(numbers)
            lost = n - len(unique)
            duplicates = len(numbers) - len(unique)
            resent = client.stats().resent - started
            with lock:
                resolved, failed = counts["resolved"], counts["failed"]
            update(
                phase="done",
                resolved=resolved,
                failed=failed,
                lost=lost,
                duplicates=duplicates,
                resent=resent,
            )
            self._append(
                "ok" if lost == 0 else "error",
                "crash",
                f"kill -9 burst: lost {lost} of {n}; {duplicates} duplicate(s) (accepted but "
                f"not acked when the server died); {resent} resent",
            )

        result = self._action(f"kill -9 the server mid-burst: {n} messages on {CRASH_CHANNEL!r}")
        self._spawn("tether-demo-crash-send", sender)
        self._spawn("tether-demo-crash-kill", killer)
        return result

    def blackhole(self, seconds: Any) -> Dict[str, Any]:
        """Make the server silent (half-open TCP) for ``seconds``; the heartbeat notices."""
        return self._timed_fault(
            "blackhole",
            seconds,
            self.server.blackhole,
            "Blackhole: the server reads and writes nothing for {:g}s",
        )

    def stall_reads(self, seconds: Any) -> Dict[str, Any]:
        """Make the server stop reading for ``seconds``: the client's socket fills up."""
        return self._timed_fault(
            "stall",
            seconds,
            self.server.pause_reading,
            "Stall server reads: the server reads nothing for {:g}s",
        )

    def _timed_fault(
        self, name: str, seconds: Any, switch: Callable[[bool], Any], text: str
    ) -> Dict[str, Any]:
        self._require_client()
        duration = _bounded("seconds", seconds, 1, 30)
        with self._cond:
            if name in self._faults:
                raise ActionConflict(f"{name} is already on")
            if not self.server.running:
                raise ActionConflict("the server is offline")
            self._faults[name] = time.time() + duration
            ends = self._faults[name]
        result = self._action(text.format(duration))
        switch(True)

        def run() -> None:
            self._stopping.wait(duration)
            with self._cond:
                # A "go offline" in between already lifted it (stop() does), and a
                # later fault of the same name is not ours to lift.
                still_on = self._faults.get(name) == ends
                if still_on:
                    del self._faults[name]
                self._changed()
            if still_on and not self._stopping.is_set():
                switch(False)
                self._append("info", "server", f"{name} lifted")

        self._spawn(f"tether-demo-{name}", run)
        return result


def _stats_dict(stats: Any) -> Dict[str, Any]:
    data = dataclasses.asdict(stats)
    data["inbound_depth"] = dict(stats.inbound_depth)
    return data
