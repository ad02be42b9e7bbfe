"""Reliable sessions on your own server (:class:`Hub`), and the bundled server built on it.

:class:`Hub` (DESIGN §7) serves the Tether protocol and its reliable-sessions
extension inside the user's own server: python-websockets, Starlette/FastAPI
or a threaded server. :class:`MemoryStore` keeps its state in one process;
``RedisStore`` (extra ``tether-sync[redis]``) lets several nodes be one service.

:class:`TetherServer` is the bundled server (``tether-sync serve``), built on ``websockets``
and on a :class:`Hub`.

It speaks the wire protocol of the reference tether-ws demo server (see
``TETHER-WIRE.md``) and adds what tests and demos need: enforced auth
(``require_auth``), subscriptions with :meth:`TetherServer.broadcast`, a record of
every received message, and faults (drop, stop/restart, blackhole,
pause-reading, latency, forced close). It also speaks the whole
reliable-sessions extension of DESIGN §5 (``tether:hello``, acks and dedupe by
session and ``seq``, per-channel history with ``offset``/``epoch`` and resume),
switched off with ``extensions=False``, and offers broadcast channels
(``broadcast=True``), an append-only record file of accepted data
(``record_path=``) and permessage-deflate (``compression="deflate"``).

Importing this package imports ``websockets`` (the ``tether-sync[server]``
extra); ``import tether_sync`` alone never does.
"""

from typing import Any

from .cli import serve_main
from .core import TetherServer
from .hub import Hub, HubMetrics, Message, ServerProtocol
from .state import OutgoingData, Received, TetherConnection
from .store import MemoryStore, Store, StoreUnavailable
from .tokens import decode_token, is_token_valid, mint_token, token_expiry_ms

__all__ = [
    "Hub",
    "HubMetrics",
    "MemoryStore",
    "Message",
    "OutgoingData",
    "Received",
    "RedisStore",
    "ServerProtocol",
    "Store",
    "StoreUnavailable",
    "TetherConnection",
    "TetherServer",
    "decode_token",
    "is_token_valid",
    "mint_token",
    "serve_main",
    "token_expiry_ms",
]


def __getattr__(name: str) -> Any:
    # RedisStore needs redis-py (the ``redis`` extra): imported on first use.
    if name == "RedisStore":
        from .redis_store import RedisStore

        return RedisStore
    raise AttributeError(name)
