"""Event objects handed to ``client.on(name, handler)`` handlers.

Every event is a frozen dataclass with a ``type`` naming it (the name passed to
``on()``). None of them ever carries a token, so their reprs are safe to log.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

EVENT_NAMES = (
    "open",
    "close",
    "message",
    "reconnecting",
    "queued",
    "flushed",
    "backpressure",
    "state_change",
    "auth_refreshed",
    "recovery",
    "error",
)
"""Names accepted by ``TetherClient.on()``."""


@dataclasses.dataclass(frozen=True)
class OpenEvent:
    """The connection is open (and, with auth, the token was accepted)."""

    type: ClassVar[str] = "open"
    url: str
    """The URL actually connected to (with several endpoints, the one that answered),
    redacted: no password or secret query value (see :mod:`tether_sync.redact`)."""
    index: int = 0
    """Position of ``url`` in the client's list of endpoints (0: the first, primary)."""


@dataclasses.dataclass(frozen=True)
class CloseEvent:
    """A connection ended. Reconnection (if any) is announced separately."""

    type: ClassVar[str] = "close"
    code: int
    """The close code (1006 when the link dropped without a close frame)."""
    reason: str
    was_clean: bool
    """Whether close frames were exchanged both ways."""


@dataclasses.dataclass(frozen=True)
class MessageEvent:
    """An inbound message: a data envelope's payload, or any other inbound frame."""

    type: ClassVar[str] = "message"
    channel: Optional[str]
    """The envelope's channel; ``"default"`` with protocol ``raw``; ``None`` for
    inbound text that is no known Tether message."""
    payload: Any


@dataclasses.dataclass(frozen=True)
class ReconnectingEvent:
    """A reconnection attempt is scheduled."""

    type: ClassVar[str] = "reconnecting"
    attempt: int
    """Counted from 1 in each run of failures."""
    delay: float
    """Seconds until the attempt."""
    cause: Optional[BaseException] = None
    """Why the previous connection or attempt ended (refused, timed out, closed...)."""


@dataclasses.dataclass(frozen=True)
class QueuedEvent:
    """``send()`` queued a message while the client was not open."""

    type: ClassVar[str] = "queued"
    id: str
    channel: str
    payload: Any


@dataclasses.dataclass(frozen=True)
class FlushedEvent:
    """A message was handed to the socket."""

    type: ClassVar[str] = "flushed"
    id: str
    channel: str
    payload: Any


@dataclasses.dataclass(frozen=True)
class BackpressureEvent:
    """Flow control engaged: outbound draining paused, or an inbound buffer overflowed."""

    type: ClassVar[str] = "backpressure"
    direction: str
    """``"outbound"`` or ``"inbound"``."""
    depth: int
    """Outbound: ``buffered_amount`` in bytes. Inbound: messages in the full buffer."""
    channel: Optional[str] = None
    """Inbound only: the channel whose buffer overflowed (``None`` for the message stream)."""
    dropped: int = 0
    """Inbound only: messages dropped by this overflow."""


@dataclasses.dataclass(frozen=True)
class StateChangeEvent:
    """The client's state changed."""

    type: ClassVar[str] = "state_change"
    previous: str
    current: str


@dataclasses.dataclass(frozen=True)
class AuthRefreshedEvent:
    """The server accepted a (new) token. The token itself is never carried."""

    type: ClassVar[str] = "auth_refreshed"
    expires_at: Optional[float]
    """Wall-clock seconds since the epoch when the token expires, if known."""


@dataclasses.dataclass(frozen=True)
class RecoveryEvent:
    """A resubscribe could not recover what was missed on a channel (DESIGN §5).

    The application should resynchronise that channel from another source.
    """

    type: ClassVar[str] = "recovery"
    channel: str
    recovered: bool
    """Always False when raised: the server's history did not reach back far enough."""
    epoch: Optional[str]
    """The channel's current history epoch."""
    offset: int
    """The channel's newest offset: the next envelope carries ``offset + 1``."""


@dataclasses.dataclass(frozen=True)
class ErrorEvent:
    """Something went wrong that the caller did not see as an exception."""

    type: ClassVar[str] = "error"
    error: BaseException
