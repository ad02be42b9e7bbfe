"""One connection attempt's opening handshake, as run on a connector thread.

The loop starts a short-lived connector thread per attempt (websocket-client's
handshake is blocking) and posts what :func:`handshake` returns: a
:class:`~tether_sync.commands.Connected` that hands the socket over, or a
:class:`~tether_sync.commands.ConnectFailed`. This module starts no thread and
touches no socket itself; :mod:`~tether_sync.transport` does the handshake.
:class:`Attempts` is the loop's bookkeeping of the attempt in progress: its
number (a late answer from an abandoned attempt is stale), its handshaker (so
a timeout or close() can abort it), and the handshake auth refusals in a row.
"""

from __future__ import annotations

from typing import Any, Optional

from . import commands as cmd
from . import transport
from .auth import TokenRefresher
from .exceptions import AuthError
from .loopconfig import LoopConfig


class Attempts:
    """The connection attempt in progress, as the I/O thread sees it."""

    def __init__(self) -> None:
        self.handshaker: Any = None  # the websocket-client object of the attempt in progress
        self.id = 0
        self.refusals = 0  # handshake auth refusals (HTTP 401/403) in a row

    def begin(self) -> tuple[int, Any]:
        """A new attempt: its number and the handshaker its connector uses."""
        self.id += 1
        self.handshaker = transport.new_handshaker()
        return self.id, self.handshaker

    def settle(self, attempt: int) -> bool:
        """The connector of ``attempt`` answered: True if it is the one in progress
        (it is then over), False if stale (abandoned after a timeout or close())."""
        if attempt != self.id or self.handshaker is None:
            return False
        self.handshaker = None
        return True

    def abandon(self) -> bool:
        """Abort the attempt in progress, if any (its connector's late answer is now stale)."""
        if self.handshaker is None:
            return False
        transport.abort(self.handshaker)
        self.id += 1
        self.handshaker = None
        return True

    def refused(self, cause: BaseException, has_auth: bool) -> tuple[bool, Optional[AuthError]]:
        """Whether ``cause`` is an auth refusal of the handshake (HTTP 401/403 with
        auth configured), counted; and the final error if it is the second in a row."""
        status = transport.http_status(cause)
        if status not in (401, 403) or not has_auth:
            return False, None
        # The same rule as a Tether auth refusal: one fresh token, then final.
        self.refusals += 1
        if self.refusals >= 2:
            return True, AuthError(f"the server refused the handshake with HTTP {status}, twice")
        return True, None


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


__all__ = ["Attempts", "handshake"]
