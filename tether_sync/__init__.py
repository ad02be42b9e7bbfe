"""tether_sync: a resilient, threaded, synchronous WebSocket client for blocking Python.

See DESIGN §2 for the contract; everything public is re-exported here.
"""

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
