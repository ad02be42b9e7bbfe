"""Typed commands that user and helper threads post to the I/O loop.

A command is a frozen value; the loop runs it on the I/O thread. If the loop
has ended, :func:`refuse` answers it at once on the poster's thread, so no
caller ever waits on a command that nobody will run (DESIGN §4).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple, Union

from .deflate import DeflateParams
from .subscription import InboundBuffer


@dataclasses.dataclass(frozen=True)
class Connected:
    """A connector finished the handshake of ``attempt`` (the socket is now the loop's)."""

    attempt: int
    sock: Any  # the connected socket.socket (only loop.py touches it)
    header_expiry: Optional[float] = None
    deflate: Optional[DeflateParams] = None  # permessage-deflate agreed, or None


@dataclasses.dataclass(frozen=True)
class ConnectFailed:
    """A connector's handshake failed."""

    attempt: int
    error: BaseException


@dataclasses.dataclass(frozen=True)
class Token:
    """The token helper's answer to a token request of ``round``."""

    round: int
    token: Optional[str]
    expires_at: Optional[float]
    error: Optional[BaseException]
    frame: Optional[Tuple[int, bytes]] = None


@dataclasses.dataclass(frozen=True)
class Flush:
    """flush(): call ``done()`` once the queue, buffers and kernel are empty."""

    done: Callable[[], None]


@dataclasses.dataclass(frozen=True)
class Close:
    """close(): drain until ``deadline`` (monotonic seconds), then close."""

    deadline: Optional[float]


@dataclasses.dataclass(frozen=True)
class Subscribe:
    channel: str
    buffer: InboundBuffer


@dataclasses.dataclass(frozen=True)
class Unsubscribe:
    channel: str
    buffer: InboundBuffer


@dataclasses.dataclass(frozen=True)
class ResumeInbound:
    """A ``block`` consumer made room: hand over what was held, read again."""


@dataclasses.dataclass(frozen=True)
class Refresh:
    """refresh_auth(): ``waiter(error)`` once the server confirmed (``None``) or not."""

    waiter: Callable[[Optional[BaseException]], None]


Command = Union[
    Connected, ConnectFailed, Token, Flush, Close, Subscribe, Unsubscribe, ResumeInbound, Refresh
]


def refuse(command: Any, error: BaseException) -> None:
    """Answer ``command`` without running it (the loop has ended, or it failed)."""
    try:
        if isinstance(command, Flush):
            command.done()
        elif isinstance(command, Refresh):
            command.waiter(error)
        elif isinstance(command, Subscribe):
            command.buffer.close()
        elif isinstance(command, Connected):
            command.sock.close()
    except Exception:  # pragma: no cover - answering must never raise
        pass
