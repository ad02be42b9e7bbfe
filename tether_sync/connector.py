"""One connection attempt's opening handshake, as run on a connector thread.

The loop starts a short-lived connector thread per attempt (websocket-client's
handshake is blocking) and posts what :func:`handshake` returns: a
:class:`~tether_sync.commands.Connected` that hands the socket over, or a
:class:`~tether_sync.commands.ConnectFailed`. This module starts no thread and
touches no socket itself; :mod:`~tether_sync.transport` does the handshake.
"""

from __future__ import annotations

from typing import Any, Optional

from . import commands as cmd
from . import transport
from .auth import TokenRefresher
from .loopconfig import LoopConfig


def handshake(
    attempt: int, ws: Any, url: str, cfg: LoopConfig, auth: Optional[TokenRefresher]
) -> cmd.Command:
    """Connect ``ws`` to ``url``; never raises (a failure is a ``ConnectFailed``)."""
    # Runs on the connector thread: blocking is allowed here, and user code
    # (a headers callable) may run here, never on the I/O thread. This is
    # also where protocol "raw" fetches the token for its handshake header.
    header_auth = auth is not None and cfg.protocol == "raw" and auth.options.header
    exp: Optional[float] = None
    try:
        headers = cfg.headers() if callable(cfg.headers) else cfg.headers
        if header_auth:
            assert auth is not None and auth.options.header
            token, exp = auth.get_blocking(auth.options.timeout)
            name = auth.options.header
            value = f"Bearer {token}" if name.lower() == "authorization" else token
            headers = {**(headers or {}), name: value}
        sock = transport.handshake(
            ws,
            url,
            timeout=cfg.connect_timeout,
            headers=headers,
            subprotocols=cfg.subprotocols,
            sslopt=cfg.sslopt,
            extra=cfg.ws_options,
            compression=cfg.compression,
        )
        # The server's answer to the offer, checked here: a bad one fails the attempt.
        params = transport.accepted_deflate(ws, cfg.compression)
    except BaseException as exc:
        return cmd.ConnectFailed(attempt, exc)
    return cmd.Connected(attempt, sock, exp, params)


__all__ = ["handshake"]
