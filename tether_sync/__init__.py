"""tether_sync: a resilient, threaded, synchronous WebSocket client for blocking Python.

See DESIGN §2 for the contract; everything public is re-exported here.
"""

import logging as _logging

from . import logfields as _logfields
from .client import TetherClient
from .delivery import Delivery
from .events import (
    AuthRefreshedEvent,
    BackpressureEvent,
    CloseEvent,
    ErrorEvent,
    FlushedEvent,
    MessageEvent,
    OpenEvent,
    QueuedEvent,
    ReconnectingEvent,
    RecoveryEvent,
    StateChangeEvent,
)
from .exceptions import (
    AuthError,
    ClientClosed,
    ConnectTimeout,
    ProtocolError,
    QueueFull,
    ServerError,
    TetherError,
)
from .options import Auth, Backpressure, Heartbeat, Queue, Reconnect
from .state import State
from .stats import Stats
from .subscription import Subscription
from .version import __version__

# A library leaves output to the application (DESIGN §8): with no logging
# configured, nothing reaches stderr through logging.lastResort. Every record
# carries the client's structured fields (see tether_sync.logfields).
_logger = _logging.getLogger("tether_sync")
if not any(isinstance(h, _logging.NullHandler) for h in _logger.handlers):
    _logger.addHandler(_logging.NullHandler())
_logfields.install(_logger)
del _logger

__all__ = [
    "Auth",
    "AuthError",
    "AuthRefreshedEvent",
    "Backpressure",
    "BackpressureEvent",
    "ClientClosed",
    "CloseEvent",
    "ConnectTimeout",
    "Delivery",
    "ErrorEvent",
    "FlushedEvent",
    "Heartbeat",
    "MessageEvent",
    "OpenEvent",
    "ProtocolError",
    "Queue",
    "QueueFull",
    "QueuedEvent",
    "Reconnect",
    "ReconnectingEvent",
    "RecoveryEvent",
    "ServerError",
    "State",
    "StateChangeEvent",
    "Stats",
    "Subscription",
    "TetherClient",
    "TetherError",
    "__version__",
]
