"""One connection attempt's opening handshake, as run on a connector thread.

The loop starts a short-lived connector thread per attempt (websocket-client's
handshake is blocking) and posts what :func:`handshake` returns: a
:class:`~tether_sync.commands.Connected` that hands the socket over, or a
:class:`~tether_sync.commands.ConnectFailed`. This module starts no thread. It
touches no socket itself: :mod:`~tether_sync.transport` connects (on sockets
the :class:`Dial` can abort) and does the handshake.
:class:`Attempts` is the loop's bookkeeping of the attempt in progress: its
number (a late answer from an abandoned attempt is stale), its :class:`Dial`
(so a timeout or close() can abort it, and a timeout can name what it was
waiting for), and the handshake auth refusals in a row.
"""

from __future__ import annotations

from typing import Any, List, Optional

from . import commands as cmd
from . import transport
from .auth import TokenRefresher
from .exceptions import AuthError, SubprotocolRefused
from .loopconfig import LoopConfig
from .options import check_headers

# Seconds the connector's own timeouts run past connect_timeout. The bound of an
# attempt is the loop's timer, which aborts the connector and names the phase;
# these are a backstop that must not win the race against it.
BACKSTOP = 1.0

# What an attempt through websocket-client's own connect waits for (a proxy:
# the stages are not told apart there).
THROUGH_PROXY = "the connection and WebSocket handshake"


class Dial:
    """One attempt as its connector thread runs it, and the handle that aborts it.

    Written by the connector and read by the I/O thread (or close()'s thread),
    one attribute at a time: no lock (a flag and references, each set atomically).

    Attributes:
        ws: The websocket-client object the connector handshakes with.
        stage: What the connector waits for (``transport.TCP``, ``TLS``,
            ``UPGRADE``), as a connect timeout names it.
        sock: The socket the connector blocks on, until it hands it over.
        aborted: :meth:`abort` was called.
    """

    def __init__(self) -> None:
        self.ws: Any = transport.new_handshaker()
        self.stage = transport.TCP
        self.sock: Any = None
        self.aborted = False

    def track(self, stage: str, sock: Any) -> bool:
        """The connector now waits for ``stage`` on ``sock``; False if aborted."""
        self.stage, self.sock = stage, sock
        return not self.aborted

    def abort(self) -> None:
        """End the connector's blocking call (any thread; idempotent, best effort):
        a shutdown() of its socket (the connector checks the flag between calls)."""
        self.aborted = True
        transport.abort(self)  # shuts down self.sock
        transport.abort(self.ws)  # websocket-client's own socket (a proxy)


class Attempts:
    """The connection attempt in progress, as the I/O thread sees it."""

    def __init__(self) -> None:
        self.handshaker: Optional[Dial] = None  # the attempt in progress, while it handshakes
        self.id = 0
        self.refusals = 0  # handshake auth refusals (HTTP 401/403) in a row

    def begin(self) -> tuple[int, Dial]:
        """A new attempt: its number and the handle its connector uses."""
        self.id += 1
        self.handshaker = Dial()
        return self.id, self.handshaker

    def settle(self, attempt: int) -> bool:
        """The connector of ``attempt`` answered: True if it is the one in progress
        (it is then over), False if stale (abandoned after a timeout or close())."""
        if attempt != self.id or self.handshaker is None:
            return False
        self.handshaker = None
        return True

    def abandon(self) -> Optional[str]:
        """Abort the attempt in progress, if any (its connector's late answer is now
        stale); what it was waiting for, or None if no attempt was in progress."""
        dial = self.handshaker
        if dial is None:
            return None
        dial.abort()
        self.id += 1
        self.handshaker = None
        return dial.stage

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
    attempt: int, dial: Dial, url: str, cfg: LoopConfig, auth: Optional[TokenRefresher]
) -> cmd.Command:
    """Connect ``dial`` to ``url``; never raises (a failure is a ``ConnectFailed``)."""
    # Runs on the connector thread: blocking is allowed here, and user code
    # (a headers callable) may run here, never on the I/O thread. This is
    # also where protocol "raw" fetches the token for its handshake header.
    header_auth = auth is not None and cfg.protocol == "raw" and auth.options.header
    exp: Optional[float] = None
    ws = dial.ws
    timeout = cfg.connect_timeout + BACKSTOP
    try:
        headers = cfg.headers
        if callable(headers):
            headers = check_headers(headers(), "headers()")
        if header_auth:
            assert auth is not None and auth.options.header
            token, exp = auth.get_blocking(auth.options.timeout)
            name = auth.options.header
            value = f"Bearer {token}" if name.lower() == "authorization" else token
            headers = {**(headers or {}), name: value}
        extra = dict(cfg.ws_options)
        # The TCP connect and TLS on sockets an abort reaches (see open_socket);
        # websocket-client then only does the upgrade.
        sock = transport.open_socket(
            url, timeout=timeout, ws_options=extra, sslopt=cfg.sslopt, track=dial.track
        )
        if sock is not None:
            extra["socket"] = sock
        else:
            dial.stage = THROUGH_PROXY
        sock = transport.handshake(
            ws,
            url,
            timeout=timeout,
            headers=headers,
            subprotocols=cfg.subprotocols,
            sslopt=cfg.sslopt,
            extra=extra,
            compression=cfg.compression,
        )
        dial.sock = None  # handed over: from here on the I/O thread's
        # The server's answer to the offer, checked here: a bad one fails the attempt.
        params = transport.accepted_deflate(ws, cfg.compression)
    except BaseException as exc:
        left, dial.sock = dial.sock, None
        if left is not None:
            left.close()
        return cmd.ConnectFailed(attempt, _refused_subprotocols(exc, cfg.subprotocols))
    return cmd.Connected(attempt, sock, exp, params)


def _refused_subprotocols(exc: BaseException, offered: Optional[List[str]]) -> BaseException:
    # websocket-client says only "Invalid WebSocket Header" when the server's
    # answer names none of the offered subprotocols (its _validate). With
    # subprotocols offered that is what it means in practice; a server whose
    # upgrade headers are otherwise broken is not fixed by retrying either.
    if offered and str(exc) == "Invalid WebSocket Header":
        names = ", ".join(offered)
        refused = SubprotocolRefused(
            f"the server accepted none of the offered subprotocols ({names})", 1002
        )
        refused.__cause__ = exc
        return refused
    return exc


__all__ = ["BACKSTOP", "Attempts", "Dial", "handshake"]
