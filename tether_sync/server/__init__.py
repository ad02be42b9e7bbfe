"""The bundled Tether-protocol server (``tether-sync serve``), built on ``websockets``.

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

from .cli import serve_main
from .core import TetherServer
from .state import OutgoingData, Received, TetherConnection
from .tokens import decode_token, is_token_valid, mint_token, token_expiry_ms

__all__ = [
    "OutgoingData",
    "Received",
    "TetherConnection",
    "TetherServer",
    "decode_token",
    "is_token_valid",
    "mint_token",
    "serve_main",
    "token_expiry_ms",
]
