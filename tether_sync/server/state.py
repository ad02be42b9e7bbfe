"""What the server remembers: received-message records and per-connection state.

Both are written only on the server's event-loop thread, under the server's
condition lock, and read from any thread (tests, the demo panel). Readers get
copies or immutable values, never live containers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Protocol,
    Set,
    Union,
)

from tether_sync.redact import redact_url

from .tokens import now_ms

if TYPE_CHECKING:
    from .transport import GatedConnection

__all__ = ["OutgoingData", "Received", "TetherConnection"]

#: What :meth:`TetherConnection.send` accepts: text, bytes, or a JSON-able object.
OutgoingData = Union[str, bytes, Mapping[str, Any], List[Any]]


@dataclass(frozen=True)
class Received:
    """One message the server received, as it arrived.

    Attributes:
        conn_id: Id of the :class:`TetherConnection` it arrived on.
        binary: True for a binary frame, False for a text frame.
        raw: The message exactly as received (``bytes`` for binary, ``str`` for text).
        message: The parsed JSON value, or ``None`` when the data is not JSON
            (see ``is_json`` to tell that apart from a JSON ``null``).
        is_json: Whether ``raw`` parsed as JSON.
        at: ``time.monotonic()`` when the server read it.
        refused: True when the server refused it (``tether:error``, ``require_auth``).
        session: The session id of the connection's accepted ``tether:hello``, or None.
        duplicate: True for data whose ``seq`` was at or below the session's
            highest: acked, not delivered (DESIGN §5 rule 5).
    """

    conn_id: int
    binary: bool
    raw: Union[str, bytes]
    message: Any
    is_json: bool
    at: float
    refused: bool = False
    session: Optional[str] = None
    duplicate: bool = False

    @property
    def type(self) -> Optional[str]:
        """The message's ``type`` when it is a JSON object with a string type, else None."""
        if isinstance(self.message, dict):
            value = self.message.get("type")
            if isinstance(value, str):
                return value
        return None

    @property
    def channel(self) -> Any:
        """The message's ``channel`` when it is a JSON object, else None."""
        return self.message.get("channel") if isinstance(self.message, dict) else None

    @property
    def payload(self) -> Any:
        """The message's ``payload`` when it is a JSON object, else None."""
        return self.message.get("payload") if isinstance(self.message, dict) else None

    @property
    def seq(self) -> Any:
        """The message's ``seq`` when it is a JSON object, else None."""
        return self.message.get("seq") if isinstance(self.message, dict) else None


class _Owner(Protocol):
    """The server side of a :class:`TetherConnection` (implemented by ``TetherServer``)."""

    def _send_to(self, conn: TetherConnection, data: OutgoingData) -> bool: ...

    def _close_conn(self, conn: TetherConnection, code: int, reason: str) -> bool: ...

    def _drop_conn(self, conn: TetherConnection) -> bool: ...


