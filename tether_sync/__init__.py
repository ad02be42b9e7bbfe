"""tether_sync: a resilient, threaded, synchronous WebSocket client for blocking Python.

See DESIGN §2 for the contract; everything public is re-exported here.
"""

from . import logfields  # noqa: F401  (importing it sets up the tether_sync logger: see below)
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
from .redact import redact_url
from .state import State
from .stats import Stats
from .subscription import Subscription
from .version import __version__

# Logging (DESIGN §8): importing ``logfields`` gave the "tether_sync" logger a
# NullHandler (a library leaves output to the application: with no logging
# configured, nothing reaches stderr through logging.lastResort) and a filter
# that gives every record the client's structured fields.

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
    "redact_url",
]
