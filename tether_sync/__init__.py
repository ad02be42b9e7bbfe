"""tether_sync: a resilient, threaded, synchronous WebSocket client for blocking Python."""

from .exceptions import (
    AuthError,
    ClientClosed,
    ConnectTimeout,
    ProtocolError,
    QueueFull,
    ServerError,
    TetherError,
)
from .version import __version__

__all__ = [
    "AuthError",
    "ClientClosed",
    "ConnectTimeout",
    "ProtocolError",
    "QueueFull",
    "ServerError",
    "TetherError",
    "__version__",
]