class TetherConnection:
    """One WebSocket connection the server accepted (handshake completed).

    Attribute reads are thread-safe snapshots. The methods that act on the
    connection (:meth:`send`, :meth:`close`, :meth:`drop`) may be called from
    any thread.

    Attributes:
        id: Server-wide number, unique for the server object's lifetime (never reused
            across restarts).
        path: The request path, e.g. ``"/"`` or ``"/ws?room=1"``.
        headers: Request headers, keys lower-cased (repeated headers joined by ``", "``).
        remote_address: The peer's ``(host, port, ...)``.
        opened_at: ``time.monotonic()`` when the handshake completed.
    """

    def __init__(
        self,
        conn_id: int,
        ws: GatedConnection,
        owner: _Owner,
        lock: threading.Condition,
        *,
        latency: float = 0.0,
    ) -> None:
        """Create the record; the server does this once the handshake completed."""
        self.id = conn_id
        self._ws = ws
        self._owner = owner
        self._lock = lock
        request = ws.request
        self.path: str = request.path if request is not None else "/"
        headers: Dict[str, str] = {}
        if request is not None:
            for name, value in request.headers.raw_items():
                key = name.lower()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.headers: Mapping[str, str] = headers
        self.remote_address: Any = ws.remote_address
        self.opened_at = time.monotonic()
        self._latency = latency
        self._subscriptions: Set[str] = set()
        self._tokens: List[str] = []
        self._auth_exp_ms: Optional[float] = None
        self._auth_sub: Optional[str] = None
        self._open = True
        self._closed_at: Optional[float] = None
        self._close_code: Optional[int] = None
        self._close_reason: Optional[str] = None
        self._session: Optional[str] = None
        self._features: FrozenSet[str] = frozenset()
        # The hub's view of this connection (set by the server once registered).
        self._peer: Any = None

    def __repr__(self) -> str:
        # Deliberately no token here: reprs end up in logs and test reports.
        state = "open" if self._open else f"closed {self._close_code}"
        return f"<TetherConnection {self.id} {redact_url(self.path)!r} {state}>"

    # Snapshots

    @property
    def open(self) -> bool:
        """Whether the connection is still open (its handler has not ended)."""
        return self._open

    @property
    def subscriptions(self) -> FrozenSet[str]:
        """Channels this connection subscribed to and did not unsubscribe from."""
        with self._lock:
            return frozenset(self._subscriptions)

    @property
    def session(self) -> Optional[str]:
        """The session id of this connection's accepted ``tether:hello``, or None."""
        return self._session

    @property
    def features(self) -> FrozenSet[str]:
        """The extension features granted in ``hello-ok`` (empty without a hello)."""
        return self._features

    @property
    def token(self) -> Optional[str]:
        """The last token this connection presented (valid or not), or None."""
        with self._lock:
            return self._tokens[-1] if self._tokens else None

    @property
    def tokens(self) -> List[str]:
        """Every string token this connection presented, in order."""
        with self._lock:
            return list(self._tokens)

    @property
    def auth_sub(self) -> Optional[str]:
        """``sub`` of the token accepted by the last successful ``tether:auth``, or None."""
        return self._auth_sub

    @property
    def auth_expires_at(self) -> Optional[float]:
        """``exp`` (ms since epoch) of the token accepted by the last ``tether:auth``."""
        return self._auth_exp_ms

    @property
    def authenticated(self) -> bool:
        """Whether the connection holds a token that is valid *now* (wall clock)."""
        exp = self._auth_exp_ms
        return exp is not None and exp > now_ms()

    @property
    def latency(self) -> float:
        """Delay in seconds applied to this connection's pong, auth-ok and echo replies."""
        return self._latency

    @property
    def blackholed(self) -> bool:
        """Whether the blackhole fault holds this connection (no reads, no writes)."""
        return self._ws.blackholed

    @property
    def reading_paused(self) -> bool:
        """Whether the pause-reading fault holds this connection."""
        return self._ws.reading_paused

    @property
    def buffered_amount(self) -> int:
        """Bytes the server sent to this connection that the kernel has not taken yet."""
        return self._ws.write_buffer_size

    @property
    def closed_at(self) -> Optional[float]:
        """``time.monotonic()`` when the connection ended, or None while open."""
        return self._closed_at

    @property
    def close_code(self) -> Optional[int]:
        """The close code the peer sent (1006 if none came: reset or no reply), None while open."""
        return self._close_code

    @property
    def close_reason(self) -> Optional[str]:
        """The close reason, None while open."""
        return self._close_reason

    # Actions (any thread)

    def send(self, data: OutgoingData) -> bool:
        """Send one message to this client, unprompted.

        Args:
            data: ``str`` goes as a text frame, ``bytes`` as a binary frame, and a
                dict or list is JSON-encoded into a text frame.

        Returns:
            Whether the message was handed to the connection (False if it is
            closed or blackholed).
        """
        return self._owner._send_to(self, data)

    def close(self, code: int = 1000, reason: str = "") -> bool:
        """Start a clean close handshake with ``code`` and ``reason``; False if not open."""
        return self._owner._close_conn(self, code, reason)

    def drop(self) -> bool:
        """Reset this TCP connection abruptly (RST, no close frame); False if already gone."""
        return self._owner._drop_conn(self)

    # Mutators (event-loop thread only, caller holds no lock)

    def _set(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)
            self._lock.notify_all()

    def _subscribe(self, channel: str, on: bool) -> None:
        with self._lock:
            if on:
                self._subscriptions.add(channel)
            else:
                self._subscriptions.discard(channel)
            self._lock.notify_all()

    def _present_token(
        self, token: Optional[str], exp_ms: Optional[float], sub: Optional[str]
    ) -> None:
        with self._lock:
            if token is not None:
                self._tokens.append(token)
            self._auth_exp_ms = exp_ms
            self._auth_sub = sub
            self._lock.notify_all()
