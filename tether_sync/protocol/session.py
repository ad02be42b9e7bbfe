"""One connection's whole protocol, sans I/O (DESIGN §4).

A :class:`Session` lives from "handshake done" to "closed". Bytes go in
(:meth:`Session.receive_data`, :meth:`Session.receive_eof`), bytes come out
(:meth:`Session.data_to_send`, acknowledged with :meth:`Session.sent`), events
come out (:meth:`Session.events`), and time moves only when the caller says so
(:meth:`Session.next_deadline`, :meth:`Session.on_deadline` with ``now``). It
owns the auth gate, the heartbeat, the closing handshake, the classification
of inbound frames and the reliable-sessions extension of DESIGN §5 (``hello``,
``seq``, acks, channel offsets). It imports no ``threading``, ``socket``,
``selectors`` or ``time``: tests script it with frames and a fake clock, after
python-websockets' ``Protocol``.

The loop (``loop.py``) is what is left: it moves bytes between this object and
the socket, hands events to the application, and owns everything that outlives
one connection (the queue, backoff, subscriptions). Whatever outlives a
connection but belongs to the protocol (the session id and the last ``seq``,
the last offset seen per channel) lives in a :class:`Continuity` that the loop
hands to each new session.

Nothing is taken on trust (DESIGN §5 rule 12): an ack or a ``hello-ok``
``acked`` must be an integer from 0 to the highest ``seq`` numbered so far
(``Continuity.last_seq``, which a durable outbox seeds from its file); a
session id and an epoch strings of 1 to 64 characters; an envelope's offset an
integer >= 1 (a ``tether:subscribed`` offset >= 0: an empty channel). A lie
fails the link with 1002 and a :class:`Problem` carrying a ``ProtocolError``,
resolves nothing, and nothing the peer sends after it on that link counts but
its close frame. A ``tether:subscribed`` that comes again while subscribed
(rule 13) raises :class:`Recovery` when it says ``recovered: false``.

Heartbeat (DESIGN §1): a ping goes out ``interval`` after the link opened, or
after the previous ping was answered. Its pong deadline is fixed when it is
sent and is never pushed by a later ping, so any ``(interval, timeout)`` pair
detects a dead peer within ``interval + timeout``. Liveness counts whole
messages, not bytes: a peer that trickles a never-ending frame is dead.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Protocol, Sequence, Tuple, Union

from ..exceptions import AuthError, ProtocolError, ServerError, TetherError
from . import envelope, frames
from .deflate import DeflateParams, PerMessageDeflate
from .token_expiry import refresh_at
from .writebuf import Item, WriteBuffer

log = logging.getLogger("tether_sync")

CLOSE_GRACE = 1.0  # seconds to wait for the peer's close frame after ours (RFC 6455 §7.1.1)
HEARTBEAT_CLOSE_GRACE = 0.25  # seconds; after a missing pong the peer is presumed gone
HEARTBEAT_CLOSE = (4000, "Heartbeat timeout")
LARGE_MESSAGE = 64 * 1024  # bytes; without acks, such a message is confirmed by a ping barrier
FEATURES = ("ack", "resume")
MAX_ID_LENGTH = 64  # characters: the most a session id or an epoch may have (DESIGN §5)


class Phase(enum.Enum):
    """Where one connection stands."""

    HELLO = "hello"
    """``tether:hello`` sent; waiting for the reply that decides the extension."""
    AUTH = "auth"
    """The token is being fetched or its ``auth-ok`` awaited."""
    OPEN = "open"
    """The link is usable: data flows."""
    CLOSING = "closing"
    """Our close frame is out; waiting for the peer's."""
    CLOSED = "closed"
    """Over: a :class:`Closed` event was emitted."""


ALLOWED: Dict[Phase, frozenset[Phase]] = {
    Phase.HELLO: frozenset({Phase.AUTH, Phase.OPEN, Phase.CLOSING, Phase.CLOSED}),
    Phase.AUTH: frozenset({Phase.OPEN, Phase.CLOSING, Phase.CLOSED}),
    Phase.OPEN: frozenset({Phase.CLOSING, Phase.CLOSED}),
    Phase.CLOSING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}
"""For each phase, the phases it may change to."""


class UniformRng(Protocol):
    """The part of :class:`random.Random` the session needs (refresh retries)."""

    def uniform(self, a: float, b: float) -> float: ...


