"""One connection's whole protocol, sans I/O (DESIGN §4).

A :class:`Session` lives from "handshake done" to "closed". Bytes go in
(:meth:`Session.receive_data`, :meth:`Session.receive_eof`), bytes come out
(:meth:`Session.data_to_send`, acknowledged with :meth:`Session.sent`), events
come out (:meth:`Session.events`), and time moves only when the caller says so
(:meth:`Session.next_deadline`, :meth:`Session.on_deadline` with ``now``). It
imports no ``threading``, ``socket``, ``selectors`` or ``time``: tests script it
with frames and a fake clock, after python-websockets' ``Protocol``.

The session itself keeps the phase, the closing handshake and the
classification of inbound frames; it owns three sub-machines, each with its own
state and deadline, each in its own module:

- :class:`~tether_sync.protocol.heartbeat.Heartbeat`: pings, pong deadlines,
  liveness (DESIGN §1);
- :class:`~tether_sync.protocol.auth_gate.AuthGate`: the token that opens the
  link, its deadline, its rotation;
- :class:`~tether_sync.protocol.reliability.Reliability`: the §5 extension
  (hello, ``seq``, acks, resends, channel positions, the rule 12 checks).

They decide, the session acts: a sub-machine never changes the phase or closes
the link; it returns its verdict (a dead peer, a :class:`CloseLink`, a rule 12
problem) and the session does. :meth:`Session.next_deadline` is the earliest of
their deadlines (while closing, only the close deadline counts), and
:meth:`Session.on_deadline` asks each in turn. Their deadlines are cleared in
one place: :meth:`Session._set_phase`, when the link starts closing.

The loop (``engine/loop.py``) is what is left: it moves bytes between this
object and the socket, hands events to the application, and owns everything
that outlives one connection (the queue, backoff, subscriptions). What outlives
a connection but belongs to the protocol (the session id and the last ``seq``,
the last offset seen per channel) lives in a :class:`Continuity` that the loop
hands to each new session.

A lie (DESIGN §5 rule 12, judged by the reliability part) fails the link with
1002 and a :class:`Problem` carrying a ``ProtocolError``, resolves nothing, and
nothing the peer sends after it on that link counts but its close frame.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..exceptions import ProtocolError, ServerError, TetherError
from . import envelope, frames
from .auth_gate import AuthGate, CloseLink, UniformRng
from .deflate import DeflateParams, PerMessageDeflate
from .events import (
    Acked,
    AuthAccepted,
    AuthTrouble,
    Closed,
    Event,
    Opened,
    Output,
    Problem,
    Received,
    Recovery,
    Refused,
    RoundTrip,
    TokenNeeded,
    Written,
)
from .heartbeat import Heartbeat
from .reliability import FEATURES, LARGE_MESSAGE, MAX_ID_LENGTH, Continuity, Position, Reliability
from .writebuf import Item, WriteBuffer

log = logging.getLogger("tether_sync")

CLOSE_GRACE = 1.0  # seconds to wait for the peer's close frame after ours (RFC 6455 §7.1.1)
HEARTBEAT_CLOSE_GRACE = 0.25  # seconds; after a missing pong the peer is presumed gone
HEARTBEAT_CLOSE = (4000, "Heartbeat timeout")


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
class _Closing:
    """Our close frame is out: what the close will report, and until when we wait."""

    code: int
    reason: str
    error: Optional[BaseException]
    deadline: float
    clean: bool = True  # whether the peer's answering close frame makes the close clean


# ---------------------------------------------------------------- the session


class Session:
    """The protocol of one connection (see the module docstring).

    Args:
        config: The options.
        continuity: State kept across connections (session id, ``seq``, offsets).
        now: Monotonic seconds at the end of the handshake (nothing is timed
            before :meth:`start`, which takes its own ``now``).
        wall_offset: ``wall - monotonic`` seconds, for ping timestamps and token
            expiry (wall-clock values), so the session needs one clock only.
        keys: Mask keys (drawn in bulk).
        rng: For full-jitter retries of a failed token refresh.

    Attributes:
        config: The options.
        continuity: What outlives the link (shared with the loop).
        phase: Where the link stands; changed only by ``_set_phase``.
        reading_paused: Set by the loop (see ``__init__``).
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
        self.reading_paused = False
        """Set by the loop while a "block" consumer is full (a late pong proves nothing)."""
        # permessage-deflate: one codec per connection, its context kept both ways;
        # inflating is bounded by max_message_size (a bomb fails with 1009).
        codec = PerMessageDeflate(config.deflate) if config.deflate is not None else None
        self._parser = frames.FrameParser(
            config.max_message_size, inflate=codec.decode if codec is not None else None
        )
        tether = config.protocol == "tether"
        out = self._output = Output(
            WriteBuffer(keys if keys is not None else frames.MaskKeys(), codec), tether
        )
        self._heartbeat = Heartbeat(out, config.heartbeat, wall_offset)
        self._auth = AuthGate(
            out,
            tether=tether,
            rotates=config.auth,
            timeout=config.auth_timeout,
            refresh_before=config.refresh_before,
            wall_offset=wall_offset,
            rng=rng,
        )
        self._rel = Reliability(out, continuity, config.extensions if tether else ())
        self._closing: Optional[_Closing] = None  # set while CLOSING
        self._delivered = False  # the peer sent application data on this link
        self._violated = False  # the peer broke RFC 6455 (reported once)
        self._lied = False  # the peer broke a §5 rule 12 check: nothing more it says counts

    # ------------------------------------------------------------ phase

    def _set_phase(self, new: Phase) -> None:
        if new not in ALLOWED[self.phase]:
            raise RuntimeError(f"invalid phase transition {self.phase.value} -> {new.value}")
        self.phase = new
        if new is Phase.CLOSING or new is Phase.CLOSED:
            # The one place where the sub-machines' deadlines are cleared: from
            # here on, only the close deadline is timed (set by close(), dropped
            # below at CLOSED), nothing but a close frame is written, and a late
            # pong, auth-ok or hello reply schedules nothing.
            self._output.muted = True
            self._heartbeat.stop()
            self._auth.stop()
            self._rel.stop()
            if new is Phase.CLOSED:
                self._closing = None

    @property
    def closed(self) -> bool:
        """Whether the :class:`Closed` event was emitted (a method, so type checkers
        do not narrow ``phase`` across the handlers that change it)."""
        return self.phase is Phase.CLOSED

    @property
    def is_open(self) -> bool:
        """Whether the link is usable (data flows)."""
        return self.phase is Phase.OPEN

    @property
    def features(self) -> Tuple[str, ...]:
        """The §5 features the server granted on this link."""
        return self._rel.features

    @property
    def delivered_something(self) -> bool:
        """The peer confirmed or sent application data (or answered a heartbeat) on this link."""
        return self._delivered or self._rel.confirmed or self._heartbeat.answered

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
        cfg = self.config
        self._rel.start(resend)
        if cfg.protocol == "tether" and cfg.auth:
            self._set_phase(Phase.AUTH)
            self._auth.request(now, force_token)
            return
        if self._rel.pending:
            # Rule 3: no auth, so a ping right after the hello decides (in order).
            ts = self._heartbeat.stamp(now)
            self._output.ping(ts)
            self._rel.await_reply(ts, now + cfg.auth_timeout)
            return
        self._open(now)
        if header_expiry is not None:
            self._auth.accepted(header_expiry, now)

    def _open(self, now: float) -> None:
        self._set_phase(Phase.OPEN)
        self._rel.open()
        self._heartbeat.start(now)
        self._output.emit(Opened(self._rel.features))

    def _settle(self, now: float) -> None:
        """Without auth, the link opens as soon as the extension is decided."""
        if self.phase is Phase.HELLO and self._rel.decided:
            self._open(now)

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
        self._heartbeat.heard += len(messages)
        if self.config.protocol == "tether":
            self._receive_tether(messages, now)
        else:
            # Protocol raw: every data frame goes to channel "default" (the hot
            # path skips the general dispatch); control frames take the general path.
            closed = Phase.CLOSED
            for opcode, payload in messages:
                if self.phase is closed:
                    break
                if opcode == frames.OP_TEXT or opcode == frames.OP_BINARY:
                    self._delivered = True
                    self._received("default", payload)
                else:
                    self._on_message(opcode, payload, now)
        if error is not None and not self.closed:
            if self._violated:
                return  # the parser is dead: later bytes repeat the first violation
            self._violated = True
            log.warning("protocol error: %s", error)
            self._output.emit(Problem(error))
            self.fail(error.close_code, str(error)[:100], now)

    def _receive_tether(self, messages: List[Tuple[int, Any]], now: float) -> None:
        # The hot path: a text frame is parsed once, and a plain data envelope (no
        # offset) goes straight into the open Received run, without an object of
        # its own; an ack goes straight to the reliability part; everything else
        # takes the general path, in order, and ends the run. Only the general
        # path can close the session: nothing is handled after.
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
                            self._output.events.append(Received(run))
                            self._delivered = True
                        run.append(
                            (channel if type(channel) is str else str(channel), msg.get("payload"))
                        )
                        continue
                    if kind == "tether:ack":
                        # A bulk send's other hot path: without classify() and
                        # the general dispatch on the way.
                        problem = self._rel.on_ack(msg.get("seq"))
                        run = None
                        if problem is not None:
                            self._lie(problem, now)
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

    def receive_eof(self, now: float) -> None:
        """The peer closed the TCP connection (or it broke)."""
        if self.phase is Phase.CLOSED:
            return
        closing = self._closing
        if closing is not None:
            self._closed(closing.code, closing.reason, False)
            return
        self._closed(1006, "connection closed without a close frame", False)

    def _on_message(self, opcode: int, payload: Any, now: float) -> None:
        # What the hot loops leave: control frames, and (tether) binary frames.
        if opcode == frames.OP_TEXT or opcode == frames.OP_BINARY:
            self._on_decoded(envelope.decode(payload), payload, now)
        elif opcode == frames.OP_PING:
            self._output.frame(frames.OP_PONG, payload)
        elif opcode == frames.OP_PONG:
            if self.config.protocol == "raw":
                self._on_pong(payload, now)
        elif opcode == frames.OP_CLOSE:
            self._on_close_frame(payload)

    def _on_decoded(self, msg: envelope.Inbound, payload: Any, now: float) -> None:
        kind = type(msg)
        if kind is envelope.Data:
            assert isinstance(msg, envelope.Data)
            channel = msg.channel if isinstance(msg.channel, str) else str(msg.channel)
            verdict = self._rel.admit(channel, msg.offset, msg.epoch)
            if isinstance(verdict, str):
                self._lie(verdict, now)
                return
            self._delivered = True
            if verdict:
                self._received(channel, msg.payload)
        elif kind is envelope.Pong:
            assert isinstance(msg, envelope.Pong)
            self._on_pong(msg.ts, now)
        elif kind is envelope.Ping:
            assert isinstance(msg, envelope.Ping)
            self._output.text(_pong_text(msg.ts))
        elif kind is envelope.AuthOk:
            assert isinstance(msg, envelope.AuthOk)
            # Any reply but hello-ok decides the extension: off.
            self._rel.decide(None)
            self._settle(now)
            verdict_ok = self._auth.on_auth_ok(msg.ok, now)
            if isinstance(verdict_ok, CloseLink):
                self.close(verdict_ok.code, verdict_ok.reason, now, error=verdict_ok.error)
            elif verdict_ok and self.phase is Phase.AUTH:
                self._open(now)
        elif kind is envelope.ServerErrorMsg:
            assert isinstance(msg, envelope.ServerErrorMsg)
            self._rel.decide(None)
            self._settle(now)
            log.warning("server refused message %r: %s", msg.id, msg.error)
            error = ServerError(msg.error, msg.id)
            # Rule 6: a refused message is failed and never resent.
            item = self._rel.refuse(msg.id) if msg.id is not None else None
            if item is not None:
                self._output.emit(Refused([item], error))
            self._output.emit(Problem(error))
        else:
            value = msg.value if isinstance(msg, envelope.Unknown) else payload
            handled = self._rel.on_extension(value)
            if isinstance(handled, str):
                self._lie(handled, now)
                return
            self._settle(now)
            if not handled:
                # Not ours to interpret: the message stream gets the frame unchanged.
                self._received(None, payload)

    def _received(self, channel: Optional[str], payload: Any) -> None:
        events = self._output.events
        if events and type(events[-1]) is Received:
            events[-1].items.append((channel, payload))
        else:
            events.append(Received([(channel, payload)]))

    def _on_pong(self, ts: Any, now: float) -> None:
        # One ts sequence for every ping we send: the reliability part's (the
        # hello's ping, negative barrier pings) are told apart from the
        # heartbeat's by value, so the order of the checks does not matter.
        if isinstance(ts, (bytes, bytearray)):
            try:
                ts = int(ts)
            except ValueError:
                return
        if type(ts) is not int:
            return
        if self._rel.on_pong(ts):
            self._settle(now)  # the hello's ping was answered: the extension is off
        else:
            self._heartbeat.on_pong(ts, now)

    def _lie(self, what: str, now: float) -> None:
        """The peer broke DESIGN §5 rule 12: fail the link with 1002, believe nothing more.

        ``what`` names the message and the field; it carries no value the peer
        chose beyond a short number, so no session id or epoch reaches a log line.
        A lie while we are closing already is reported the same way.
        """
        if self._lied or self.phase is Phase.CLOSED:
            return
        self._lied = True
        self._rel.on_lie()
        error = ProtocolError(f"the server broke the reliable-sessions protocol: {what}")
        log.warning("protocol error: %s", error)
        self._output.emit(Problem(error))
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
        self._auth.token_ready(token, expires_at, now, frame)

    def token_failed(self, error: BaseException, now: float) -> None:
        """``get_token()`` failed (or timed out) for the :class:`TokenNeeded` asked."""
        verdict = self._auth.failed(error, now, self.phase is not Phase.OPEN)
        if verdict is not None:
            self.close(verdict.code, verdict.reason, now, error=verdict.error)

    def refresh(self, now: float) -> bool:
        """Rotate the token now (``refresh_auth()``); False if it cannot happen on this link."""
        return self.phase is Phase.OPEN and self._auth.refresh(now)

    # ------------------------------------------------------------ bytes out

    def send(self, items: Sequence[Item]) -> None:
        """Frame application messages (only while open; the loop checks)."""
        if self.phase is not Phase.OPEN:
            raise RuntimeError("send() on a session that is not open")
        self._rel.write(items)

    def subscribe(self, channel: str, msg_id: str) -> None:
        """Announce a subscription (protocol ``tether``), resuming where we left off."""
        if self.config.protocol != "tether" or self.phase is not Phase.OPEN:
            return
        self._output.text(self._rel.subscribe_text(channel, msg_id))

    def unsubscribe(self, channel: str, msg_id: str) -> None:
        """Announce leaving ``channel`` (protocol ``tether``); its position is forgotten."""
        if self.config.protocol != "tether" or self.phase is not Phase.OPEN:
            return
        self._output.text(envelope.encode_subscription(channel, "unsubscribe", msg_id))
        self._rel.unsubscribed(channel)

    def data_to_send(self) -> memoryview:
        """The bytes to write next (empty when nothing waits)."""
        return self._buffer_with_resends().pending()

    def chunks_to_send(self, max_chunks: int, max_bytes: int) -> List[memoryview]:
        """The bytes to write next as uncopied chunks, for one gathering write.

        The same bytes as :meth:`data_to_send` and more after them (see
        :meth:`~tether_sync.protocol.writebuf.WriteBuffer.pending_chunks`); an
        empty list when nothing waits. Report what went with :meth:`sent`.
        """
        return self._buffer_with_resends().pending_chunks(max_chunks, max_bytes)

    def _buffer_with_resends(self) -> WriteBuffer:
        # The write buffer, with the resends that are due framed into it first.
        rel = self._rel
        if rel.resend_due:
            rel.write_resends()
        return self._output.buffer

    def sent(self, n: int) -> None:
        """The kernel took ``n`` bytes of :meth:`data_to_send` (or :meth:`chunks_to_send`)."""
        done = self._output.buffer.advance(n)
        if done:
            self._rel.on_written(done)

    @property
    def wants_write(self) -> bool:
        """:meth:`data_to_send` has bytes (framed, or carried messages due to be framed)."""
        return self._rel.resend_due or self._output.buffer.size > 0

    @property
    def buffered(self) -> int:
        """User-space bytes framed and not yet written."""
        return self._output.buffer.size

    @property
    def unacked(self) -> int:
        """Messages written and awaiting the server's ack."""
        return self._rel.unacked

    @property
    def in_flight(self) -> int:
        """Messages framed and not done: not fully written, or awaiting an ack."""
        return self._output.buffer.in_flight + self._rel.held

    def take_unfinished(self) -> List[Item]:
        """After :class:`Closed`: every message not done, oldest first, to send again.

        Written-but-unacked messages keep their ``seq`` (rule 4), so the server's
        dedupe makes the resend safe.
        """
        return self._rel.take_unfinished()

    # ------------------------------------------------------------ time

    def next_deadline(self) -> Optional[float]:
        """The earliest moment :meth:`on_deadline` has something to do, or None."""
        closing = self._closing
        if closing is not None:
            return closing.deadline  # the sub-machines were stopped: nothing else is timed
        best = self._heartbeat.deadline()
        for when in (self._auth.deadline(), self._rel.deadline()):
            if when is not None and (best is None or when < best):
                best = when
        return best

    def on_deadline(self, now: float) -> None:
        """Act on every deadline that has passed at ``now``.

        In order: the close deadline (which ends everything), the hello safety
        net (which may open the link), the auth gate (which may close it), then
        the heartbeat, which runs only on an open link.
        """
        if self.phase is Phase.CLOSED:
            return
        closing = self._closing
        if closing is not None:
            if now >= closing.deadline:
                self._closed(closing.code, closing.reason, False, closing.error)
            return
        self._rel.on_deadline(now)
        self._settle(now)
        verdict = self._auth.on_deadline(now, self.phase is not Phase.OPEN)
        if verdict is not None:
            self.close(verdict.code, verdict.reason, now, error=verdict.error)
            return
        if self.phase is Phase.OPEN and self._heartbeat.on_deadline(now, self.reading_paused):
            hb = self.config.heartbeat
            assert hb is not None
            log.warning("no pong within %.3fs: closing with 4000", hb[1])
            self.close(*HEARTBEAT_CLOSE, now, grace=min(HEARTBEAT_CLOSE_GRACE, hb[1]))
            assert self._closing is not None
            self._closing.clean = False  # the peer is presumed gone: no answer makes it clean

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
        self._output.frame(frames.OP_CLOSE, frames.encode_close_payload(code, reason))
        self._set_phase(Phase.CLOSING)
        self._closing = _Closing(code, reason, error, now + max(0.0, grace))

    def fail(self, code: int, reason: str, now: float) -> None:
        """Fail the link (a protocol violation): close frame, short grace, unclean."""
        self.close(code, reason, now)
        if self._closing is not None:
            self._closing.clean = False

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
            self._output.emit(Problem(exc))
        closing = self._closing
        if closing is not None:
            # The answer to our close frame: the closing handshake is complete.
            self._closed(closing.code, closing.reason, closing.clean, closing.error)
            return
        # The server closes: echo its code (RFC 6455 §5.5.1), then end the link.
        echo = code if code not in (1005, 1006, 1015) else 1000
        self._output.frame(frames.OP_CLOSE, frames.encode_close_payload(echo, ""))
        log.info("server closed the connection: %d %s", code, reason)
        if code == 1009:
            # Fail the largest unconfirmed message, never resend it.
            culprit = self._rel.refuse_largest()
            if culprit is not None:
                refusal = TetherError(
                    f"the server refused a message of {len(culprit._data)} bytes"
                    " as too big (close 1009)"
                )
                log.warning("%s", refusal)
                self._output.emit(Refused([culprit], refusal))
        self._closed(code, reason, clean)

    def _closed(
        self, code: int, reason: str, was_clean: bool, error: Optional[BaseException] = None
    ) -> None:
        self._set_phase(Phase.CLOSED)
        self._output.emit(Closed(code, reason, was_clean, error))

    # ------------------------------------------------------------ events out

    def events(self) -> List[Event]:
        """Take the events produced so far, in order."""
        return self._output.take()


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


__all__ = [
    "ALLOWED",
    "CLOSE_GRACE",
    "FEATURES",
    "HEARTBEAT_CLOSE",
    "HEARTBEAT_CLOSE_GRACE",
    "LARGE_MESSAGE",
    "MAX_ID_LENGTH",
    "Acked",
    "AuthAccepted",
    "AuthTrouble",
    "CloseLink",
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
    "UniformRng",
    "Written",
]
