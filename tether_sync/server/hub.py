"""``Hub``: reliable sessions (DESIGN §5) on the user's own server, on one node or many (§7).

A :class:`Hub` is what an application holds: it owns the state (a
:class:`~tether_sync.server.store.Store`: :class:`MemoryStore` by default, or
``RedisStore`` for several nodes), the application's callback and the node's
subscribers. Each connection is served by the sans-I/O :class:`ServerProtocol`
(bytes in, events out, no sockets, no clock) driven by one of three thin
adapters:

* :meth:`Hub.serve_websockets`: a python-websockets asyncio connection;
* :meth:`Hub.serve_asgi`: a Starlette/FastAPI ``WebSocket`` (any ASGI server);
* :meth:`Hub.serve_sync`: a ``websockets.sync.server`` connection or a
  Flask-Sock (simple-websocket) one, each on its own thread.

The bundled ``tether-sync serve`` (:class:`~tether_sync.server.TetherServer`)
runs on the same protocol and driver (:class:`_Connection`, subclassed in
:mod:`.bundled` for its records, latency and fault controls).

What a connection does with a batch of frames (everything that arrived
together, read while the previous batch was being stored):

1. frames are handled in arrival order; a run of data envelopes is handed to
   :meth:`Hub._accept_run` as one: the store *claims* the new ``seq`` values
   (one round trip), the application's ``on_message`` runs for each, the store
   *commits* the highest (one round trip), and one cumulative ``tether:ack``
   goes out. A duplicate ``seq`` is acked and not delivered.
2. if the store cannot be reached (:class:`StoreUnavailable`) or
   ``on_message`` raises, nothing more is acked and the connection is closed
   with 1011; the client reconnects and resends what was not acked.

A client that sends no ``tether:hello`` gets plain §3: its data reaches
``on_message`` without dedupe or ack, and subscriptions get plain envelopes.

Locks: :attr:`Hub._lock` guards the node's subscriber registry, its
per-channel positions, its live sessions and its broken claims, and is held
while a publication is handed to peers so that every peer sees a channel in
offset order (peers' ``post`` never blocks for long). The hub never calls the
store while holding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import queue
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from .codec import encode, encode_parsed, parse_json
from .reliable import FEATURES, seq_of, valid_session
from .store import MemoryStore, Publication, Store, StoreUnavailable

__all__ = [
    "Hub",
    "HubMetrics",
    "Message",
    "Peer",
    "ServerProtocol",
]

log = logging.getLogger("tether_sync.server")

Data = Union[str, bytes]


@dataclass(frozen=True)
class Message:
    """One data envelope the application accepted.

    Attributes:
        session: The sender's session id (None without a hello).
        channel: The envelope's channel.
        payload: Its payload (None when absent).
        id: Its id (None when absent).
        seq: Its ``seq`` on an ``ack`` connection, else None (no dedupe).
        envelope: The whole parsed envelope.
    """

    session: Optional[str]
    channel: Any
    payload: Any
    id: Any
    seq: Optional[int]
    envelope: Dict[str, Any]


class HubMetrics:
    """Counters of a hub (read them at any time; they only grow).

    Attributes:
        delivered: Messages handed to ``on_message``.
        duplicates_dropped: Messages acked but not delivered (``seq`` not new).
        recovered: Subscribes answered ``recovered: true``.
        not_recovered: Resubscribes (with a position) answered ``recovered: false``,
            and gaps in the feed that the history no longer covered.
        store_errors: Operations refused because the store was unreachable.

    Counts are incremented without a lock by the threads that serve connections:
    under heavy concurrency they may lag by a few, never run ahead.
    """

    def __init__(self) -> None:
        """All zero."""
        self.delivered = 0
        self.duplicates_dropped = 0
        self.recovered = 0
        self.not_recovered = 0
        self.store_errors = 0


class Peer:
    """One connection, as the hub's fan-out sees it.

    Attributes:
        resume: Whether the connection was granted ``resume`` (it gets offsets).
    """

    resume = False

    def post(self, text: str) -> bool:
        """Queue a text frame, after every frame queued before; thread-safe, never blocks long.

        Returns:
            Whether it was queued (False once the connection is gone).
        """
        raise NotImplementedError


# Events of the sans-I/O protocol


@dataclass(frozen=True)
class Send:
    """Send this text frame to the client."""

    text: str


@dataclass(frozen=True)
class Hello:
    """Attach the session; then call :meth:`ServerProtocol.hello_ok` with its highest."""

    session: str


@dataclass(frozen=True)
class Auth:
    """Check the token; then call :meth:`ServerProtocol.auth_result`."""

    token: Any


@dataclass
class Deliver:
    """Accept this data envelope (runs of these are stored together).

    Attributes:
        message: The envelope as the application gets it.
        control: The envelope tunnels a ``tether:control`` (only with
            ``controls=True``): after it is accepted the control runs, and it
            is neither echoed nor published (rule 7).
    """

    message: Message
    control: bool = False


@dataclass(frozen=True)
class Subscribe:
    """Subscribe to ``channel`` (``answer``: reply ``tether:subscribed``, rule 9)."""

    channel: str
    epoch: Any
    offset: Any
    answer: bool


@dataclass(frozen=True)
class Unsubscribe:
    """Unsubscribe from ``channel``."""

    channel: str


@dataclass(frozen=True)
class Control:
    """Run this ``tether:control`` (only with ``controls=True``: the bundled server's faults)."""

    message: Dict[str, Any]


Event = Union[Send, Hello, Auth, Deliver, Subscribe, Unsubscribe, Control]


class Frame(NamedTuple):
    """One received frame, parsed and classified (what the bundled server records).

    Attributes:
        data: The frame as received.
        message: The parsed JSON value (None when not JSON).
        is_json: Whether ``data`` parsed as JSON.
        kind: ``"ping"``, ``"hello"``, ``"auth"``, ``"control"``, ``"tunnel"``,
            ``"data"``, ``"subscribe"``, ``"unsubscribe"``, or None for a frame
            the protocol ignores.
        refused: Refused for want of an accepted token (``tether:error``).
        first: Whether it was the connection's first frame.
    """

    data: Data
    message: Any
    is_json: bool
    kind: Optional[str]
    refused: bool
    first: bool


class ServerProtocol:
    """The server side of one connection, sans I/O: frames in, events out (DESIGN §3, §5).

    The one protocol behind every adapter of :class:`Hub` and the bundled
    ``tether-sync serve``. Dispatch follows the reference server
    (``TETHER-WIRE.md``): unknown types are ignored; in ``require_auth`` mode
    data and subscribes need a valid token (enforced, unlike the reference).

    Args:
        require_auth: Refuse data and subscribe (``tether:error``) until a
            ``tether:auth`` was accepted.
        features: The extension features this server grants (rule 1).
        now: Wall-clock seconds, for auth expiries (default ``time.time``, looked
            up at each call; tests pass a fake one).
        extensions: Serve ``tether:hello`` (DESIGN §5). False: a hello is an
            unknown type, ignored like the reference server ignores it.
        controls: Serve ``tether:control`` frames and data envelopes that
            tunnel one (the bundled server's fault controls). False: a
            control frame is ignored and a tunnelling envelope is plain data.
    """

    def __init__(
        self,
        *,
        require_auth: bool = False,
        features: Sequence[str] = FEATURES,
        now: Optional[Callable[[], float]] = None,
        extensions: bool = True,
        controls: bool = False,
    ) -> None:
        """A fresh connection: no frame seen, no session."""
        self.require_auth = require_auth
        self.features = tuple(features)
        self.extensions = extensions
        self.controls = controls
        self._now: Callable[[], float] = now if now is not None else _wall_clock
        self.frames = 0
        self.session: Optional[str] = None
        self.granted: Tuple[str, ...] = ()
        self.ack_on = False
        self.resume_on = False
        self._pending_hello: Optional[Tuple[str, List[str]]] = None
        # Expiry of the accepted token (seconds since the epoch); inf: no expiry.
        self._auth_until: Optional[float] = None

    @property
    def authenticated(self) -> bool:
        """Whether an accepted token is valid now."""
        until = self._auth_until
        return until is not None and until > self._now()

    def receive(self, data: Data) -> List[Event]:
        """Handle one frame; return what to do, in order."""
        return self.decide(self.parse(data))

    def parse(self, data: Data) -> Frame:
        """Parse and classify one frame (the first half of :meth:`receive`)."""
        message, is_json = parse_json(data)
        first = self.frames == 0
        self.frames += 1
        kind = self._classify(message)
        refused = self.require_auth and kind in ("data", "subscribe") and not self.authenticated
        return Frame(data, message, is_json, kind, refused, first)

    def _classify(self, message: Any) -> Optional[str]:
        if not isinstance(message, dict) or "type" not in message:
            return None
        kind = message["type"]
        if kind == "tether:ping":
            return "ping"
        if kind == "tether:hello":
            return "hello" if self.extensions else None
        if kind == "tether:auth":
            return "auth"
        if kind == "tether:control":
            return "control" if self.controls else None
        if "channel" not in message:
            return None
        if kind == "data":
            payload = message.get("payload")
            if (
                self.controls
                and isinstance(payload, dict)
                and payload.get("type") == "tether:control"
            ):
                return "tunnel"
            return "data"
        if kind in ("subscribe", "unsubscribe"):
            return str(kind)
        return None

    def decide(self, frame: Frame) -> List[Event]:
        """What to do with a parsed frame (the second half of :meth:`receive`)."""
        kind, message = frame.kind, frame.message
        if kind is None:
            return []  # unknown types are ignored, as by the reference server
        assert isinstance(message, dict)  # _classify named a kind
        if frame.refused:
            error: Dict[str, Any] = {"type": "tether:error", "error": "auth required"}
            if "id" in message:
                error["id"] = message["id"]
            return [Send(encode(error))]
        if kind == "ping":
            pong: Dict[str, Any] = {"type": "tether:pong"}
            if "ts" in message:
                pong["ts"] = message["ts"]
            return [Send(encode(pong))]
        if kind == "hello":
            return [self.hello(message, frame.first)]
        if kind == "auth":
            return [Auth(message.get("token"))]
        if kind == "control":
            return [Control(message)]
        channel = message["channel"]
        if kind in ("data", "tunnel"):
            seq = seq_of(message) if self.ack_on else None
            return [
                Deliver(
                    Message(
                        self.session,
                        channel,
                        message.get("payload"),
                        message.get("id"),
                        seq,
                        message,
                    ),
                    kind == "tunnel",
                )
            ]
        if not isinstance(channel, str):
            return []
        if kind == "subscribe":
            return [Subscribe(channel, message.get("epoch"), message.get("offset"), self.resume_on)]
        return [Unsubscribe(channel)]

    @property
    def pending_features(self) -> Tuple[str, ...]:
        """The features a hello waiting for :meth:`hello_ok` will grant."""
        return tuple(self._pending_hello[1]) if self._pending_hello is not None else ()

    def hello(self, message: Dict[str, Any], first: bool) -> Union[Send, Hello]:
        """Decide a ``tether:hello`` (rules 1-2): a :class:`Hello` to attach, or the error.

        Args:
            message: The parsed hello.
            first: Whether it was the connection's first frame.
        """
        sid = message.get("session")
        reason = None
        if not first or self.session is not None:
            reason = "hello must be the first frame"
        elif not valid_session(sid):
            reason = "hello needs a session id of 1 to 64 characters"
        if reason is not None:
            error: Dict[str, Any] = {"type": "tether:error", "error": reason}
            if "id" in message:
                error["id"] = message["id"]
            return Send(encode(error))
        assert isinstance(sid, str)
        asked = message.get("features")
        granted: List[str] = []
        for feature in asked if isinstance(asked, list) else ():
            if isinstance(feature, str) and feature in self.features and feature not in granted:
                granted.append(feature)
        self._pending_hello = (sid, granted)
        return Hello(sid)

    def hello_ok(self, acked: int) -> Send:
        """The store attached the session: take it and answer ``hello-ok`` (rules 1-2)."""
        assert self._pending_hello is not None
        sid, granted = self._pending_hello
        self._pending_hello = None
        self.session = sid
        self.granted = tuple(granted)
        self.ack_on = "ack" in granted
        self.resume_on = "resume" in granted
        return Send(
            encode({"type": "tether:hello-ok", "session": sid, "features": granted, "acked": acked})
        )

    def auth_result(self, result: Any) -> Send:
        """Take the application's verdict on a token: True, False, or an expiry (epoch seconds)."""
        if result is True:
            until: Optional[float] = math.inf
        elif isinstance(result, (int, float)) and not isinstance(result, bool):
            until = float(result) if result > self._now() else None
        else:
            until = None
        self._auth_until = until
        return Send(encode({"type": "tether:auth-ok", "ok": until is not None}))

    @staticmethod
    def ack(highest: int) -> Send:
        """The cumulative ack carrying the session-wide highest (rule 5)."""
        return Send(encode({"type": "tether:ack", "seq": highest}))


def _wall_clock() -> float:
    return time.time()


class _AppError(Exception):
    """``on_message`` raised: what it was given is not acked."""


class Hub:
    """Reliable sessions for the user's own WebSocket server (DESIGN §7).

    Args:
        store: Where sessions and channel history live; default a new
            :class:`MemoryStore` (one process).
        on_message: Called once per accepted data envelope with a
            :class:`Message`, before the ack that covers it: an exception
            means no ack (the connection closes with 1011 and the client
            resends). It may run on a worker thread.
        auth: ``callable(token)`` returning True, False or an expiry (seconds
            since the epoch). When given, data and subscribes need an accepted
            ``tether:auth`` first. None: every connection may send, and a
            ``tether:auth`` is answered ``ok: true``.
        history_size: Published envelopes kept per channel for resume.
        history_age: Seconds a published envelope stays recoverable.
        session_ttl: Seconds a session's highest ``seq`` is kept after its
            last connection.
        broadcast: Also publish every accepted data envelope on its channel
            (rule 8: a sender subscribed to it gets the published copy, one
            that is not gets a plain echo).
        node: This node's name, unique among the nodes on one store and the
            same across its restarts (claims it left are settled at
            :meth:`start`). Default: ``hostname:pid``.
    """

    def __init__(
        self,
        store: Optional[Store] = None,
        on_message: Optional[Callable[[Message], Any]] = None,
        auth: Optional[Callable[[Any], Any]] = None,
        history_size: int = 1000,
        history_age: float = 300.0,
        session_ttl: float = 300.0,
        *,
        broadcast: bool = False,
        node: Optional[str] = None,
    ) -> None:
        """Configure the hub; the store's feed starts on first use (or :meth:`start`)."""
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0:
            raise ValueError(f"history_size must be an int >= 0, got {history_size!r}")
        if not history_age > 0 or not math.isfinite(history_age):
            raise ValueError(f"history_age must be a finite number > 0, got {history_age!r}")
        if not math.isfinite(session_ttl) or session_ttl < 0:
            raise ValueError(f"session_ttl must be a finite number >= 0, got {session_ttl!r}")
        self.store: Store = store if store is not None else MemoryStore()
        self.on_message = on_message
        self.auth = auth
        self.broadcast = broadcast
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self.metrics = HubMetrics()
        self.store.configure(
            history_size=history_size, history_age=history_age, session_ttl=session_ttl
        )
        # Guards _subs and _positions (see the module docstring).
        self._lock = threading.RLock()
        # channel -> {peer: pending buffer (subscribe in progress) or (epoch, floor)}:
        # a live peer gets a publication only when it is past its floor.
        self._subs: Dict[str, Dict[Peer, Union[List[Publication], Tuple[str, int]]]] = {}
        # channel -> (epoch, newest offset handed to this node's peers).
        self._positions: Dict[str, Tuple[str, int]] = {}
        # sid -> open connections of it on this node (also under _lock).
        self._live: Dict[str, int] = {}
        # sid -> (owner, delivered): claims a store failure left open (also under _lock).
        self._broken: Dict[str, Tuple[str, int]] = {}
        self._owners = itertools.count(1)
        self._started = False
        self._feeding = False
        self._settle: Optional[Callable[[str], int]] = None
        self._start_lock = threading.Lock()  # makes start() run once
        self._counted = threading.local()  # the peer count of a synchronous feed

    def __repr__(self) -> str:
        return f"<Hub node={self.node!r} store={self.store!r}>"

    # Lifecycle

    def start(self, settle: Optional[Callable[[str], int]] = None) -> None:
        """Start the store's feed and settle claims this node left unfinished.

        Called by the adapters on first use; call it yourself to fail early.

        Args:
            settle: ``settle(sid)`` returns the highest ``seq`` of that session
                the application recorded (``tether-sync serve --record``):
                the node's unfinished claims are committed up to it, so a
                restarted node delivers nothing twice. Without it they are
                released (the client's resend is delivered again).
        """
        with self._start_lock:
            if self._started:
                return
            if settle is not None:
                self._settle = settle
            if not self._feeding:
                self.store.keep_alive(self._live_sessions)
                self.store.open(self.node, self._feed, self._resync)
                self._feeding = True
            # Raises StoreUnavailable when the store is down: the hub then
            # stays unstarted, every hello is refused, and the next one retries.
            for sid, (owner, _) in self.store.unfinished_claims(self.node).items():
                recorded = self._settle(sid) if self._settle is not None else 0
                self.store.settle(sid, owner, recorded)
                log.info("settled an unfinished claim of this node (%d recorded)", recorded)
            self._started = True

    def close(self) -> None:
        """Stop the store's feed (connections are the adapters' to close)."""
        with self._start_lock:
            if self._feeding:
                self.store.close()
            self._feeding = False
            self._started = False

    # Publishing and fan-out

    def publish(self, channel: str, payload: Any, id: Optional[str] = None) -> int:
        """Publish ``payload`` on ``channel`` to every subscriber on every node.

        The envelope gets the channel's next ``offset`` and its ``epoch`` and
        is kept in the history for resubscribes (blocking: call it from a
        thread, or through ``run_in_executor`` on an event loop with RedisStore).

        Returns:
            How many of this node's connections it was handed to at once (with
            a remote store, the fan-out comes back through the feed: 0).
        """
        envelope: Dict[str, Any] = {"channel": channel, "type": "data", "payload": payload}
        if id is not None:
            envelope["id"] = id
        return self._publish(channel, envelope)

    def _publish(self, channel: str, envelope: Dict[str, Any]) -> int:
        self.start()
        self._counted.value = 0
        try:
            self.store.publish(channel, envelope)
        except StoreUnavailable:
            self.metrics.store_errors += 1
            raise
        count: int = self._counted.value
        return count

    def _feed(self, pub: Publication) -> None:
        """A publication from the store (any thread): hand it to this node's subscribers."""
        with self._lock:
            if not self._subs.get(pub.channel):
                return
            position = self._positions.get(pub.channel)
        missing: Optional[List[Publication]] = []
        if position is not None and position[0] == pub.epoch and pub.offset > position[1] + 1:
            # A gap in this node's feed (a lost pub/sub message, a reconnect):
            # read the missing offsets from the history.
            try:
                missing = self.store.gap(pub.channel, pub.epoch, position[1] + 1, pub.offset - 1)
            except StoreUnavailable:
                missing = None
        with self._lock:
            position = self._positions.get(pub.channel)
            if position is not None and position[0] == pub.epoch and pub.offset <= position[1]:
                return  # already handed out (the feed and a gap read overlap)
            if position is None or (position[0] == pub.epoch and pub.offset == position[1] + 1):
                pass
            elif position[0] == pub.epoch and missing is not None and missing:
                for old in missing:
                    if old.offset > position[1]:
                        self._hand_out(old)
                if self._positions[pub.channel][1] != pub.offset - 1:
                    self._lost_position(pub)
            else:
                self._lost_position(pub)
            self._counted.value = self._hand_out(pub)

    def _hand_out(self, pub: Publication) -> int:
        assert self._lock._is_owned()  # type: ignore[attr-defined]
        self._positions[pub.channel] = (pub.epoch, pub.offset)
        plain: Optional[str] = pub.plain
        count = 0
        for peer, state in list(self._subs.get(pub.channel, {}).items()):
            if isinstance(state, list):
                state.append(pub)  # its subscribe is reading the history
                continue
            if state[0] == pub.epoch and pub.offset <= state[1]:
                continue  # the peer's replay already had it
            if peer.resume:
                sent = peer.post(pub.text)
            else:
                if plain is None:
                    plain = _plain(pub.text)
                sent = peer.post(plain)
            count += 1 if sent else 0
        return count

    def _lost_position(self, pub: Publication) -> None:
        """History no longer covers this node's gap: tell resume peers (rule 13)."""
        assert self._lock._is_owned()  # type: ignore[attr-defined]
        self.metrics.not_recovered += 1
        text = encode(
            {
                "type": "tether:subscribed",
                "channel": pub.channel,
                "recovered": False,
                "epoch": pub.epoch,
                "offset": pub.offset - 1,
            }
        )
        for peer, state in self._subs.get(pub.channel, {}).items():
            if not isinstance(state, list):
                self._subs[pub.channel][peer] = (pub.epoch, pub.offset - 1)
                if peer.resume:
                    peer.post(text)

    def _resync(self) -> None:
        """The feed was down: read each channel's position and fill what this node missed."""
        with self._lock:
            channels = [c for c, peers in self._subs.items() if peers]
        for channel in channels:
            try:
                epoch, newest = self.store.position(channel)
            except StoreUnavailable:
                continue
            with self._lock:
                position = self._positions.get(channel)
            if position is None or (position[0] == epoch and newest <= position[1]):
                continue
            if position[0] != epoch:
                with self._lock:
                    self._lost_position(Publication(channel, epoch, newest + 1, ""))
                    self._positions[channel] = (epoch, newest)
                continue
            try:
                missing = self.store.gap(channel, epoch, position[1] + 1, newest)
            except StoreUnavailable:
                continue
            with self._lock:
                if missing is None:
                    self._lost_position(Publication(channel, epoch, newest + 1, ""))
                    self._positions[channel] = (epoch, newest)
                else:
                    current = self._positions.get(channel)
                    for pub in missing:
                        if current is None or pub.offset > current[1]:
                            self._hand_out(pub)

    def _subscribe(self, peer: Peer, channel: str, epoch: Any, offset: Any, answer: bool) -> None:
        """Subscribe ``peer``: ``tether:subscribed`` and the replay when ``answer``, then live.

        Publications that arrive while the history is read are buffered and
        merged after the replay, so nothing falls between (DESIGN §7).
        """
        self.start()
        buffer: List[Publication] = []
        with self._lock:
            self._subs.setdefault(channel, {})[peer] = buffer
        try:
            result = self.store.resume(
                channel, epoch if answer else None, offset if answer else None
            )
        except StoreUnavailable:
            with self._lock:
                self._forget(peer, channel)
            self.metrics.store_errors += 1
            raise
        with self._lock:
            if answer:
                peer.post(
                    encode(
                        {
                            "type": "tether:subscribed",
                            "channel": channel,
                            "recovered": result.recovered,
                            "epoch": result.epoch,
                            "offset": result.offset,
                        }
                    )
                )
                for pub in result.replay:
                    peer.post(pub.text)
                if result.recovered:
                    self.metrics.recovered += 1
                elif epoch is not None or offset is not None:
                    self.metrics.not_recovered += 1
            floor = (result.epoch, result.newest)
            peers = self._subs.setdefault(channel, {})
            peers[peer] = floor
            if channel not in self._positions:
                self._positions[channel] = floor
            for pub in buffer:
                if pub.epoch == floor[0] and pub.offset <= floor[1]:
                    continue
                text = pub.text if peer.resume else (pub.plain or _plain(pub.text))
                peer.post(text)
                peers[peer] = (pub.epoch, pub.offset)

    def _unsubscribe(self, peer: Peer, channel: str) -> None:
        with self._lock:
            self._forget(peer, channel)

    def _forget(self, peer: Peer, channel: str) -> None:
        peers = self._subs.get(channel)
        if peers is not None:
            peers.pop(peer, None)
            if not peers:
                del self._subs[channel]
                self._positions.pop(channel, None)

    def _drop_peer(self, peer: Peer) -> None:
        """A connection ended: remove it from every channel."""
        with self._lock:
            for channel in [c for c, peers in self._subs.items() if peer in peers]:
                self._forget(peer, channel)

    def _is_subscribed(self, peer: Peer, channel: str) -> bool:
        with self._lock:
            return peer in self._subs.get(channel, {})

    # Sessions and delivery

    def _new_owner(self) -> str:
        return f"{self.node}/{next(self._owners)}"

    def _hello(self, sid: str) -> int:
        try:
            self.start()
            acked = self.store.hello(sid)
        except StoreUnavailable:
            self.metrics.store_errors += 1
            raise
        with self._lock:
            self._live[sid] = self._live.get(sid, 0) + 1
        return acked

    def _goodbye(self, sid: str) -> None:
        with self._lock:
            left = self._live.get(sid, 0) - 1
            if left > 0:
                self._live[sid] = left
            else:
                self._live.pop(sid, None)
        try:
            self.store.goodbye(sid)
        except StoreUnavailable:
            pass

    def _live_sessions(self) -> List[str]:
        with self._lock:
            return list(self._live)

    def _accept_run(
        self,
        sid: Optional[str],
        owner: str,
        run: Sequence[Message],
        deliver: Optional[Callable[[Message], Any]] = None,
        publish: Optional[Callable[[Message], bool]] = None,
    ) -> Tuple[List[bool], int]:
        """Deliver a run of data envelopes exactly once per ``(session, seq)``.

        Claims the new ``seq`` values, calls ``deliver`` (default
        ``on_message``) for each new message in order, commits the highest.
        With ``broadcast`` each delivered message is also published on its
        channel (between the claim and the commit), unless ``publish(message)``
        says not to.

        Returns:
            For each message whether it was delivered, and the session-wide
            highest ``seq`` to ack (0 when the run had no ``seq``).

        Raises:
            StoreUnavailable: The store could not claim or commit (nothing new
                from this run may be acked).
            _AppError: The application raised; what it accepted before is committed.
        """
        deliver = deliver if deliver is not None else self.on_message
        seqs = [m.seq for m in run if m.seq is not None]
        fresh: List[int] = []
        if seqs:
            assert sid is not None
            try:
                self._settle_broken(sid)
                fresh = self._claim(sid, owner, seqs)
            except StoreUnavailable:
                self.metrics.store_errors += 1
                # The claim may have been made with its reply lost: settle it
                # (nothing delivered) before this session's next claim.
                self._note_broken(sid, owner, 0)
                raise
        pending = deque(fresh)
        flags: List[bool] = []
        done = 0
        try:
            for message in run:
                if message.seq is not None:
                    if not pending or pending[0] != message.seq:
                        flags.append(False)
                        self.metrics.duplicates_dropped += 1
                        continue
                    pending.popleft()
                if deliver is not None:
                    try:
                        deliver(message)
                    except Exception as exc:
                        log.exception("on_message raised: the message is not acked")
                        raise _AppError() from exc
                self.metrics.delivered += 1
                if message.seq is not None:
                    done = message.seq
                flags.append(True)
                if (
                    self.broadcast
                    and isinstance(message.channel, str)
                    and (publish is None or publish(message))
                ):
                    self._publish_copy(message)
        finally:
            if seqs and (done or fresh):
                assert sid is not None
                try:
                    highest = self.store.commit(sid, owner, done)
                except StoreUnavailable:
                    self.metrics.store_errors += 1
                    # Delivered up to ``done`` but not committed: commit it
                    # before this session's next claim on this node, so the
                    # client's resends are duplicates, not redeliveries.
                    self._note_broken(sid, owner, done)
                    raise
        if not seqs:
            return flags, 0
        if not fresh:
            return flags, self.store.highest(sid) if sid is not None else 0
        return flags, highest

    def _note_broken(self, sid: str, owner: str, done: int) -> None:
        with self._lock:
            previous = self._broken.get(sid)
            if previous is None or previous[0] != owner or previous[1] < done:
                self._broken[sid] = (owner, done)

    def _settle_broken(self, sid: str) -> None:
        """Settle the claim a store failure left open on this node, committing what it delivered."""
        if not self._broken:  # the common case, read without the lock
            return
        with self._lock:
            broken = self._broken.get(sid)
        if broken is None:
            return
        self.store.settle(sid, broken[0], broken[1])  # raises StoreUnavailable if still down
        with self._lock:
            if self._broken.get(sid) == broken:
                del self._broken[sid]

    def _claim(self, sid: str, owner: str, seqs: List[int]) -> List[int]:
        # Another owner (the session's old connection, here or on another node)
        # holds a claim: wait for its commit, or for its lease to end if it died.
        fresh = self.store.claim(sid, owner, seqs)
        if fresh is not None:
            return fresh
        waited = threading.Event()
        delay = 0.002
        deadline = time.monotonic() + getattr(self.store, "lease", 5.0) + 5.0
        while True:
            fresh = self.store.claim(sid, owner, seqs)
            if fresh is not None:
                return fresh
            if time.monotonic() > deadline:
                raise StoreUnavailable("the session is claimed by another owner")
            waited.wait(delay)
            delay = min(delay * 2, 0.1)

    def _publish_copy(self, message: Message) -> None:
        envelope: Dict[str, Any] = {"channel": message.channel, "type": "data"}
        for key in ("payload", "id"):
            if key in message.envelope:
                envelope[key] = message.envelope[key]
        self._publish(str(message.channel), envelope)

    def _check_auth(self, token: Any) -> Any:
        if self.auth is None:
            return True
        try:
            return self.auth(token)
        except Exception:
            log.exception("auth callable raised: token refused")
            return False

    # Adapters

    async def serve_websockets(self, ws: Any) -> None:
        """Serve one python-websockets asyncio connection until it closes.

        Use it as (or inside) the handler of ``websockets.asyncio.server.serve``.
        """
        from websockets.exceptions import ConnectionClosed

        async def recv() -> Optional[Data]:
            try:
                data: Data = await ws.recv()
                return data
            except ConnectionClosed:
                return None

        async def send(text: str) -> None:
            try:
                await ws.send(text)
            except ConnectionClosed:
                pass

        async def close(code: int, reason: str) -> None:
            await ws.close(code, reason)

        await self._serve_async(recv, send, close)

    async def serve_asgi(self, websocket: Any) -> None:
        """Serve one Starlette/FastAPI ``WebSocket`` (accepts it first) until it closes."""
        await websocket.accept()

        async def recv() -> Optional[Data]:
            try:
                message = await websocket.receive()
            except Exception:  # Starlette raises once the socket is gone
                return None
            if message.get("type") == "websocket.disconnect":
                return None
            text = message.get("text")
            if text is not None:
                return str(text)
            raw = message.get("bytes")
            return bytes(raw) if raw is not None else ""

        async def send(text: str) -> None:
            try:
                await websocket.send_text(text)
            except Exception:
                log.debug("asgi send failed", exc_info=True)

        async def close(code: int, reason: str) -> None:
            try:
                await websocket.close(code, reason)
            except Exception:
                log.debug("asgi close failed", exc_info=True)

        await self._serve_async(recv, send, close)

    async def _serve_async(
        self,
        recv: Callable[[], Awaitable[Optional[Data]]],
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
    ) -> None:
        loop = asyncio.get_running_loop()
        if not self._started:
            if self.store.blocking:
                await loop.run_in_executor(None, self.start)
            else:
                self.start()
        peer = _AsyncPeer(loop)
        conn = _Connection(self, peer)
        writer = loop.create_task(_write_loop(peer, send))
        verdict: Optional[Tuple[int, str]] = None
        try:
            # With a store that does I/O the whole batch runs on a worker
            # thread: one hop per batch, not per message.
            verdict = await serve_batches(
                conn, recv, offload=self.store.blocking or self.auth is not None
            )
        finally:
            conn.ended()
            peer.finish()
            try:
                await asyncio.wait_for(asyncio.shield(writer), 5.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                writer.cancel()
            if verdict is not None:
                await close(*verdict)

    def serve_sync(self, ws: Any) -> None:
        """Serve one blocking connection on the calling thread until it closes.

        Works with ``websockets.sync.server`` connections (``recv``/``send``)
        and Flask-Sock / simple-websocket ones (``receive``/``send``).
        """
        self.start()
        simple = not hasattr(ws, "recv") and hasattr(ws, "receive")
        # Frames go out through one writer thread, so posting (under the hub's
        # lock, from any thread) never waits for a slow client.
        peer = _SyncPeer(ws.send)
        writer = threading.Thread(target=peer.run, name="tether-hub-writer", daemon=True)
        writer.start()
        conn = _Connection(self, peer)
        verdict: Optional[Tuple[int, str]] = None
        try:
            while verdict is None:
                first = _sync_recv(ws, simple, None)
                if first is None:
                    break
                batch = [first]
                while len(batch) < _INBOX_LIMIT:
                    more = _sync_recv(ws, simple, 0)
                    if more is None:
                        break
                    batch.append(more)
                verdict = conn.process(batch)
        finally:
            conn.ended()
            peer.finish()
            writer.join(5.0)
            if verdict is not None:
                try:
                    if simple:
                        ws.close(reason=verdict[0], message=verdict[1])
                    else:
                        ws.close(*verdict)
                except Exception:
                    log.debug("sync close failed", exc_info=True)


_INBOX_LIMIT = 256
#: Rule 5: an ack goes at once when this many messages are unacked.
ACK_EVERY = 64
_END = object()


class _AsyncPeer(Peer):
    """A peer on an event loop: frames queue for the connection's writer task."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.alive = True

    def post(self, text: str) -> bool:
        if not self.alive:
            return False
        if threading.get_ident() == self.thread:
            self.queue.put_nowait(text)
        else:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, text)
            except RuntimeError:  # the loop is closed
                return False
        return True

    def finish(self) -> None:
        self.alive = False
        self.queue.put_nowait(_END)


async def _write_loop(peer: _AsyncPeer, send: Callable[[str], Awaitable[None]]) -> None:
    while True:
        item = await peer.queue.get()
        if item is _END:
            return
        await send(item)


class _SyncPeer(Peer):
    """A peer on a blocking connection: frames queue for its writer thread (:meth:`run`)."""

    def __init__(self, send: Callable[[str], Any]) -> None:
        self.send = send
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.alive = True

    def post(self, text: str) -> bool:
        if not self.alive:
            return False
        self.queue.put(text)
        return True

    def finish(self) -> None:
        self.alive = False
        self.queue.put(_END)

    def run(self) -> None:
        """The writer thread: send queued frames in order until :meth:`finish`."""
        while True:
            item = self.queue.get()
            if item is _END:
                return
            try:
                self.send(item)
            except Exception:  # the connection is gone: drain until finish()
                self.alive = False


def _sync_recv(ws: Any, simple: bool, timeout: Optional[float]) -> Optional[Data]:
    """One frame, or None when closed (or, with ``timeout=0``, none waiting)."""
    try:
        if simple:
            data: Optional[Data] = ws.receive(timeout=timeout)
            return data
        received: Data = ws.recv(timeout=timeout)
        return received
    except TimeoutError:
        return None
    except Exception as exc:  # ConnectionClosed of either library
        if timeout is None or "Closed" in type(exc).__name__:
            return None
        raise


async def serve_batches(
    conn: _Connection,
    recv: Callable[[], Awaitable[Optional[Data]]],
    *,
    offload: bool,
    limit: int = 256,
) -> Optional[Tuple[int, str]]:
    """Feed what ``recv`` reads to ``conn`` in batches until the peer is gone.

    Frames are read while the previous batch is being handled, so that
    everything that arrived meanwhile is handled (and stored, and acked) as
    one batch. Reading stops while ``limit`` frames wait (backpressure).

    Args:
        conn: The connection's driver.
        recv: Returns the next frame, or None once the connection is closed.
        offload: Handle each batch on a worker thread (a store that does I/O).
        limit: Frames read ahead at most.

    Returns:
        The close ``(code, reason)`` the connection must end with, or None.
    """
    loop = asyncio.get_running_loop()
    inbox: Deque[Data] = deque()
    wake = asyncio.Event()
    room = asyncio.Event()
    room.set()
    ended = False

    async def reader() -> None:
        nonlocal ended
        try:
            while True:
                await room.wait()
                data = await recv()
                if data is None:
                    break
                inbox.append(data)
                if len(inbox) >= limit:
                    room.clear()  # backpressure: stop reading until handled
                wake.set()
        finally:
            ended = True
            wake.set()

    reading = loop.create_task(reader())
    try:
        while True:
            await wake.wait()
            wake.clear()
            if not inbox:
                if ended:
                    return None
                continue
            batch = list(inbox)
            inbox.clear()
            room.set()
            if offload:
                verdict = await loop.run_in_executor(None, conn.process, batch)
            else:
                verdict = conn.process(batch)
            if verdict is not None:
                return verdict
            await conn.settle()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reading


class _Connection:
    """Drives the :class:`ServerProtocol` of one connection against the hub.

    Every adapter uses it as is; the bundled server subclasses it for what
    only it does (records, latency, fault controls), through the hooks
    :meth:`reply`, :meth:`received`, :meth:`delivered`, :meth:`control`,
    :meth:`authenticate` and :meth:`ack_later`.

    Acks (rule 5): one cumulative ``tether:ack`` at once when ``ACK_EVERY``
    messages with a ``seq`` are unacked, else :meth:`ack_later` at the end of
    the batch (here: at once, so one ack covers each batch).
    """

    #: Echo accepted data to its sender when it is not published to it (the
    #: reference server's echo; the bundled server's behaviour).
    echo = False

    def __init__(self, hub: Hub, peer: Peer, proto: Optional[ServerProtocol] = None) -> None:
        self.hub = hub
        self.peer = peer
        self.proto = (
            proto if proto is not None else ServerProtocol(require_auth=hub.auth is not None)
        )
        self.owner = hub._new_owner()
        # Messages with a seq handled since the last ack; the highest the
        # last commit reported (what a remote store's ack carries).
        self.unacked = 0
        self.highest = 0

    # Hooks

    def reply(self, text: str) -> None:
        """Send a reply (pong, hello-ok, auth-ok, error, echo, ack) to the client."""
        self.peer.post(text)

    def reply_many(self, texts: List[str]) -> None:
        """Send several replies (a run's echoes), in order."""
        for text in texts:
            self.reply(text)

    def received(self, frame: Frame, duplicate: bool) -> None:
        """A frame was handled (``duplicate``: its seq was not new); before its replies."""

    def received_run(self, handled: List[Tuple[Frame, bool]]) -> None:
        """A run of data frames was handled (with its duplicate flags); before any reply of it."""
        for frame, duplicate in handled:
            self.received(frame, duplicate)

    def delivered(self, message: Message) -> None:
        """A new message, between its claim and its commit (default: ``on_message``)."""
        on_message = self.hub.on_message
        if on_message is not None:
            on_message(message)

    def control(self, message: Dict[str, Any]) -> None:
        """Run a ``tether:control`` (only a protocol with ``controls=True`` asks)."""

    def authenticate(self, token: Any) -> Any:
        """The verdict on a token: True, False or an expiry (seconds since the epoch)."""
        return self.hub._check_auth(token)

    def ack_later(self) -> None:
        """Some messages are unacked at the end of a batch: ack them (here: now)."""
        self.send_ack()

    async def settle(self) -> None:
        """Awaited after each batch on the event loop (the bundled server's backpressure)."""

    # Driving

    def process(self, batch: Sequence[Data]) -> Optional[Tuple[int, str]]:
        """Handle a batch of frames in order; returns a close ``(code, reason)`` or None."""
        run: List[Tuple[Frame, Deliver]] = []
        # Rule 5: an ack at once at the 64th unacked. In one process a run
        # ends there; with a store on the network a whole batch is one run
        # (one claim, one commit: the store's round trips are what cost), and
        # its ack goes as soon as the run is committed.
        cap = _INBOX_LIMIT if self.hub.store.blocking else ACK_EVERY
        try:
            for data in batch:
                frame = self.proto.parse(data)
                events = self.proto.decide(frame)
                if len(events) == 1 and isinstance(events[0], Deliver):
                    run.append((frame, events[0]))
                    if len(run) >= cap:
                        self._flush(run)
                        run = []
                    continue
                if run:
                    self._flush(run)
                    run = []
                self.received(frame, False)
                for event in events:
                    self._do(event)
            if run:
                self._flush(run)
        except StoreUnavailable:
            log.warning("store unavailable: closing the connection with 1011, nothing more acked")
            self._ack_committed()
            return (1011, "store unavailable")
        except _AppError:
            self._ack_committed()
            return (1011, "application error")
        if self.unacked:
            self.ack_later()
        return None

    def _ack_committed(self) -> None:
        # What earlier runs of the batch committed is acked before the close.
        if self.unacked and self.proto.session is not None:
            self.send_ack()

    def send_ack(self) -> None:
        """Send the cumulative ``tether:ack`` now (rule 5)."""
        self.unacked = 0
        sid = self.proto.session
        if sid is None:
            return
        # One process: the session-wide highest (another connection of the
        # session may have raised it). A remote store: the highest its last
        # commit for this connection reported, so no round trip per ack.
        store = self.hub.store
        highest = self.highest if store.blocking else store.highest(sid)
        self.reply(ServerProtocol.ack(highest).text)

    def _do(self, event: Event) -> None:
        hub, peer, proto = self.hub, self.peer, self.proto
        if isinstance(event, Send):
            self.reply(event.text)
        elif isinstance(event, Hello):
            acked = hub._hello(event.session)
            peer.resume = False
            text = proto.hello_ok(acked).text
            self.highest = acked
            peer.resume = proto.resume_on
            self.attached()
            log.info("hello, features %s, acked %d", list(proto.granted), acked)
            self.reply(text)
        elif isinstance(event, Auth):
            self.reply(proto.auth_result(self.authenticate(event.token)).text)
        elif isinstance(event, Subscribe):
            self.subscribed(event.channel, True)
            hub._subscribe(peer, event.channel, event.epoch, event.offset, event.answer)
        elif isinstance(event, Unsubscribe):
            self.subscribed(event.channel, False)
            hub._unsubscribe(peer, event.channel)
        elif isinstance(event, Control):
            self.control(event.message)

    def subscribed(self, channel: str, on: bool) -> None:
        """The connection subscribes to (or leaves) ``channel`` (a hook; before the hub knows)."""

    def attached(self) -> None:
        """A hello was accepted (``proto.session`` is set); before ``hello-ok`` goes out."""

    def _flush(self, run: List[Tuple[Frame, Deliver]]) -> None:
        hub = self.hub
        messages = [event.message for _, event in run]
        flags, highest = hub._accept_run(
            self.proto.session, self.owner, messages, self.delivered, _not_a_control(run)
        )
        self.highest = max(self.highest, highest)
        self.received_run([(frame, not delivered) for (frame, _), delivered in zip(run, flags)])
        # Echoes go out together (reply_many), before a control of the run acts.
        echoes: List[str] = []
        for (_, event), delivered in zip(run, flags):
            if delivered:
                message = event.message
                if event.control:
                    if echoes:
                        self.reply_many(echoes)
                        echoes = []
                    self.control(message.payload)
                elif self.echo or hub.broadcast:
                    channel = message.channel
                    if not (
                        hub.broadcast
                        and isinstance(channel, str)
                        and hub._is_subscribed(self.peer, channel)
                    ):
                        echoes.append(_echo(message))
            if event.message.seq is not None:
                self.unacked += 1
        if echoes:
            self.reply_many(echoes)
        if self.unacked >= ACK_EVERY:
            self.send_ack()

    def ended(self) -> None:
        """The connection is gone: leave every channel and the session."""
        self.hub._drop_peer(self.peer)
        if self.proto.session is not None:
            self.hub._goodbye(self.proto.session)


def _not_a_control(run: List[Tuple[Frame, Deliver]]) -> Optional[Callable[[Message], bool]]:
    """The ``publish`` filter of a run: None when no envelope of it tunnels a control."""
    controls = {id(event.message) for _, event in run if event.control}
    if not controls:
        return None
    return lambda message: id(message) not in controls


def _echo(message: Message) -> str:
    echo: Dict[str, Any] = {"channel": message.channel, "type": "data"}
    for key in ("payload", "id"):
        if key in message.envelope:
            echo[key] = message.envelope[key]
    return encode_parsed(echo)


def _plain(text: str) -> str:
    """The §3 envelope of a numbered one: the same without ``offset`` and ``epoch``."""
    envelope = json.loads(text)
    envelope.pop("offset", None)
    envelope.pop("epoch", None)
    return encode(envelope)