# ---------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """What a session needs to know, already validated.

    Attributes:
        protocol: ``"tether"`` or ``"raw"``.
        heartbeat: ``(interval, timeout)`` in seconds, or None.
        max_message_size: Bytes; a bigger inbound message fails the link with 1009.
        auth: Whether a token gates the link (protocol ``tether``) or is rotated
            in band (protocol ``raw`` with an ``Auth.message`` builder).
        auth_timeout: Seconds for one token fetch plus the server's answer.
        refresh_before: Seconds before expiry at which the token is rotated.
        extensions: The §5 features to ask for (protocol ``tether`` only).
        deflate: The permessage-deflate parameters agreed in the handshake
            (RFC 7692), or None: the connection runs uncompressed.
    """

    protocol: str = "tether"
    heartbeat: Optional[Tuple[float, float]] = (15.0, 5.0)
    max_message_size: int = 16 * 2**20
    auth: bool = False
    auth_timeout: float = 20.0
    refresh_before: float = 60.0
    extensions: Tuple[str, ...] = FEATURES
    deflate: Optional[DeflateParams] = None


@dataclasses.dataclass
class Position:
    """The last envelope seen on a channel (DESIGN §5 resume)."""

    epoch: Optional[str]
    offset: int


@dataclasses.dataclass
class Continuity:
    """What outlives one connection but belongs to the protocol.

    Owned by the loop (I/O thread), handed to every new :class:`Session`.

    Attributes:
        session_id: The §5 session id, kept for the client's whole life.
        last_seq: The highest ``seq`` given to a message so far.
        positions: Channel -> the last ``(epoch, offset)`` seen on it.
        subscribed: Channels that asked to resume on this connection (rule 10).
    """

    session_id: str
    last_seq: int = 0
    positions: Dict[str, Position] = dataclasses.field(default_factory=dict)
    resent: int = 0  # messages written again on a later link (for stats)


# ---------------------------------------------------------------- events out


@dataclasses.dataclass(frozen=True)
class Opened:
    """The link is usable (the token, if any, was accepted): subscribe, then drain."""

    features: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TokenNeeded:
    """Fetch a token (off the I/O thread) and answer with :meth:`Session.token_ready`."""

    force: bool


@dataclasses.dataclass(frozen=True)
class AuthAccepted:
    """The server accepted a token (the first one of the link, or a rotation)."""

    expires_at: Optional[float]


@dataclasses.dataclass(frozen=True)
class AuthTrouble:
    """No token could be had, or the server did not answer in time; ``final`` ends the client."""

    error: BaseException
    final: bool = False


class Received:
    """Inbound application messages, in order: ``(channel, payload)`` pairs.

    ``channel`` is None for frames that are no Tether message. Consecutive
    messages share one event (the hot path: one event per read, not per message).
    """

    __slots__ = ("items",)

    def __init__(self, items: List[Tuple[Optional[str], Any]]) -> None:
        self.items = items

    def __repr__(self) -> str:
        return f"Received({len(self.items)} messages)"


class Written:
    """Messages whose frames the kernel took (done, where no ack is awaited).

    Hot path: a plain slotted class, cheaper to make than a frozen dataclass.
    """

    __slots__ = ("items",)

    def __init__(self, items: List[Item]) -> None:
        self.items = items

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.items)} messages)"


class Acked(Written):
    """Messages the server acknowledged (the ``ack`` extension, or a ping barrier)."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class Refused:
    """Messages that must not be resent: the server refused them."""

    items: List[Item]
    error: BaseException


