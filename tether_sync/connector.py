"""One connection attempt's opening handshake, as run on a connector thread.

The loop starts a short-lived connector thread per attempt (websocket-client's
handshake is blocking) and posts what :func:`handshake` returns: a
:class:`~tether_sync.commands.Connected` that hands the socket over, or a
:class:`~tether_sync.commands.ConnectFailed`. This module starts no thread. It
makes the TCP connection itself (:func:`open_socket`: abortable, see there) and
:mod:`~tether_sync.transport` does the rest of the handshake with it.
:class:`Attempts` is the loop's bookkeeping of the attempt in progress: its
number (a late answer from an abandoned attempt is stale), its :class:`Dial`
(so a timeout or close() can abort it, and a timeout can name what it was
waiting for), and the handshake auth refusals in a row.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from typing import Any, Callable, Dict, Optional

from websocket._socket import DEFAULT_SOCKET_OPTION
from websocket._url import get_proxy_info, parse_url

from . import commands as cmd
from . import transport
from .auth import TokenRefresher
from .exceptions import AuthError
from .loopconfig import LoopConfig

_ssl_socket: Optional[Callable[[socket.socket, Dict[str, Any], str], Any]]
try:  # websocket-client's own TLS wrapping (sslopt, SNI, its CA bundle variable)
    from websocket._http import _ssl_socket
except ImportError:  # pragma: no cover - then websocket-client connects wss:// itself
    _ssl_socket = None

# Seconds: how long the connector's own TCP connect waits in select() before it
# looks at the abort flag again (the bound on how late close() sees it end).
ABORT_POLL = 0.05

# Keys of ws_options that put a proxy (or the user's own socket) in the way:
# websocket-client then connects on its own.
_PROXY_KEYS = ("http_proxy_host", "proxy_type", "socket")

# Seconds the connector's own timeouts run past connect_timeout. The bound of an
# attempt is the loop's timer, which aborts the connector and names the phase;
# these are a backstop that must not win the race against it.
BACKSTOP = 1.0

TCP = "the TCP connect"
TLS = "the TLS handshake"
UPGRADE = "the WebSocket handshake"


class Dial:
    """One attempt as its connector thread runs it, and the handle that aborts it.

    Attributes:
        ws: The websocket-client object the connector handshakes with.
        stage: What the connector is waiting for (:data:`TCP`, :data:`TLS`,
            :data:`UPGRADE`), named by a connect timeout. Written by the
            connector, read by the I/O thread (a str: atomic).
        sock: The socket being connected, while the connector owns it.
    """

    def __init__(self) -> None:
        self.ws: Any = transport.new_handshaker()
        self.stage = TCP
        self.sock: Optional[socket.socket] = None
        self._aborted = threading.Event()  # its one purpose: abort() was called

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def abort(self) -> None:
        """Wake the connector wherever it blocks (any thread; idempotent, best effort).

        The TCP connect sees the flag within :data:`ABORT_POLL`; TLS and the HTTP
        upgrade block in a recv() that a shutdown() of their socket ends.
        """
        self._aborted.set()
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        transport.abort(self.ws)


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
    try:
        headers = cfg.headers() if callable(cfg.headers) else cfg.headers
        if header_auth:
            assert auth is not None and auth.options.header
            token, exp = auth.get_blocking(auth.options.timeout)
            name = auth.options.header
            value = f"Bearer {token}" if name.lower() == "authorization" else token
            headers = {**(headers or {}), name: value}
        extra = dict(cfg.ws_options)
        sock = open_socket(dial, url, cfg)
        if sock is not None:
            extra["socket"] = sock  # websocket-client then only does the upgrade
        dial.stage = UPGRADE
        sock = transport.handshake(
            ws,
            url,
            timeout=cfg.connect_timeout + BACKSTOP,
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
        sock, dial.sock = dial.sock, None
        if sock is not None:
            sock.close()
        return cmd.ConnectFailed(attempt, exc)
    return cmd.Connected(attempt, sock, exp, params)


def open_socket(dial: Dial, url: str, cfg: LoopConfig) -> Optional[socket.socket]:
    """The TCP connect (and TLS for ``wss://``), abortable by :meth:`Dial.abort`.

    websocket-client's own TCP connect blocks in ``connect()`` for up to the
    timeout, on a socket nobody else can reach (``close()`` could not end it:
    the connector outlived close(timeout=2) by 9.7 s). So the connector makes
    the socket itself, publishes it on ``dial`` and connects it without blocking,
    waking every :data:`ABORT_POLL` to look at the abort flag (portable: a
    shutdown() of a connecting socket wakes connect() on Linux only). The
    connected socket goes to websocket-client, which then only does the upgrade.

    Returns:
        The connected socket; or None where websocket-client must connect on
        its own: a proxy (in ``ws_options`` or the environment), the user's own
        socket, or a websocket-client without its TLS helper. Name resolution
        blocks either way (no portable way to abort getaddrinfo()).

    Raises:
        OSError: the connect failed, timed out or was aborted.
    """
    if any(key in cfg.ws_options for key in _PROXY_KEYS):
        return None
    hostname, port, _, secure = parse_url(url)
    if secure and _ssl_socket is None:
        return None  # pragma: no cover
    if get_proxy_info(hostname, secure)[0]:
        return None
    deadline = time.monotonic() + cfg.connect_timeout + BACKSTOP
    addresses = socket.getaddrinfo(hostname, port, 0, socket.SOCK_STREAM, socket.SOL_TCP)
    error: Optional[OSError] = None
    for family, kind, proto, _, address in addresses:
        sock = dial.sock = socket.socket(family, kind, proto)
        try:
            for option in (*DEFAULT_SOCKET_OPTION, *dial.ws.sock_opt.sockopt):
                sock.setsockopt(*option)
            _connect(dial, sock, address, deadline)
        except OSError as exc:
            dial.sock = None
            sock.close()
            if exc.errno not in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH):
                raise
            error = exc  # the next address, as websocket-client does
            continue
        sock.settimeout(cfg.connect_timeout + BACKSTOP)
        if secure:
            dial.stage = TLS
            assert _ssl_socket is not None
            # The handshake after publishing the TLS socket (wrapping detaches the
            # plain one): an abort then shuts down the socket the handshake reads.
            options = {**(cfg.sslopt or {}), "do_handshake_on_connect": False}
            sock = dial.sock = _ssl_socket(sock, options, hostname)
            if dial.aborted:
                raise ConnectionAbortedError(errno.ECONNABORTED, "connection attempt aborted")
            sock.do_handshake()
        return sock
    raise error or OSError(f"no address for {hostname}")


def _connect(dial: Dial, sock: socket.socket, address: Any, deadline: float) -> None:
    """Connect ``sock`` without blocking for longer than :data:`ABORT_POLL` at a time."""
    sock.setblocking(False)
    err = sock.connect_ex(address)
    while err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
        if dial.aborted:
            raise ConnectionAbortedError(errno.ECONNABORTED, "connection attempt aborted")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(errno.ETIMEDOUT, "TCP connect timed out")
        _, writable, _ = select.select([], [sock], [], min(ABORT_POLL, left))
        if writable:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            break
    if dial.aborted:
        raise ConnectionAbortedError(errno.ECONNABORTED, "connection attempt aborted")
    if err:
        raise OSError(err, os.strerror(err))


__all__ = ["ABORT_POLL", "BACKSTOP", "Attempts", "Dial", "handshake", "open_socket"]
