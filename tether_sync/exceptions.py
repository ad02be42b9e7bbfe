"""Exceptions raised by tether_sync.

The hierarchy::

    TetherError                 base of everything this package raises on purpose
    ├── QueueFull               send() with Queue(overflow="reject") and a full queue
    ├── ClientClosed            the client is closed (or closed before a message went out)
    ├── AuthError               the server refused the token, or no token could be had
    ├── ConnectTimeout          connect(wait=True) ran out of time
    ├── ProtocolError           the peer broke RFC 6455 or the Tether protocol
    └── ServerError             a ``tether:error`` the server sent about one of our messages

Blocking calls that run out of time raise the built-in :class:`TimeoutError`,
except ``flush()`` and ``close()``, which return a result instead. Tokens never
appear in an exception message.
"""

from __future__ import annotations

from typing import Optional


class TetherError(Exception):
    """Base class of every exception raised by tether_sync."""


class QueueFull(TetherError):
    """The outbound queue is full and its overflow policy is ``"reject"``."""


class ClientClosed(TetherError):
    """The client is closed, or was closed before the message could be written."""


class AuthError(TetherError):
    """The server refused the token, or ``get_token()`` could not supply one."""


class ConnectTimeout(TetherError, TimeoutError):
    """``connect(wait=True)`` did not reach the ``open`` state in time."""


class ProtocolError(TetherError):
    """The peer violated the WebSocket or Tether protocol.

    Attributes:
        close_code: The WebSocket close code that this violation calls for
            (RFC 6455 §7.4.1), e.g. 1002 or 1007.
    """

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class SubprotocolRefused(ProtocolError):
    """The server accepted none of the offered subprotocols: retrying cannot help.

    A :class:`ProtocolError`; the client stops (state ``closed``) with it as
    the ``error`` event, as after a final auth refusal.
    """


class ServerError(TetherError):
    """The server answered one of our messages with ``tether:error``.

    Attributes:
        reason: The server's ``error`` text.
        message_id: The ``id`` of the refused message, if the server gave one.
    """

    def __init__(self, reason: str, message_id: Optional[str] = None) -> None:
        super().__init__(f"server refused message {message_id!r}: {reason}")
        self.reason = reason
        self.message_id = message_id
