"""What a session tells its caller, and the one outlet it and its sub-machines write through.

The events are values, in order (DESIGN §4: the parts talk through typed values):
the loop takes them with ``Session.events()`` and acts on each.

:class:`Output` exists because the session is now several objects (the session,
its heartbeat, auth gate and reliability): each of them emits events and writes
frames, and they must land in ONE ordered stream each way, as before the split.
So the session makes one :class:`Output` and hands it to each sub-machine,
instead of handing each a callback into itself. It also keeps the one rule about
writing while closing (RFC 6455 §5.5.1: after our close frame, nothing but a
close frame) in one place, :attr:`Output.muted`, which ``Session._set_phase``
sets.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple, Union

from . import envelope, frames
from .writebuf import Item, WriteBuffer


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


class Output:
    """The ordered events and frames of one session, shared with its sub-machines.

    Not a buffer of its own: frames go straight into the connection's
    :class:`~tether_sync.protocol.writebuf.WriteBuffer`, in the order they are
    made (the deflate context and the peer both need wire order).

    Args:
        buffer: The connection's write buffer.
        tether: Protocol ``tether`` (pings are ``tether:ping`` envelopes) or
            ``raw`` (pings are RFC 6455 ping frames).
    """

    __slots__ = ("_tether", "buffer", "events", "muted")

    def __init__(self, buffer: WriteBuffer, tether: bool) -> None:
        self.events: List[Event] = []
        """Emitted and not yet taken, in order."""
        self.buffer = buffer
        self.muted = False
        """Our close frame is out: every other frame is dropped (RFC 6455 §5.5.1)."""
        self._tether = tether

    def emit(self, event: Event) -> None:
        """Emit one event."""
        self.events.append(event)

    def take(self) -> List[Event]:
        """The events emitted so far; the outlet starts a new list."""
        events, self.events = self.events, []
        return events

    def frame(self, opcode: int, payload: bytes) -> None:
        """Write one frame that carries no message (dropped while muted, unless a close)."""
        if self.muted and opcode != frames.OP_CLOSE:
            return
        self.buffer.add_control(opcode, payload)

    def text(self, text: str) -> None:
        """Write one protocol text frame (an envelope of the session's own)."""
        self.frame(frames.OP_TEXT, text.encode())

    def ping(self, ts: int) -> None:
        """Write a ping carrying ``ts``, in the protocol's form (the pong echoes it)."""
        if self._tether:
            self.text(envelope.encode_ping(ts))
        else:
            self.frame(frames.OP_PING, str(ts).encode())


__all__ = [
    "Acked",
    "AuthAccepted",
    "AuthTrouble",
    "Closed",
    "Event",
    "Opened",
    "Output",
    "Problem",
    "Received",
    "Recovery",
    "Refused",
    "RoundTrip",
    "TokenNeeded",
    "Written",
]