@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """A heartbeat pong arrived: ``rtt`` seconds after its ping."""

    rtt: float


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something the application should hear about (an ``error`` event); the link goes on
    unless a :class:`Closed` follows."""

    error: BaseException


@dataclasses.dataclass(frozen=True)
class Recovery:
    """What was missed on ``channel`` cannot be recovered: the answer to a resubscribe
    (rule 10), or a server node that lost its position while subscribed (rule 13)."""

    channel: str
    recovered: bool
    epoch: Optional[str]
    offset: int


@dataclasses.dataclass(frozen=True)
class Closed:
    """The connection is over; the socket can be closed. Always the last event.

    Attributes:
        code, reason, was_clean: For the ``close`` event.
        error: Set when the close must end the client (a final auth refusal).
    """

    code: int
    reason: str
    was_clean: bool
    error: Optional[BaseException] = None


Event = Union[
    Opened,
    TokenNeeded,
    AuthAccepted,
    AuthTrouble,
    Received,
    Written,
    Acked,
    Refused,
    RoundTrip,
    Problem,
    Recovery,
    Closed,
]


# ---------------------------------------------------------------- the session


class Session:
    """The protocol of one connection (see the module docstring).

    Args:
        config: The options.
        continuity: State kept across connections (session id, ``seq``, offsets).
        now: Monotonic seconds at the end of the handshake.
        wall_offset: ``wall - monotonic`` seconds, for ping timestamps and token
            expiry (wall-clock values), so the session needs one clock only.
        keys: Mask keys (drawn in bulk).
        rng: For full-jitter retries of a failed token refresh.
    """

    def __init__(
        self,
        config: SessionConfig,
        continuity: Continuity,
        now: float,
        *,
        wall_offset: float = 0.0,
        keys: Optional[frames.MaskKeys] = None,
        rng: Optional[UniformRng] = None,
    ) -> None:
        self.config = config
        self.continuity = continuity
        self.phase = Phase.HELLO
        self._wall_offset = wall_offset
        self._rng = rng
        # permessage-deflate: one codec per connection, its context kept both ways;
        # inflating is bounded by max_message_size (a bomb fails with 1009).
        codec = PerMessageDeflate(config.deflate) if config.deflate is not None else None
        self._parser = frames.FrameParser(
            config.max_message_size, inflate=codec.decode if codec is not None else None
        )
        self._out = WriteBuffer(keys if keys is not None else frames.MaskKeys(), codec)
        self._events: List[Event] = []
        self.features: Tuple[str, ...] = ()
        self._ext_pending = False  # hello sent, its reply not decided yet
        self._ack = False  # "ack" granted: deliveries wait for tether:ack
        self._resume = False
        self._unacked: List[Item] = []  # written, awaiting ack (seq order)
        self._resend: List[Item] = []  # carried over from earlier connections
        self._resend_due = False  # open, and the carried messages not framed yet
        self._barrier: Deque[Tuple[int, List[Item]]] = deque()  # (ping ts, large items)
        self._asked_resume: set[str] = set()
        self._answered: set[str] = set()  # channels a tether:subscribed came for (rule 13)
        self.messages_in = 0  # whole inbound messages (liveness)
        self._violated = False  # the peer broke RFC 6455 (reported once)
        self._lied = False  # the peer broke a §5 rule 12 check: nothing more it says counts
        self.resent = 0  # messages carried over from an earlier link and written again
        self.reading_paused = False  # set by the loop while a "block" consumer is full
        self.delivered_something = False  # the peer confirmed or sent application data
        # Auth.
        self._auth_busy = False
        self._auth_deadline: Optional[float] = None
        self._auth_refused = 0
        self._pending_exp: Optional[float] = None
        self._refresh_at: Optional[float] = None
        self._refresh_failures = 0
        self.expires_at: Optional[float] = None
        # Heartbeat.
        self._ping_due: Optional[float] = None
        self._ping: Optional[Tuple[Any, float, int]] = None  # (ts, sent at, messages_in then)
        self._pong_deadline: Optional[float] = None
        self._ping_serial = 0  # numbers the barrier pings (their ts is -serial)
        self._last_ping_ts = 0
        self._hello_deadline: Optional[float] = None
        self._hello_ping: Optional[int] = None  # ts of the ping that follows the hello
        # Closing.
        self._close_deadline: Optional[float] = None
        self._closing: Tuple[int, str] = (1000, "")
        self._closing_error: Optional[BaseException] = None
        self._closing_clean_ok = True  # whether a peer's answer makes the close clean
        self._start_now = now

    # ------------------------------------------------------------ phase

    def _set_phase(self, new: Phase) -> None:
        if new not in ALLOWED[self.phase]:
            raise RuntimeError(f"invalid phase transition {self.phase.value} -> {new.value}")
        self.phase = new

    @property
    def closed(self) -> bool:
        """Whether the :class:`Closed` event was emitted (a method, so type checkers
        do not narrow ``phase`` across the handlers that change it)."""
        return self.phase is Phase.CLOSED

    @property
    def is_open(self) -> bool:
        return self.phase is Phase.OPEN

    @property
    def ack_enabled(self) -> bool:
        return self._ack

    # ------------------------------------------------------------ start

    def start(
        self,
        now: float,
        *,
        resend: Sequence[Item] = (),
        force_token: bool = False,
        header_expiry: Optional[float] = None,
    ) -> None:
        """Begin the protocol on a fresh link.

        Args:
            resend: Messages written on an earlier connection and never acked, in
                ``seq`` order; resent (or resolved by ``hello-ok``) before the queue.
            force_token: The first token must be a fresh one (``refresh_auth()``
                was called while offline, or the last one was refused).
            header_expiry: Protocol ``raw``: the expiry of the token the handshake
                header carried (it counts as accepted).
        """
        self._resend = list(resend)
        cfg = self.config
        if cfg.protocol == "tether" and cfg.extensions:
            self._ext_pending = True
            self._send_text(
                envelope.encode_json(
                    {
                        "type": "tether:hello",
                        "session": self.continuity.session_id,
                        "features": list(cfg.extensions),
                    }
                )
            )
        if cfg.protocol == "tether" and cfg.auth:
            self._set_phase(Phase.AUTH)
            self._request_token(now, force_token)
            return
        if self._ext_pending:
            # Rule 3: no auth, so a ping right after the hello decides (in order).
            # The deadline is only a safety net for peers that answer nothing.
            self._hello_ping = self._send_ping(now)
            self._hello_deadline = now + self.config.auth_timeout
            return
        self._open(now)
        if header_expiry is not None:
            self._accepted(header_expiry, now)

    def _request_token(self, now: float, force: bool) -> None:
        self._auth_busy = True
        self._auth_deadline = now + self.config.auth_timeout
        self._events.append(TokenNeeded(force))

    def _open(self, now: float) -> None:
        self._set_phase(Phase.OPEN)
        self._ext_pending = False
        hb = self.config.heartbeat
        if hb is not None:
            self._ping_due = now + hb[0]
        self._events.append(Opened(self.features))
        # Resends go out after the subscriptions the loop announces on Opened
        # (DESIGN §5 order): framed by the next send() or data_to_send().
        self._resend_due = bool(self._resend)

    def _write_resends(self) -> None:
        self._resend_due = False
        if self._resend and self.phase is Phase.OPEN:
            items, self._resend = self._resend, []
            self.resent = len(items)
            self.continuity.resent += len(items)
            self._write_items(items, resend=True)

    # ------------------------------------------------------------ bytes in

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the socket."""
        if self.phase is Phase.CLOSED:
            return
        error: Optional[frames.FrameProtocolError] = None
        try:
            messages = self._parser.feed(data)
        except frames.FrameProtocolError as exc:
            # Deliver what arrived intact before the violation, then fail the link
            # with the code the violation calls for (RFC 6455 §7.1.7).
            error, messages = exc, exc.messages
        self.messages_in += len(messages)
        if self.config.protocol == "tether":
            self._receive_tether(messages, now)
        else:
            self._receive_raw(messages, now)
        if error is not None and not self.closed:
            if self._violated:
                return  # the parser is dead: later bytes repeat the first violation
            self._violated = True
            log.warning("protocol error: %s", error)
            self._events.append(Problem(error))
            self.fail(error.close_code, str(error)[:100], now)

    def _receive_tether(self, messages: List[Tuple[int, Any]], now: float) -> None:
        # The hot path: a text frame is parsed once, and a plain data envelope (no
        # offset) goes straight into the open Received run, without an object of
        # its own; everything else takes the general path, in order, and ends the
        # run. Only the general path can close the session: nothing is handled after.
        if self._lied:
            self._after_lie(messages, None)
            return
        loads = envelope.loads
        errors = envelope.DECODE_ERRORS
        op_text = frames.OP_TEXT
        closed = Phase.CLOSED
        run: Optional[List[Tuple[Optional[str], Any]]] = None
        for opcode, payload in messages:
            if opcode == op_text:
                try:
                    msg = loads(payload)
                except errors:
                    decoded: envelope.Inbound = envelope.Unknown(payload)
                else:
                    kind = msg.get("type") if type(msg) is dict else None
                    if kind == "data" and msg.get("offset") is None and "channel" in msg:
                        channel = msg["channel"]
                        if run is None:
                            run = []
                            self._events.append(Received(run))
                            self.delivered_something = True
                        run.append(
                            (channel if type(channel) is str else str(channel), msg.get("payload"))
                        )
                        continue
                    if kind == "tether:ack":
                        # A bulk send's other hot path: straight to the extension,
                        # without classify() and the general dispatch on the way.
                        self._on_extension(msg, now)
                        run = None
                        if self._lied:
                            self._after_lie(messages, payload)
                            return
                        continue
                    decoded = envelope.classify(msg)
                self._on_decoded(decoded, payload, now)
            else:
                self._on_message(opcode, payload, now)
            run = None
            if self.phase is closed:
                return
            if self._lied:
                self._after_lie(messages, payload)
                return

    def _after_lie(self, messages: List[Tuple[int, Any]], last: Any) -> None:
        """Rule 12: once the peer lied, only its close frame still counts.

        ``messages`` is the read being handled and ``last`` the payload handled
        last (None: none of them was); whatever follows it in the read is skipped,
        except a close frame, which completes the closing handshake.
        """
        start = 0
        if last is not None:
            for i, (_, payload) in enumerate(messages):
                if payload is last:
                    start = i + 1
                    break
        for opcode, payload in messages[start:]:
            if opcode == frames.OP_CLOSE and not self.closed:
                self._on_close_frame(payload)

    def _receive_raw(self, messages: List[Tuple[int, Any]], now: float) -> None:
        # Protocol raw: every data frame goes to channel "default" (the hot path
        # skips the general dispatch); control frames take the general path.
        closed = Phase.CLOSED
        for opcode, payload in messages:
            if self.phase is closed:
                return
            if opcode == frames.OP_TEXT or opcode == frames.OP_BINARY:
                self.delivered_something = True
                self._received("default", payload)
            else:
                self._on_message(opcode, payload, now)

    def receive_eof(self, now: float) -> None:
        """The peer closed the TCP connection (or it broke)."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.CLOSING:
            code, reason = self._closing
            self._closed(code, reason, False)
            return
        self._closed(1006, "connection closed without a close frame", False)

    def _on_message(self, opcode: int, payload: Any, now: float) -> None:
        if opcode == frames.OP_TEXT or opcode == frames.OP_BINARY:
            if self.config.protocol == "raw":
                self.delivered_something = True
                self._received("default", payload)
            else:
                self._on_tether(payload, now)
        elif opcode == frames.OP_PING:
            self._send_frame(frames.OP_PONG, payload)
        elif opcode == frames.OP_PONG:
            if self.config.protocol == "raw":
                self._on_pong(payload, now)
        elif opcode == frames.OP_CLOSE:
            self._on_close_frame(payload)

    def _on_tether(self, payload: Any, now: float) -> None:
        self._on_decoded(envelope.decode(payload), payload, now)

    def _on_decoded(self, msg: envelope.Inbound, payload: Any, now: float) -> None:
        kind = type(msg)
        if kind is envelope.Data:
            assert isinstance(msg, envelope.Data)
            self._on_data(msg, payload, now)
        elif kind is envelope.Pong:
            assert isinstance(msg, envelope.Pong)
            self._on_pong(msg.ts, now)
        elif kind is envelope.Ping:
            assert isinstance(msg, envelope.Ping)
            self._send_text(_pong_text(msg.ts))
        elif kind is envelope.AuthOk:
            assert isinstance(msg, envelope.AuthOk)
            self._decide_extension(None, 0, now)
            self._on_auth_ok(msg.ok, now)
        elif kind is envelope.ServerErrorMsg:
            assert isinstance(msg, envelope.ServerErrorMsg)
            self._decide_extension(None, 0, now)
            self._on_server_error(msg)
        else:
            value = msg.value if isinstance(msg, envelope.Unknown) else payload
            if not self._on_extension(value, now):
                # Not ours to interpret: the message stream gets the frame unchanged.
                self._received(None, payload)

    def _on_data(self, msg: envelope.Data, raw: Any, now: float) -> None:
        offset = msg.offset
        if self._resume and offset is not None:
            # Rule 12: with resume granted, a position must be one (it decides drops).
            problem = _position_problem(offset, msg.epoch)
            if problem is not None:
                self._lie(f"a data envelope's {problem}", now)
                return
        channel = msg.channel if isinstance(msg.channel, str) else str(msg.channel)
        self.delivered_something = True
        if type(offset) is int:
            epoch = msg.epoch if isinstance(msg.epoch, str) else None
            positions = self.continuity.positions
            last = positions.get(channel)
            if last is not None and last.epoch == epoch and offset <= last.offset:
                log.debug("dropping %s offset %d: already seen", channel, offset)
                return
            positions[channel] = Position(epoch, offset)
        self._received(channel, msg.payload)

    def _received(self, channel: Optional[str], payload: Any) -> None:
        events = self._events
        if events and type(events[-1]) is Received:
            events[-1].items.append((channel, payload))
        else:
            events.append(Received([(channel, payload)]))

    def _on_server_error(self, msg: envelope.ServerErrorMsg) -> None:
        log.warning("server refused message %r: %s", msg.id, msg.error)
        error = ServerError(msg.error, msg.id)
        # Rule 6: a refused message is failed and never resent.
        if msg.id is not None:
            tracked = [*self._unacked, *(i for _, items in self._barrier for i in items)]
            for item in tracked:
                if item.id == msg.id:
                    self._drop_tracked(item)
                    self._events.append(Refused([item], error))
                    break
        self._events.append(Problem(error))

    def _drop_tracked(self, item: Item) -> None:
        try:
            self._unacked.remove(item)
        except ValueError:
            pass
        self._out.forget(item)
        for _, held in self._barrier:
            if item in held:
                held.remove(item)

    # ------------------------------------------------------------ extension (§5)

    def _on_extension(self, value: Any, now: float) -> bool:
        """Handle ``hello-ok``, ``ack`` and ``subscribed``; False if ``value`` is none."""
        if type(value) is not dict:
            return False
        kind = value.get("type")
        if kind == "tether:ack":  # first: the one that comes in bulk
            if self._ack:
                seq = value.get("seq")
                if type(seq) is int and 0 <= seq <= self.continuity.last_seq:
                    self._on_ack(seq)
                else:
                    self._lie(f"tether:ack seq {_seq_problem(seq, self.continuity.last_seq)}", now)
            return True
        if kind == "tether:hello":
            # Our own hello came back: an echo server, no extension.
            self._decide_extension(None, 0, now)
            return False
        if kind == "tether:hello-ok":
            if not self._ext_pending:
                return True
            cont = self.continuity
            problem = _hello_ok_problem(value, cont.last_seq, cont.session_id)
            if problem is not None:
                self._lie(f"tether:hello-ok {problem}", now)
                return True
            features = value["features"]
            granted = tuple(f for f in self.config.extensions if f in features)
            self._decide_extension(granted, value["acked"], now)
            return True
        if kind == "tether:subscribed":
            self._on_subscribed(value, now)
            return True
        return False

    def _decide_extension(
        self, granted: Optional[Tuple[str, ...]], acked: int = 0, now: float = 0.0
    ) -> None:
        """The reply that decides the extension arrived (hello-ok, or a later reply)."""
        if not self._ext_pending:
            return
        self._ext_pending = False
        self._hello_deadline = None
        if granted is None:
            log.debug("server does not speak the reliable-sessions extension")
            if self.phase is Phase.HELLO:
                self._hello_ping = None
                self._open(now)
            return
        self.features = granted
        self._ack = "ack" in granted
        self._resume = "resume" in granted
        cont = self.continuity
        cont.last_seq = max(cont.last_seq, acked)
        log.debug("extension on: %s, acked %d", ",".join(granted) or "-", acked)
        if self._resend:
            if self._ack:
                done = [i for i in self._resend if 0 < i._seq <= acked]
                self._resend = [i for i in self._resend if not 0 < i._seq <= acked]
                if done:
                    self.delivered_something = True
                    self._events.append(Acked(done))
        if self.phase is Phase.HELLO:
            self._open(now)

    def _on_ack(self, seq: int) -> None:
        unacked = self._unacked
        if not unacked or unacked[0]._seq > seq:
            return
        # Seqs grow by one (gaps only where a message was given up after its
        # number): the guess is exact or too far, never too short.
        n = min(len(unacked), seq - unacked[0]._seq + 1)
        while unacked[n - 1]._seq > seq:
            n -= 1
        done = unacked[:n]
        del unacked[:n]
        if done:
            self.delivered_something = True
            events = self._events
            if events and type(events[-1]) is Acked:
                # Several acks in one read: one event, so one resolution pass
                # (and one release of queue room) for all of them.
                events[-1].items.extend(done)
            else:
                events.append(Acked(done))

    def _on_subscribed(self, value: Dict[str, Any], now: float) -> None:
        """Take the position a ``tether:subscribed`` gives (rules 9, 10 and 13).

        It may come again while subscribed (rule 13: a server node that lost its
        position): ``recovered: false`` raises :class:`Recovery` and the position
        is taken; ``recovered: true`` means the replay from the offset asked for
        follows, as at subscribe time.
        """
        problem = _subscribed_problem(value)
        if problem is not None:
            self._lie(f"tether:subscribed {problem}", now)
            return
        channel: str = value["channel"]
        epoch: str = value["epoch"]
        offset: int = value["offset"]
        recovered: bool = value["recovered"]
        asked = channel in self._asked_resume
        self._asked_resume.discard(channel)
        again = channel in self._answered  # rule 13: already subscribed on this link
        self._answered.add(channel)
        positions = self.continuity.positions
        last = positions.get(channel)
        # A replay that starts before what we saw keeps our position: the envelopes
        # up to it are then dropped as duplicates (rule 10), not delivered twice.
        if not (recovered and last is not None and last.epoch == epoch and last.offset > offset):
            positions[channel] = Position(epoch, offset)
        if not recovered and (asked or again):
            log.warning("channel %r could not be recovered: messages were missed", channel)
            self._events.append(Recovery(channel, recovered, epoch, offset))

    def _lie(self, what: str, now: float) -> None:
        """The peer broke DESIGN §5 rule 12: fail the link with 1002, believe nothing more.

        ``what`` names the message and the field; it carries no value the peer
        chose beyond a short number, so no session id or epoch reaches a log line.
        A lie while we are closing already is reported the same way.
        """
        if self._lied or self.phase is Phase.CLOSED:
            return
        self._lied = True
        self._ext_pending = False
        self._hello_ping = None
        error = ProtocolError(f"the server broke the reliable-sessions protocol: {what}")
        log.warning("protocol error: %s", error)
        self._events.append(Problem(error))
        self.fail(1002, "Protocol error", now)  # no-op while closing

    # ------------------------------------------------------------ auth

    def token_ready(
        self,
        token: str,
        expires_at: Optional[float],
        now: float,
        frame: Optional[Tuple[int, bytes]] = None,
    ) -> None:
        """The token asked for with :class:`TokenNeeded` (``frame``: raw rotation message)."""
        if not self._auth_busy or self.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        self._pending_exp = expires_at
        if self.config.protocol == "tether":
            self._send_text(envelope.encode_auth(token))  # never logged
            log.debug("sent tether:auth")
            return
        # raw: an in-band rotation message; no confirmation can come back.
        if frame is not None:
            self._send_frame(*frame)
        self._auth_busy = False
        self._auth_deadline = None
        self._accepted(expires_at, now)

    def token_failed(self, error: BaseException, now: float) -> None:
        """``get_token()`` failed (or timed out) for the :class:`TokenNeeded` asked."""
        if not self._auth_busy or self.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        self._auth_trouble(error, now)

    def refresh(self, now: float) -> bool:
        """Rotate the token now (``refresh_auth()``); False if it cannot happen on this link."""
        if self.phase is not Phase.OPEN or not self._can_rotate():
            return False
        if not self._auth_busy:
            self._request_token(now, True)
        return True

    def _can_rotate(self) -> bool:
        return self.config.auth

    def _on_auth_ok(self, ok: bool, now: float) -> None:
        if not self._auth_busy:
            log.debug("ignoring tether:auth-ok (ok=%s): none awaited", ok)
            return
        self._auth_busy = False
        self._auth_deadline = None
        if ok:
            self._auth_refused = 0
            self._refresh_failures = 0
            self._accepted(self._pending_exp, now)
            if self.phase is Phase.AUTH:
                self._open(now)
            return
        self._auth_refused += 1
        if self._auth_refused == 1:
            log.warning("server refused the token: fetching a fresh one")
            self._request_token(now, True)
            return
        err = AuthError("the server refused the token, and a fresh token too")
        log.error("%s: giving up", err)
        self._events.append(AuthTrouble(err, final=True))
        self.close(1008, "Auth refused", now, error=err)

    def _accepted(self, expires_at: Optional[float], now: float) -> None:
        self.expires_at = expires_at
        self._events.append(AuthAccepted(expires_at))
        if expires_at is not None and self._can_rotate():
            wall = now + self._wall_offset
            at = refresh_at(expires_at, self.config.refresh_before, wall)
            self._refresh_at = now + (at - wall)

    def _auth_trouble(self, error: BaseException, now: float) -> None:
        self._auth_busy = False
        self._auth_deadline = None
        if self.phase is Phase.AUTH:
            # No usable token for this connection: close it and retry with backoff.
            self._events.append(AuthTrouble(error))
            self.close(1000, "Token unavailable", now)
            return
        # A refresh on an open link: keep the link (its token may still be valid)
        # and retry the fetch with full-jitter backoff.
        self._events.append(AuthTrouble(error))
        self._refresh_failures += 1
        cap = min(30.0, 0.5 * 2.0 ** min(self._refresh_failures, 10))
        delay = self._rng.uniform(0.0, cap) if self._rng is not None else cap / 2
        log.info("token refresh failed; retrying in %.2fs", delay)
        self._refresh_at = now + delay

    # ------------------------------------------------------------ bytes out

    def send(self, items: Sequence[Item]) -> None:
        """Frame application messages (only while open; the loop checks)."""
        if self.phase is not Phase.OPEN:
            raise RuntimeError("send() on a session that is not open")
        if self._resend_due:
            self._write_resends()
        self._write_items(items, resend=False)

    def _write_items(self, items: Sequence[Item], resend: bool) -> None:
        if self._ack:
            cont = self.continuity
            seq = cont.last_seq
            framed: List[Tuple[Item, bytes]] = []
            append = framed.append
            for item in items:
                n = item._seq
                if n <= 0:
                    seq += 1
                    item._seq = n = seq
                elif n > seq:
                    seq = n  # numbered at send() time (the durable outbox)
                # The data envelope with "seq": n added (it ends with "}").
                append((item, b'%s,"seq":%d}' % (item._data[:-1], n)))
            cont.last_seq = seq
            self._out.add_framed(framed, track=False)
            self._unacked.extend(items)
            return
        self._out.add_messages(items)
        big = [i for i in items if len(i._data) >= LARGE_MESSAGE]
        if big:
            # No acks: a large message could be refused (1009) after the kernel
            # took it. Hold its Delivery until a ping sent after it is answered:
            # servers answer in order, so the pong proves it was taken.
            ts = self._send_ping_barrier()
            self._barrier.append((ts, big))

    def subscribe(self, channel: str, msg_id: str) -> None:
        """Announce a subscription (protocol ``tether``), resuming where we left off."""
        if self.config.protocol != "tether" or self.phase is not Phase.OPEN:
            return
        msg: Dict[str, Any] = {"channel": channel, "type": "subscribe", "id": msg_id}
        pos = self.continuity.positions.get(channel)
        self._answered.discard(channel)  # its answer is the subscribe's, not rule 13's
        if self._resume:
            if pos is not None:
                if pos.epoch is not None:
                    msg["epoch"] = pos.epoch
                msg["offset"] = pos.offset
                self._asked_resume.add(channel)
        self._send_text(envelope.encode_json(msg))

    def unsubscribe(self, channel: str, msg_id: str) -> None:
        if self.config.protocol != "tether" or self.phase is not Phase.OPEN:
            return
        self._send_text(envelope.encode_subscription(channel, "unsubscribe", msg_id))
        self.continuity.positions.pop(channel, None)
        self._asked_resume.discard(channel)
        self._answered.discard(channel)

    def _send_text(self, text: str) -> None:
        self._send_frame(frames.OP_TEXT, text.encode())

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self.phase in (Phase.CLOSING, Phase.CLOSED) and opcode != frames.OP_CLOSE:
            return
        self._out.add_control(opcode, payload)

    def data_to_send(self) -> memoryview:
        """The bytes to write next (empty when nothing waits)."""
        if self._resend_due:
            self._write_resends()
        return self._out.pending()

    def sent(self, n: int) -> None:
        """The kernel took ``n`` bytes of :meth:`data_to_send`."""
        done = self._out.advance(n)
        if not done:
            return
        if self._barrier:
            # Every large message framed here waits in the barrier until a pong
            # that follows it (see _write_items), so by size, not by a set of the
            # held ids rebuilt per write (O(held) each: quadratic in a burst).
            done = [i for i in done if len(i._data) < LARGE_MESSAGE]
        if done and not self._ack:
            self._events.append(Written(done))

    @property
    def wants_write(self) -> bool:
        """:meth:`data_to_send` has bytes (framed, or carried messages due to be framed)."""
        return self._resend_due or self._out.size > 0

    @property
    def buffered(self) -> int:
        """User-space bytes framed and not yet written."""
        return self._out.size

    @property
    def unacked(self) -> int:
        """Messages written and awaiting the server's ack."""
        return len(self._unacked) + len(self._resend)

    @property
    def in_flight(self) -> int:
        """Messages framed and not done: not fully written, or awaiting an ack."""
        return self._out.in_flight + len(self._unacked) + sum(len(i) for _, i in self._barrier)

    def take_unfinished(self) -> List[Item]:
        """After :class:`Closed`: every message not done, oldest first, to send again.

        Written-but-unacked messages keep their ``seq`` (rule 4), so the server's
        dedupe makes the resend safe.
        """
        out: List[Item] = list(self._resend)
        unacked = list(self._unacked)
        unwritten = self._out.reset()
        # Held (large, unconfirmed) messages that were written precede everything
        # still unwritten: written bytes are a prefix of what was framed.
        pending = {id(i) for i in unwritten}
        held = [i for _, items in self._barrier for i in items if id(i) not in pending]
        seen = set()
        for item in [*unacked, *held, *unwritten]:
            if id(item) not in seen:
                seen.add(id(item))
                out.append(item)
        self._resend = []
        self._unacked.clear()
        self._barrier.clear()
        out.sort(key=_resend_order)
        return out

    # ------------------------------------------------------------ heartbeat

    def _send_ping(self, now: float) -> int:
        # Epoch milliseconds, like tether-ws; never twice the same value.
        ts = max(int((now + self._wall_offset) * 1000), self._last_ping_ts + 1)
        self._last_ping_ts = ts
        if self.config.protocol == "tether":
            self._send_text(envelope.encode_ping(ts))
        else:
            self._send_frame(frames.OP_PING, str(ts).encode())
        return ts

    def _send_ping_barrier(self) -> int:
        self._ping_serial += 1
        ts = -self._ping_serial  # negative: never the heartbeat's
        if self.config.protocol == "tether":
            self._send_text(envelope.encode_ping(ts))
        else:
            self._send_frame(frames.OP_PING, str(ts).encode())
        return ts

    def _on_pong(self, ts: Any, now: float) -> None:
        if isinstance(ts, (bytes, bytearray)):
            try:
                ts = int(ts)
            except ValueError:
                return
        if type(ts) is not int:
            return
        if self._hello_ping is not None and ts == self._hello_ping:
            self._hello_ping = None
            self._decide_extension(None, 0, now)
            return
        if ts < 0:
            self._on_barrier(ts)
            return
        ping = self._ping
        if ping is not None and ts == ping[0]:
            self.delivered_something = True
            self._ping = None
            self._pong_deadline = None
            hb = self.config.heartbeat
            if hb is not None:
                self._ping_due = ping[1] + hb[0]
            self._events.append(RoundTrip(now - ping[1]))

    def _on_barrier(self, ts: int) -> None:
        done: List[Item] = []
        while self._barrier and self._barrier[0][0] >= ts:
            # Barrier ts values decrease: everything up to this one was answered.
            done.extend(self._barrier.popleft()[1])
        if done:
            self.delivered_something = True
            self._events.append(Acked(done))

    # ------------------------------------------------------------ time

    def next_deadline(self) -> Optional[float]:
        """The earliest moment :meth:`on_deadline` has something to do, or None."""
        best: Optional[float] = None
        for when in (
            self._ping_due if self._ping is None else None,
            self._pong_deadline,
            self._auth_deadline,
            self._refresh_at if not self._auth_busy else None,
            self._close_deadline,
            self._hello_deadline,
        ):
            if when is not None and (best is None or when < best):
                best = when
        return best

    def on_deadline(self, now: float) -> None:
        """Act on every deadline that has passed at ``now``."""
        if self.phase is Phase.CLOSED:
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            self._close_deadline = None
            code, reason = self._closing
            self._closed(code, reason, False, self._closing_error)
            return
        if self._hello_deadline is not None and now >= self._hello_deadline:
            log.warning("no answer to tether:hello or its ping: extension off")
            self._decide_extension(None, 0, now)
        if self._auth_deadline is not None and now >= self._auth_deadline:
            budget = self.config.auth_timeout
            self._auth_trouble(TimeoutError(f"no token and auth-ok within {budget:g}s"), now)
            if self.phase is not Phase.OPEN:
                return
        if self._refresh_at is not None and now >= self._refresh_at and not self._auth_busy:
            self._refresh_at = None
            if self.phase is Phase.OPEN:
                self._request_token(now, True)
        hb = self.config.heartbeat
        if hb is None or self.phase is not Phase.OPEN:
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            ping = self._ping
            assert ping is not None
            self._pong_deadline = None
            self._ping = None
            if self.messages_in > ping[2] or self.reading_paused:
                # A whole message since the ping proves the peer alive; and while we
                # hold reading back for a "block" consumer, the pong may sit unread.
                self._ping_due = max(now, ping[1] + hb[0])
            else:
                log.warning("no pong within %.3fs: closing with 4000", hb[1])
                self.close(*HEARTBEAT_CLOSE, now, grace=min(HEARTBEAT_CLOSE_GRACE, hb[1]))
                self._closing_clean_ok = False
                return
        if self._ping is None and self._ping_due is not None and now >= self._ping_due:
            ts = self._send_ping(now)
            self._ping = (ts, now, self.messages_in)
            self._pong_deadline = now + hb[1]
            self._ping_due = None

    # ------------------------------------------------------------ closing

    def close(
        self,
        code: int,
        reason: str,
        now: float,
        *,
        grace: float = CLOSE_GRACE,
        error: Optional[BaseException] = None,
    ) -> None:
        """Start the closing handshake: our close frame, then ``grace`` seconds for the peer's."""
        if self.phase in (Phase.CLOSING, Phase.CLOSED):
            return
        self._send_frame(frames.OP_CLOSE, frames.encode_close_payload(code, reason))
        self._set_phase(Phase.CLOSING)
        self._closing = (code, reason)
        self._closing_error = error
        self._close_deadline = now + max(0.0, grace)
        self._auth_busy = False
        self._auth_deadline = self._refresh_at = self._pong_deadline = None
        # Only the close deadline is left (a pong arriving now schedules no ping).
        self._hello_deadline = self._ping_due = self._ping = None

    def fail(self, code: int, reason: str, now: float) -> None:
        """Fail the link (a protocol violation): close frame, short grace, unclean."""
        self.close(code, reason, now)
        self._closing_clean_ok = False

    def abort(self, code: int, reason: str, error: Optional[BaseException] = None) -> None:
        """End now, without a handshake (the socket broke, or the loop gives up on it)."""
        if self.phase is not Phase.CLOSED:
            self._closed(code, reason, False, error)

    def _on_close_frame(self, payload: bytes) -> None:
        clean = True
        try:
            code, reason = frames.parse_close(payload)
        except ProtocolError as exc:
            # A malformed close frame is a violation like any other: reported once,
            # answered with its code, and the link fails (RFC 6455 §7.1.7).
            code, reason = exc.close_code, str(exc)
            clean = False
            log.warning("protocol error: %s", exc)
            self._events.append(Problem(exc))
        if self.phase is Phase.CLOSING:
            # The answer to our close frame: the closing handshake is complete.
            mine = self._closing
            self._closed(mine[0], mine[1], self._closing_clean_ok, self._closing_error)
            return
        # The server closes: echo its code (RFC 6455 §5.5.1), then end the link.
        echo = code if code not in (1005, 1006, 1015) else 1000
        self._send_frame(frames.OP_CLOSE, frames.encode_close_payload(echo, ""))
        log.info("server closed the connection: %d %s", code, reason)
        if code == 1009:
            self._refuse_oversized()
        self._closed(code, reason, clean)

    def _refuse_oversized(self) -> None:
        """The server closed with 1009: fail the largest unconfirmed message, never resend it."""
        candidates = [*self._unacked, *(i for _, items in self._barrier for i in items)]
        if not candidates:
            return
        culprit = max(candidates, key=lambda i: len(i._data))
        if len(culprit._data) < 1024:
            return  # nothing big was in flight: not ours to blame
        self._drop_tracked(culprit)
        error = TetherError(
            f"the server refused a message of {len(culprit._data)} bytes as too big (close 1009)"
        )
        log.warning("%s", error)
        self._events.append(Refused([culprit], error))

    def _closed(
        self, code: int, reason: str, was_clean: bool, error: Optional[BaseException] = None
    ) -> None:
        self.phase = Phase.CLOSED
        self._close_deadline = self._auth_deadline = self._refresh_at = None
        self._pong_deadline = self._ping_due = self._hello_deadline = None
        self._auth_busy = False
        self._events.append(Closed(code, reason, was_clean, error))

    # ------------------------------------------------------------ events out

    def events(self) -> List[Event]:
        """Take the events produced so far, in order."""
        events, self._events = self._events, []
        return events


