"""The Tether protocol, server side: what one connection does with each message.

Dispatch follows the reference server (``ws-handler.ts``) message by message;
see ``TETHER-WIRE.md``. Two of its bugs are deliberately not copied: in
``require_auth`` mode auth is enforced (S1), and a non-numeric ``ms``/``count``
counts as missing instead of leaking ``NaN``/``null`` (S5).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any, Callable, Coroutine, Dict, Optional, Protocol, Tuple, Union

from websockets.exceptions import ConnectionClosed

from .state import Received, TetherConnection
from .tokens import decode_token, now_ms
from .transport import GatedConnection

__all__ = ["FORCE_CLOSE_REASON", "Session", "SessionHost", "encode", "parse_json"]

log = logging.getLogger("tether_sync.server")

FORCE_CLOSE_REASON = "Server forced close"
MAX_LATENCY_MS = 2000
FLOOD_DEFAULT, FLOOD_MAX = 500, 1000
# Per-connection fault controls (our extension): how long they last by default and at most.
FAULT_DEFAULT_MS, FAULT_MAX_MS = 5000, 60000


class SessionHost(Protocol):
    """The server services a :class:`Session` uses (implemented by ``TetherServer``)."""

    @property
    def require_auth(self) -> bool:
        """Whether data and subscribe need a valid token."""

    def _record(self, record: Received) -> None:
        """Store a received message and wake waiters."""

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task the server tracks and cancels on stop."""

    def _local_fault(self, ws: GatedConnection, action: str, seconds: float) -> None:
        """Blackhole or pause reading one connection for ``seconds``."""


def _reject_constant(name: str) -> Any:
    # JSON.parse refuses NaN and Infinity, so such text is "not JSON" for us too.
    raise ValueError(f"non-standard JSON constant {name}")


def parse_json(data: Union[str, bytes]) -> Tuple[Any, bool]:
    """Parse a text or binary message as JSON.

    Returns:
        ``(value, True)`` on success, ``(None, False)`` when it is not JSON
        (including binary data that is not UTF-8).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_reject_constant), True
    except (ValueError, RecursionError):
        # ValueError: JSONDecodeError and UnicodeDecodeError. RecursionError:
        # JSON nested too deep for the parser, e.g. "[[[[...", which is valid.
        return None, False


def encode(message: Any) -> str:
    """Encode like ``JSON.stringify``: compact, key order kept, non-ASCII left as is.

    A lone surrogate (possible when a client sent ``"\\ud800"``) cannot be
    UTF-8 encoded for a text frame, so then it falls back to ``\\u`` escapes,
    which is also what ``JSON.stringify`` does.
    """
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text


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


class Session:
    """Serves one open WebSocket connection until it closes."""

    def __init__(self, host: SessionHost, conn: TetherConnection, ws: GatedConnection) -> None:
        """Bind the session to its server, its public record and its websocket."""
        self.host = host
        self.conn = conn
        self.ws = ws

    async def run(self) -> None:
        """Read and handle messages in arrival order until the connection ends."""
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
            try:
                await self.handle(data)
            except ConnectionClosed:
                # A reply found the connection closed. Messages that arrived
                # before the peer's close frame still wait in websockets' buffer:
                # keep reading (and recording) them until recv() says there are none.
                continue
            except Exception:
                # One bad message must never end the connection, let alone the server.
                log.exception("connection %d: error while handling a message", self.conn.id)

    # Dispatch

    @staticmethod
    def classify(message: Any) -> Optional[str]:
        """Name the kind of a parsed message, in the reference server's dispatch order.

        Returns:
            ``"ping"``, ``"auth"``, ``"control"``, ``"tunnel"`` (a control inside a
            data envelope), ``"data"``, ``"subscribe"``, ``"unsubscribe"``, or None
            for anything the server ignores.
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
        message, is_json = parse_json(data)
        kind = self.classify(message)
        refused = (
            self.host.require_auth and kind in ("data", "subscribe") and not self.conn.authenticated
        )
        # Record before replying: a client that got the echo may assert the record.
        self.host._record(
            Received(
                conn_id=self.conn.id,
                binary=isinstance(data, bytes),
                raw=data,
                message=message,
                is_json=is_json,
                at=time.monotonic(),
                refused=refused,
            )
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
        elif kind == "auth":
            await self.auth(message.get("token"))
        elif kind == "control":
            await self.control(message)
        elif kind == "tunnel":
            await self.control(message["payload"])
        elif kind == "data":
            echo: Dict[str, Any] = {"channel": message["channel"], "type": "data"}
            for key in ("payload", "id"):  # JSON.stringify leaves undefined out
                if key in message:
                    echo[key] = message[key]
            await self.reply(echo)
        else:  # subscribe / unsubscribe: tracked, never answered
            channel = message["channel"]
            if isinstance(channel, str):
                self.conn._subscribe(channel, kind == "subscribe")

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

    async def reply(self, message: Dict[str, Any]) -> None:
        """Send a reply through this connection's latency (pong, auth-ok, echo, error)."""
        text = encode(message)
        delay = self.conn.latency
        if delay <= 0:
            await self.send(text)
            return
        # Each reply gets its own timer, as the reference's setTimeout does: a later
        # latency change does not affect replies already waiting.
        spawn: Callable[[], None] = lambda: self.host._spawn(self.send(text))  # noqa: E731
        asyncio.get_running_loop().call_later(delay, spawn)

    async def send(self, text: str) -> bool:
        """Send a text frame now unless blackholed; False if it could not go out."""
        return await send_text(self.ws, text)


async def send_text(ws: GatedConnection, data: Union[str, bytes]) -> bool:
    """Send one frame on ``ws``, dropped silently when blackholed or closed.

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
