"""The Tether protocol, server side: what one connection does with each message.

Dispatch follows the reference server (``ws-handler.ts``) message by message;
see ``TETHER-WIRE.md``. Two of its bugs are deliberately not copied: in
``require_auth`` mode auth is enforced (S1), and a non-numeric ``ms``/``count``
counts as missing instead of leaking ``NaN``/``null`` (S5).

The reliable-sessions extension (DESIGN §5, rules 1-11) is served here too,
unless the server runs with ``extensions=False``, where ``tether:hello`` is an
unknown type like any other: recorded, ignored, never answered.

* ``tether:hello`` is answered only as a connection's first frame with a valid
  session id (rule 2); ``hello-ok`` grants the intersection of the asked and
  the offered features, in the client's order (rule 1).
* ``ack``: a data envelope with an integer ``seq`` >= 1 is delivered only when
  above the session's highest (rule 5) and is then acked, cumulatively, on the
  connection it came on: at most ``ACK_DELAY`` after the first unacked one, at
  once at the ``ACK_EVERY``-th. Acks are replies, so ``set_latency`` delays them
  like an echo. Refused data (``tether:error``) raises nothing (rule 6).
* ``resume``: a subscribe is answered with ``tether:subscribed`` (rule 9) and,
  when recovered, the history replay. Every published envelope is numbered and
  kept in the channel's history, whoever subscribes, but the decision is that
  only connections granted ``resume`` see the extension: they get the copy with
  ``offset``/``epoch``, ``tether:subscribed`` and replays; every other
  subscriber gets the plain §3 envelope, byte for byte what the reference
  server sends. A connection that did not negotiate ``resume`` (an old client,
  or one that asked only for ``ack``) so never meets a field or message type
  it did not ask for, and one encoded text per kind serves every subscriber.
* Broadcast mode (rule 8): a client's data on channel ``c`` is published to
  every subscriber of ``c``; a sender subscribed to ``c`` gets that copy instead
  of the echo, one that is not gets the plain echo (no offset).

Published envelopes and the ``tether:subscribed`` answer with its replay are
never delayed by latency: they share one ordered path per connection with the
other frames, so each subscriber sees a channel's offsets in order, and a
replay before any live envelope.

Numbers: Python's JSON keeps integers integral (``1`` echoes as ``1``), and a
number too big for a float (``1e400``) is read as infinity, which goes out as
``null``, as ``JSON.stringify`` writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Coroutine,
    Deque,
    Dict,
    List,
    NamedTuple,
    Optional,
    Protocol,
    Tuple,
    TypeVar,
    Union,
)

from websockets.exceptions import ConnectionClosed

from .codec import encode, parse_json
from .hub import Hello, ServerProtocol
from .reliable import seq_of
from .state import Received, TetherConnection
from .store import StoreUnavailable
from .tokens import decode_token, now_ms
from .transport import GatedConnection, send_text

if TYPE_CHECKING:
    from .hub import Hub

_T = TypeVar("_T")

__all__ = [
    "ACK_DELAY",
    "ACK_EVERY",
    "FORCE_CLOSE_REASON",
    "Session",
    "SessionHost",
    "encode",
    "parse_json",
    "send_text",
]

log = logging.getLogger("tether_sync.server")

FORCE_CLOSE_REASON = "Server forced close"
MAX_LATENCY_MS = 2000
FLOOD_DEFAULT, FLOOD_MAX = 500, 1000
# Per-connection fault controls (our extension): how long they last by default and at most.
FAULT_DEFAULT_MS, FAULT_MAX_MS = 5000, 60000
# Acks (rule 5): seconds after the first unacked message (well inside the 50 ms
# the rule allows, so a busy loop's timer lag stays within it), and the count
# that makes an ack go at once.
ACK_DELAY = 0.02
ACK_EVERY = 64


class SessionHost(Protocol):
    """The server services a :class:`Session` uses (implemented by ``TetherServer``)."""

    @property
    def require_auth(self) -> bool:
        """Whether data and subscribe need a valid token."""

    @property
    def extensions(self) -> bool:
        """Whether the reliable-sessions extension (DESIGN §5) is served."""

    @property
    def broadcast_mode(self) -> bool:
        """Whether a client's data is published to the channel's subscribers."""

    def _hello(self, conn: TetherConnection, sid: str, features: Tuple[str, ...]) -> int:
        """Attach ``conn`` to session ``sid``; return the session's highest ``seq``."""

    def _goodbye(self, sid: str) -> None:
        """A connection of session ``sid`` ended."""

    @property
    def hub(self) -> Hub:
        """The hub whose store keeps sessions and channel history."""

    @property
    def blocking_store(self) -> bool:
        """Whether store calls do network I/O (they then run on a worker thread)."""

    def _accept_run(
        self, sid: str, owner: str, messages: List[Dict[str, Any]]
    ) -> Tuple[List[bool], int]:
        """Deliver data envelopes with a ``seq`` once: per message whether new, and the highest."""

    def _accept_one(self, sid: str, owner: str, message: Dict[str, Any]) -> Tuple[bool, int]:
        """:meth:`_accept_run` for one message: whether new, and the highest."""

    def _highest(self, sid: str) -> int:
        """The session's highest accepted ``seq``."""

    def _publish(self, channel: str, envelope: Dict[str, Any]) -> int:
        """Publish ``envelope`` to the channel's subscribers (through history)."""

    def _record(self, record: Received, write: bool = True) -> None:
        """Store a received message and wake waiters (``write``: also to the record file)."""

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task the server tracks and cancels on stop."""

    def _local_fault(self, ws: GatedConnection, action: str, seconds: float) -> None:
        """Blackhole or pause reading one connection for ``seconds``."""


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


class _Frame(NamedTuple):
    """One received message, parsed and classified, before it is recorded and answered."""

    data: Union[str, bytes]
    message: Any
    is_json: bool
    kind: Optional[str]
    refused: bool
    seq: Optional[int]
    first: bool = False


class Session:
    """Serves one open WebSocket connection until it closes."""

    def __init__(self, host: SessionHost, conn: TetherConnection, ws: GatedConnection) -> None:
        """Bind the session to its server, its public record and its websocket."""
        self.host = host
        self.conn = conn
        self.ws = ws
        # Frames handled so far: a hello is answered only as the first (rule 2).
        self.frames = 0
        # Set by an accepted hello: the session id and the granted features.
        self.sid: Optional[str] = None
        self.ack_on = False
        self.resume_on = False
        # Messages with a seq since the last ack went out, and the ack's timer.
        self.unacked = 0
        self.ack_timer: Optional[asyncio.TimerHandle] = None
        # This connection as a claim owner in the hub's store, and the
        # session-wide highest the last accepted run reported.
        self.owner = host.hub._new_owner()
        self.highest = 0
        # Rules 1-2 (which hello is answered, which features are granted).
        self.proto = ServerProtocol()

    async def run(self) -> None:
        """Read and handle messages in arrival order until the connection ends."""
        try:
            await self._read_loop()
        finally:
            if self.ack_timer is not None:
                self.ack_timer.cancel()
                self.ack_timer = None
            if self.sid is not None:
                self.host._goodbye(self.sid)

    async def _read_loop(self) -> None:
        if self.host.blocking_store:
            await self._batched_loop()
            return
        while True:
            try:
                data = await self.ws.recv()
            except ConnectionClosed:
                return
            except UnicodeDecodeError:
                # websockets 13.0 raises this for a text frame that is not UTF-8
                # instead of failing the connection with 1007 as later versions do.
                await self.ws.close(1007, "invalid UTF-8")
                return
            if not await self._guarded(self.handle(data)):
                return

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run one step of handling; False when the connection must end."""
        try:
            await work
        except ConnectionClosed:
            # A reply found the connection closed. Messages that arrived
            # before the peer's close frame still wait in websockets' buffer:
            # keep reading (and recording) them until recv() says there are none.
            pass
        except StoreUnavailable:
            # Nothing the store did not confirm is acked: end the connection;
            # the client reconnects (to this node or another) and resends.
            log.warning("connection %d: store unavailable, closing with 1011", self.conn.id)
            await self.ws.close(1011, "store unavailable")
            return False
        except Exception:
            # One bad message must never end the connection, let alone the server.
            log.exception("connection %d: error while handling a message", self.conn.id)
        return True

    async def _batched_loop(self) -> None:
        """Read while the previous batch is being stored; store each batch's data as one run.

        With a store on the network (Redis), a run of data envelopes costs one
        claim and one commit whatever its length, and one ack covers it.
        """
        inbox: Deque[Union[str, bytes]] = deque()
        wake = asyncio.Event()
        room = asyncio.Event()
        room.set()
        ended = False

        async def reader() -> None:
            nonlocal ended
            try:
                while True:
                    await room.wait()
                    try:
                        data = await self.ws.recv()
                    except ConnectionClosed:
                        return
                    except UnicodeDecodeError:
                        await self.ws.close(1007, "invalid UTF-8")
                        return
                    inbox.append(data)
                    if len(inbox) >= 512:
                        room.clear()  # backpressure: read no further until handled
                    wake.set()
            finally:
                ended = True
                wake.set()

        task = asyncio.get_running_loop().create_task(reader())
        try:
            while True:
                await wake.wait()
                wake.clear()
                if not inbox:
                    if ended:
                        return
                    continue
                batch = list(inbox)
                inbox.clear()
                room.set()
                if not await self._guarded(self._handle_batch(batch)):
                    return
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _handle_batch(self, batch: List[Union[str, bytes]]) -> None:
        run: List[_Frame] = []
        for data in batch:
            frame = self._prepare(data)
            if frame.seq is not None:
                run.append(frame)
                if len(run) >= ACK_EVERY:  # rule 5: acked at the 64th (count_for_ack)
                    await self._store_run(run)
                    run = []
                continue
            if run:
                await self._store_run(run)
                run = []
            await self._finish(frame, False)
        if run:
            await self._store_run(run)
        if self.unacked:
            await self.send_ack()

    async def _store_run(self, run: List[_Frame]) -> None:
        assert self.sid is not None
        messages = [frame.message for frame in run]
        flags, highest = await self._call(self.host._accept_run, self.sid, self.owner, messages)
        self.highest = max(self.highest, highest)
        for frame, delivered in zip(run, flags):
            await self._finish(frame, not delivered)

    async def _call(self, func: Callable[..., _T], *args: Any) -> _T:
        """Call a store-backed function: on a worker thread when the store does I/O."""
        if not self.host.blocking_store:
            return func(*args)
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    # Dispatch

    @staticmethod
    def classify(message: Any) -> Optional[str]:
        """Name the kind of a parsed message, in the reference server's dispatch order.

        Returns:
            ``"ping"``, ``"auth"``, ``"control"``, ``"tunnel"`` (a control inside a
            data envelope), ``"data"``, ``"subscribe"``, ``"unsubscribe"``, or None
            for anything the server ignores. ``"tether:hello"`` is None here too:
            :meth:`handle` picks it out only when the extension is on.
        """
        if not isinstance(message, dict) or "type" not in message:
            return None
        kind = message["type"]
        if kind == "tether:ping":
            return "ping"
        if kind == "tether:auth":
            return "auth"
        if kind == "tether:control":
            return "control"
        if "channel" not in message:
            return None
        if kind == "data":
            payload = message.get("payload")
            if isinstance(payload, dict) and payload.get("type") == "tether:control":
                return "tunnel"
            return "data"
        if kind in ("subscribe", "unsubscribe"):
            return str(kind)
        return None

    async def handle(self, data: Union[str, bytes]) -> None:
        """Record one message, then answer it as the protocol says."""
        frame = self._prepare(data)
        duplicate = False
        if frame.seq is not None:
            assert self.sid is not None  # ack_on is set by an accepted hello
            if self.host.blocking_store:
                flags, highest = await self._call(
                    self.host._accept_run, self.sid, self.owner, [frame.message]
                )
                duplicate = not flags[0]
            else:  # one process: no hop, no batch
                delivered, highest = self.host._accept_one(self.sid, self.owner, frame.message)
                duplicate = not delivered
            self.highest = max(self.highest, highest)
        await self._finish(frame, duplicate)

    def _prepare(self, data: Union[str, bytes]) -> _Frame:
        """Parse and classify one message; its ``seq`` when it must go through the store."""
        message, is_json = parse_json(data)
        first = self.frames == 0
        self.frames += 1
        kind = self.classify(message)
        if (
            kind is None
            and self.host.extensions
            and isinstance(message, dict)
            and message.get("type") == "tether:hello"
        ):
            kind = "hello"
        refused = (
            self.host.require_auth and kind in ("data", "subscribe") and not self.conn.authenticated
        )
        # Dedupe (through the store) before the record, so the record (and the
        # --record file, which must hold every message an ack covers) says
        # whether it was delivered.
        seq: Optional[int] = None
        if self.ack_on and kind in ("data", "tunnel") and not refused:
            seq = seq_of(message)
        return _Frame(data, message, is_json, kind, refused, seq, first)

    async def _finish(self, frame: _Frame, duplicate: bool) -> None:
        """Record one prepared message and answer it (``duplicate``: its seq was not new)."""
        data, message, is_json = frame.data, frame.message, frame.is_json
        kind, refused, seq = frame.kind, frame.refused, frame.seq
        # Record before replying: a client that got the echo may assert the record.
        # A message with a seq was written to the --record file by its delivery.
        self.host._record(
            Received(
                conn_id=self.conn.id,
                binary=isinstance(data, bytes),
                raw=data,
                message=message,
                is_json=is_json,
                at=time.monotonic(),
                refused=refused,
                session=self.sid,
                duplicate=duplicate,
            ),
            seq is None,
        )
        if kind is None:
            log.debug("connection %d: ignored a message (%s)", self.conn.id, type(data).__name__)
            return
        assert isinstance(message, dict)  # classify() returned a kind
        if refused:
            error: Dict[str, Any] = {"type": "tether:error", "error": "auth required"}
            if "id" in message:
                error["id"] = message["id"]
            await self.reply(error)
        elif kind == "ping":
            pong: Dict[str, Any] = {"type": "tether:pong"}
            if "ts" in message:
                pong["ts"] = message["ts"]
            await self.reply(pong)
        elif kind == "hello":
            await self.hello(message, frame.first)
        elif kind == "auth":
            await self.auth(message.get("token"))
        elif kind == "control":
            await self.control(message)
        elif kind == "tunnel":
            if not duplicate:  # rule 7: executed once, never delivered
                await self.control(message["payload"])
        elif kind == "data":
            if not duplicate:
                await self.deliver(message)
        else:  # subscribe / unsubscribe: tracked, answered only on resume connections
            channel = message["channel"]
            if isinstance(channel, str):
                if kind == "subscribe":
                    await self.subscribe(channel, message)
                else:
                    self.conn._subscribe(channel, False)
                    self.host.hub._unsubscribe(self.conn._peer, channel)
        if seq is not None:
            await self.count_for_ack()

    async def deliver(self, message: Dict[str, Any]) -> None:
        """Echo accepted data, or publish it to the channel in broadcast mode (rule 8)."""
        echo: Dict[str, Any] = {"channel": message["channel"], "type": "data"}
        for key in ("payload", "id"):  # JSON.stringify leaves undefined out
            if key in message:
                echo[key] = message[key]
        channel = message["channel"]
        if self.host.broadcast_mode and isinstance(channel, str):
            self.host._publish(channel, echo)
            if channel in self.conn._subscriptions:
                return  # the published copy replaces the echo
        await self.reply(echo)

    # The extension (DESIGN §5)

    async def hello(self, message: Dict[str, Any], first: bool) -> None:
        """Answer a ``tether:hello``: ``hello-ok`` by rules 1-2, else ``tether:error``.

        The decision is the hub's sans-I/O :class:`~tether_sync.server.hub.ServerProtocol`'s,
        the same every adapter uses; the session is attached through the hub's store.
        """
        event = self.proto.hello(message, first)
        if not isinstance(event, Hello):
            await self.reply(event.text)  # the tether:error of rule 2
            return
        granted = list(self.proto.pending_features)
        acked = await self._call(self.host._hello, self.conn, event.session, tuple(granted))
        self.highest = acked
        answer = self.proto.hello_ok(acked)
        self.sid = self.proto.session
        self.ack_on = self.proto.ack_on
        self.resume_on = self.proto.resume_on
        log.info("connection %d: hello, features %s, acked %d", self.conn.id, granted, acked)
        await self.reply(answer.text)

    async def count_for_ack(self) -> None:
        """Note one more message with a seq; ack now at ``ACK_EVERY``, else arm the timer."""
        self.unacked += 1
        if self.unacked >= ACK_EVERY:
            await self.send_ack()
        elif self.ack_timer is None:
            self.ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._ack_due)

    def _ack_due(self) -> None:
        self.ack_timer = None
        if self.unacked:
            self.host._spawn(self.send_ack())

    async def send_ack(self) -> None:
        """Send a cumulative ``tether:ack`` with the session's highest ``seq``."""
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        self.unacked = 0
        assert self.sid is not None
        # One process: read the session-wide highest (another connection of
        # the session may have raised it). A remote store: the highest its
        # last commit for this connection reported, so no round trip per ack.
        highest = self.highest if self.host.blocking_store else self.host._highest(self.sid)
        await self.reply(ServerProtocol.ack(highest).text)

    async def subscribe(self, channel: str, message: Dict[str, Any]) -> None:
        """Subscribe; a ``resume`` connection gets ``tether:subscribed``, then any replay.

        The hub buffers live envelopes while it reads the history and merges
        them after the replay, so none slips in before or into it.
        """
        self.conn._subscribe(channel, True)
        epoch, offset = message.get("epoch"), message.get("offset")
        hub = self.host.hub
        await self._call(hub._subscribe, self.conn._peer, channel, epoch, offset, self.resume_on)

    async def auth(self, token: Any) -> None:
        """Check a presented token and answer ``tether:auth-ok``."""
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
        await self.reply({"type": "tether:auth-ok", "ok": ok})

    async def control(self, message: Dict[str, Any]) -> None:
        """Run a ``tether:control`` action; unknown actions do nothing."""
        action = message.get("action")
        if action == "force-close":
            log.info("connection %d: force-close requested", self.conn.id)
            await self.ws.close(1000, FORCE_CLOSE_REASON)
        elif action == "set-latency":
            ms = _clamp(message.get("ms"), 0, MAX_LATENCY_MS, 0)
            self.conn._set(_latency=ms / 1000.0)
            # Acks are never delayed, so they may overtake replies still waiting.
            await self.send(self._ack("set-latency", ms=ms))
        elif action == "flood":
            count = _clamp(message.get("count"), 1, FLOOD_MAX, FLOOD_DEFAULT)
            await self.send(self._ack("flood", count=count))
            # ``for (i = 0; i < count; i++)``: a fractional count rounds up.
            for index in range(math.ceil(count)):
                frame = {
                    "channel": "flood",
                    "type": "data",
                    "payload": {"index": index, "ts": int(now_ms())},
                    "id": f"flood-{index}",
                }
                if not await self.send(encode(frame)):
                    break
        elif action == "drop":
            log.info("connection %d: drop requested", self.conn.id)
            self.ws.abort_with_reset()
        elif action in ("blackhole", "pause-reading"):
            ms = _clamp(message.get("ms"), 0, FAULT_MAX_MS, FAULT_DEFAULT_MS)
            # Fault first, so that a client holding the ack knows the fault is on;
            # the ack itself is the last frame out, past the blackhole's send check.
            self.host._local_fault(self.ws, str(action), ms / 1000.0)
            try:
                await self.ws.send(self._ack(str(action), ms=ms))
            except ConnectionClosed:
                pass

    @staticmethod
    def _ack(action: str, **fields: Any) -> str:
        return encode({"type": "tether:control-ack", "action": action, **fields})

    # Output

    async def reply(self, message: Union[Dict[str, Any], str]) -> None:
        """Send a reply through this connection's latency (pong, auth-ok, echo, error).

        Args:
            message: The reply, or its encoded text.
        """
        text = message if isinstance(message, str) else encode(message)
        delay = self.conn.latency
        if delay <= 0:
            await self.send(text)
            return
        # Each reply gets its own timer, as the reference's setTimeout does: a later
        # latency change does not affect replies already waiting.
        spawn: Callable[[], None] = lambda: self.host._spawn(self.send(text))  # noqa: E731
        asyncio.get_running_loop().call_later(delay, spawn)

    async def send(self, text: str) -> bool:
        """Send a text frame, in order, unless blackholed; False if it could not go out."""
        return await self.ws.sender.send(text)