def _pong_text(ts: Any) -> str:
    """The answer to a server's ``tether:ping``, whatever its ``ts`` holds.

    ``ts`` is echoed as given where JSON can carry it. A lone surrogate cannot be
    UTF-8 encoded raw, so it is escaped; NaN and infinities are no JSON at all,
    so the pong goes without ``ts`` (like a ping that had none).
    """
    if ts is None:
        return '{"type":"tether:pong"}'
    if isinstance(ts, float) and not math.isfinite(ts):
        return '{"type":"tether:pong"}'
    try:
        text = envelope.encode_pong(ts)
        text.encode()
        return text
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        pass
    try:
        # ensure_ascii escapes lone surrogates; NaN nested in ts is still no JSON.
        return json.dumps({"type": "tether:pong", "ts": ts}, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return '{"type":"tether:pong"}'


def _describe(value: Any) -> str:
    """A short, value-free description of what a field held (for error messages)."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if type(value) is int:
        return str(value) if abs(value) < 10**20 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _seq_problem(seq: Any, highest: int) -> str:
    """What is wrong with an ack's ``seq`` or a ``hello-ok``'s ``acked`` (rule 12)."""
    if type(seq) is not int:
        return f"is {_describe(seq)}, not an integer"
    if seq < 0:
        return f"is {_describe(seq)}, below 0"
    return f"is {_describe(seq)}, above the highest seq numbered ({highest})"


def _id_problem(value: Any) -> Optional[str]:
    """What is wrong with a session id or an epoch, or None (rule 12)."""
    if not isinstance(value, str):
        return f"is {_describe(value)}, not a string"
    if not value:
        return "is an empty string"
    if len(value) > MAX_ID_LENGTH:
        return f"is {_describe(value)}, more than {MAX_ID_LENGTH}"
    return None


def _hello_ok_problem(value: Dict[str, Any], highest: int, ours: str) -> Optional[str]:
    """What is wrong with a ``tether:hello-ok``, or None if it can be believed (rule 12).

    Its ``session`` must be the one the hello named: the ``acked`` of another
    session's counter would resolve messages the server never accepted.
    """
    problem = _id_problem(value.get("session"))
    if problem is not None:
        return f"session {problem}"
    if value["session"] != ours:
        return "session is not the one the hello named"
    features = value.get("features")
    if type(features) is not list or not all(isinstance(f, str) for f in features):
        return f"features is {_describe(features)}, not a list of strings"
    acked = value.get("acked")
    if type(acked) is not int or not 0 <= acked <= highest:
        return f"acked {_seq_problem(acked, highest)}"
    return None


def _position_problem(offset: Any, epoch: Any) -> Optional[str]:
    """What is wrong with an envelope's ``offset`` and ``epoch``, or None (rule 12).

    The epoch may be absent (rule 9 reads that as an epoch of its own), never
    anything but a string of 1 to 64 characters.
    """
    if type(offset) is not int or offset < 1:
        return f"offset is {_describe(offset)}, not an integer >= 1"
    if epoch is not None:
        problem = _id_problem(epoch)
        if problem is not None:
            return f"epoch {problem}"
    return None


def _subscribed_problem(value: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a ``tether:subscribed``, or None (rules 9 and 12).

    Its ``offset`` is the one the next envelope follows: 0 on a channel that
    has published nothing yet, so it may be 0 where an envelope's may not.
    """
    if not isinstance(value.get("channel"), str):
        return f"channel is {_describe(value.get('channel'))}, not a string"
    if type(value.get("recovered")) is not bool:
        return f"recovered is {_describe(value.get('recovered'))}, not a boolean"
    problem = _id_problem(value.get("epoch"))
    if problem is not None:
        return f"epoch {problem}"
    offset = value.get("offset")
    if type(offset) is not int or offset < 0:
        return f"offset is {_describe(offset)}, not an integer >= 0"
    return None


def _resend_order(item: Item) -> Tuple[int, int]:
    # Numbered messages first, by seq (they went out first), then the rest in order.
    return (0, item._seq) if item._seq > 0 else (1, 0)


__all__ = [
    "ALLOWED",
    "Acked",
    "AuthAccepted",
    "AuthTrouble",
    "Closed",
    "Continuity",
    "Event",
    "Opened",
    "Phase",
    "Position",
    "Problem",
    "Received",
    "Recovery",
    "Refused",
    "RoundTrip",
    "Session",
    "SessionConfig",
    "TokenNeeded",
    "Written",
]
