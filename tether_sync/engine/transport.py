"""Every socket call of the client: the handshake's (blocking) and the link's (not).

This module and :mod:`~tether_sync.engine.poller` are the only ones that touch a
socket (tests/test_layers.py holds them to it), so what the kernel and
websocket-client do is read in one place. It starts no thread and owns no
selector. Three parts, by who calls them:

* **The opening handshake** (a connector thread, see
  :mod:`~tether_sync.engine.attempts`): :func:`open_socket` does the TCP connect
  and TLS on sockets another thread can abort (:func:`abort`), then
  :func:`handshake` lets websocket-client do the upgrade (headers,
  subprotocols, proxies, redirects), and :func:`accepted_deflate` reads its
  answer to our permessage-deflate offer. All of it blocks, which is why it
  runs on a connector thread; the connected socket is then handed over.
* **The open link** (the I/O thread only): :class:`Link` holds the
  non-blocking socket and does the calls on it, with their would-block
  handling; its :class:`Interest` records what the socket is registered for
  with the selector (so the :class:`~tether_sync.engine.poller.Poller` calls
  the selector only on a :class:`Change`) and whether framed bytes wait for
  writability; its :class:`~tether_sync.engine.flow_control.OutboundFlow`
  holds the outbound high-water-mark state. Interest lives here, beside the
  socket it describes, not in the poller: the connection changes ``want_write``
  after every write, and the poller only reads it.
* **Kernel facts and checks** (any thread, no socket state): :func:`read_size`,
  :func:`kernel_unsent` (Linux ``SIOCOUTQ``), :func:`set_notsent_lowat`,
  :func:`http_status`, and :func:`validate_url`, which the client calls at
  construction so that a bad URL fails there, not in a connector.
"""

from __future__ import annotations

import dataclasses
import encodings.idna  # noqa: F401 - see below
import enum
import errno
import logging
import re
import socket
import ssl
import sys
from typing import Any, Callable, Dict, List, Optional, Union
from urllib.parse import urlsplit

import websocket
from websocket._socket import DEFAULT_SOCKET_OPTION
from websocket._url import get_proxy_info, parse_url

from ..exceptions import ProtocolError
from ..protocol import deflate
from ..protocol.session import Session
from ..redact import redact_url
from .flow_control import OutboundFlow

log = logging.getLogger("tether_sync")

_READ_SIZE = 256 * 1024  # bytes per recv(): take everything the kernel has at once
# One gathering write (sendmsg) takes at most this many buffers (IOV_MAX is
# 1024 on Linux and macOS) and adds none once this many bytes are offered.
GATHER_CHUNKS = 64
GATHER_BYTES = 1024 * 1024

# The handshake (connector thread) encodes host names with the "idna" codec,
# which Python imports lazily on first use. If a process forks while that
# thread holds the module's import lock (gunicorn --preload forking workers
# while the master's client connects), the child's first idna use hangs for
# ever. Importing it here, with tether_sync, on the importing thread, closes
# that window.

HeaderSpec = Union[Dict[str, str], List[str], None]

if sys.platform.startswith("linux"):
    import fcntl
    import termios

    # SIOCOUTQ is TIOCOUTQ on Linux: bytes in the send queue not yet acknowledged
    # by the peer (unsent + in flight).
    _SIOCOUTQ: Optional[int] = termios.TIOCOUTQ
else:  # pragma: no cover - only the user-space part of buffered_amount elsewhere
    _SIOCOUTQ = None


# permessage-deflate: the most a deflate stream can expand (a 258-byte match
# coded in about 2 bits: RFC 1951's limit is about 1032:1, zlib's own note).
_INFLATE_RATIO = 1032
# The smallest read of a compressed connection (below, the loop's per-read cost
# would dominate).
_MIN_COMPRESSED_READ = 4096


def read_size(compressed: bool, max_message_size: int) -> int:
    """Bytes per ``recv()`` of a connection (see :class:`Link`).

    Uncompressed, a read takes up to 256 KiB: the messages it completes hold
    at most that many bytes. Compressed, one read of 256 KiB could complete
    hundreds of messages of ``max_message_size`` each (300 KiB of "bombs" cost
    450 MB at once before): the parser inflates every message a read completes
    before the loop can push back. So a compressed connection reads at most
    ``max_message_size / 1032`` bytes at a time (at least 4 KiB), the most that
    can inflate to ``max_message_size``; with the message a read may finish,
    what one read inflates stays within about twice ``max_message_size`` (or
    about 4 MiB, for a small limit).

    Args:
        compressed: permessage-deflate was agreed for the connection.
        max_message_size: The client's ``max_message_size``.
    """
    if not compressed:
        return _READ_SIZE
    return max(_MIN_COMPRESSED_READ, min(_READ_SIZE, max_message_size // _INFLATE_RATIO))


def validate_url(url: Any) -> str:
    """Check a WebSocket URL at construction time.

    Every message names ``url`` and shows it through
    :func:`~tether_sync.redact.redact_url` (no password or token in it).

    Raises:
        TypeError: not a str.
        ValueError: not ``ws://`` or ``wss://``; whitespace or a control
            character anywhere; no host, or a host name with characters no
            host name has; a port that is not 1-65535.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    shown = redact_url(url)
    bad = next((ch for ch in url if ch.isspace() or not ch.isprintable()), None)
    if bad is not None:
        raise ValueError(
            f"url must not contain whitespace or control characters ({bad!r}): {shown!r}"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced "[" (IPv6 literal)
        raise ValueError(f"url is malformed ({exc}): {shown!r}") from None
    try:
        port = parts.port
    except ValueError as exc:  # not an int, or not 0-65535
        raise ValueError(f"url has an invalid port ({exc}): {shown!r}") from None
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"url must start with ws:// or wss://, got {shown!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"url has no host: {shown!r}")
    if not (_HOST_NAME.fullmatch(host) or ":" in host):  # ":" only in an IPv6 literal
        raise ValueError(f"url has an invalid host {host!r}: {shown!r}")
    if port == 0:
        raise ValueError(f"url has an invalid port (0 is not in 1-65535): {shown!r}")
    return url


# A host name (RFC 3986 reg-name, as resolvers take it): letters (any script:
# IDNA encodes them in the handshake), digits, "-", "_" and dots; or an IPv4
# address, which matches the same. No "%", "!", "$", quotes, spaces...
_HOST_NAME = re.compile(r"[^\W][\w.-]*")


def kernel_unsent(sock: socket.socket) -> int:
    """Bytes the kernel still holds in ``sock``'s send queue (0 where unknown)."""
    if _SIOCOUTQ is None:
        return 0
    try:
        buf = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int.from_bytes(buf, sys.byteorder, signed=True)


def set_notsent_lowat(sock: socket.socket, high_water_mark: int) -> bool:
    """Cap the kernel's unsent bytes at the high-water mark (Linux, macOS).

    With TCP_NOTSENT_LOWAT at the mark, the kernel stops taking writes at about
    ``high_water_mark`` unsent bytes and reports the socket writable again
    below half of that (Linux wakes a writer only once the unsent bytes are
    under half the option's value): the outbound backpressure then rests on a
    real signal from the kernel, not on polling. The option bounds only what the
    kernel takes of bytes already framed; the pump still stops at the mark
    counting the kernel's part (flow_control.py), so what the client holds in
    all is the same.

    The option was half the mark until session 21: the kernel then refused a
    write past 500 kB unsent (of a 1 MB mark) and woke the I/O thread below
    250 kB, so a stream of 1 MiB messages took about 1.5 writes and half a
    wake-up per message, where it now takes one write and a tenth of a
    wake-up, and about 17 % less of the I/O thread's CPU per message
    (benchmarks/README.md, "Issue 22, session 21").
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is None or high_water_mark >= 2**31:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(16384, high_water_mark))
    except OSError:
        return False
    return True


def http_status(error: BaseException) -> Optional[int]:
    """The HTTP status of a handshake the server answered with something but 101."""
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def new_handshaker() -> Any:
    """A websocket-client ``WebSocket`` used only for its handshake.

    ``skip_utf8_validation`` because the I/O thread validates with ``bytes.decode``.
    """
    return websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)


def handshake(
    ws: Any,
    url: str,
    *,
    timeout: float,
    headers: HeaderSpec,
    subprotocols: Optional[List[str]],
    sslopt: Optional[Dict[str, Any]],
    extra: Optional[Dict[str, Any]] = None,
    compression: Optional[str] = None,
) -> socket.socket:
    """Open the connection and complete the opening handshake (blocking).

    Args:
        ws: From :func:`new_handshaker`; the caller may abort it from another
            thread with :func:`abort`.
        timeout: Seconds for each socket operation of the handshake.
        extra: More keyword arguments for ``WebSocket.connect`` (proxy options,
            ``origin``, ``redirect_limit``...).
        compression: ``"deflate"``: offer permessage-deflate (RFC 7692) in a
            ``Sec-WebSocket-Extensions`` header; read the answer with
            :func:`accepted_deflate`. None: offer nothing.

    Returns:
        The connected socket, ready for framing.

    Raises:
        websocket.WebSocketException, OSError: the connection or handshake failed
            (refused, DNS, TLS, HTTP status other than 101...).
    """
    if sslopt is not None:
        ws.sock_opt.sslopt = dict(sslopt)
    options: Dict[str, Any] = dict(extra or {})
    options["timeout"] = timeout
    if compression == "deflate":
        headers = [*_header_lines(headers), f"Sec-WebSocket-Extensions: {deflate.client_offer()}"]
    if headers:
        options["header"] = headers
    if subprotocols:
        options["subprotocols"] = list(subprotocols)
    ws.connect(url, **options)
    sock: socket.socket = ws.sock
    return sock


def _header_lines(headers: HeaderSpec) -> List[str]:
    """Headers as websocket-client's ``"Name: value"`` lines (it does the same to a dict)."""
    if isinstance(headers, dict):
        return [f"{k}: {v}" for k, v in headers.items() if v is not None]
    return list(headers or [])


def accepted_deflate(ws: Any, compression: Optional[str]) -> Optional[deflate.DeflateParams]:
    """What the server answered to our permessage-deflate offer (after :func:`handshake`).

    Runs on the connector thread, so a bad answer fails the attempt there.

    Args:
        ws: The handshaker that completed the handshake.
        compression: As given to :func:`handshake`.

    Returns:
        The agreed parameters, or None: nothing was offered, or the server
        declined (no ``Sec-WebSocket-Extensions`` in its response), and the
        connection runs uncompressed. Without an offer, the answer is not read.

    Raises:
        ProtocolError: 1002, the server answered something the offer does not
            allow (an extension not offered, a bad or larger window...).
    """
    if compression != "deflate":
        return None
    # websocket-client lower-cases the response's header names.
    answer = (ws.getheaders() or {}).get("sec-websocket-extensions")
    try:
        return deflate.accept_response(answer)
    except ProtocolError:
        ws.shutdown()  # fail the connection (RFC 6455 §9.1): nobody else will close it
        raise


class Change(enum.Enum):
    """The selector call that a new :class:`Interest` mask needs."""

    REGISTER = "register"
    MODIFY = "modify"
    UNREGISTER = "unregister"


@dataclasses.dataclass
class Interest:
    """One socket's registration. A new link starts registered for reading."""

    mask: int = 0  # the events registered with the selector
    registered: bool = False
    tls: bool = False  # an SSL socket: decrypted bytes may wait inside it
    want_write: bool = False  # framed bytes wait for writability

    def change(self, mask: int) -> Optional[Change]:
        """Record that the loop wants ``mask``; the selector call to make, if any."""
        # An empty mask unregisters rather than registering for nothing: epoll
        # reports an error or a hang-up of any registered socket, level-triggered,
        # so a socket the loop is not reading (inbound held for a full "block"
        # consumer) would wake it over and over; selectors refuses an empty mask.
        if not mask:
            if self.registered:
                self.registered = False
                return Change.UNREGISTER
            return None
        if not self.registered:
            self.registered = True
            self.mask = mask
            return Change.REGISTER
        if self.mask != mask:
            self.mask = mask
            return Change.MODIFY
        return None


class Link:
    """One open connection's socket, as the I/O thread uses it (and only that thread).

    Args:
        sock: The socket a connector handed over (its handshake done).
        url: The endpoint, for log lines (kept redacted: see :mod:`tether_sync.redact`).
        high_water_mark: The outbound high-water mark, in bytes.
        read_size: Bytes per ``recv()``; see :func:`read_size`.
    """

    def __init__(
        self, sock: socket.socket, url: str, high_water_mark: int, read_size: int = _READ_SIZE
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.url = redact_url(url)
        self.flow = OutboundFlow(high_water_mark, set_notsent_lowat(sock, high_water_mark))
        # The socket's selector registration (an SSL socket: decrypted bytes may wait
        # inside it, where the selector cannot see them).
        self.io = Interest(tls=isinstance(sock, ssl.SSLSocket))
        # Gathering writes: a plain socket with sendmsg() (not Windows, not TLS).
        self._gather = not self.io.tls and hasattr(sock, "sendmsg")
        self.kernel_unsent = 0  # the kernel's unsent bytes, as last read by this thread
        self.closed = False
        # Reads land in one buffer, reused: recv(n) would allocate n bytes per
        # call and shrink them to what came (for 256 KiB an mmap/munmap pair,
        # about 15 us, twice per round trip); only what came is copied out.
        self._buf = bytearray(read_size)
        self._view = memoryview(self._buf)

    def recv(self) -> Optional[bytes]:
        """What the socket has (``b""`` at EOF), or None if nothing yet.

        Raises:
            OSError: the read failed.
        """
        try:
            n = self.sock.recv_into(self._buf)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            # Spurious readiness, or TLS needs more bytes (or a write: a
            # renegotiation) before it can hand out a record: wait for the next event.
            return None
        # A copy of what came: the session may keep a partial frame across
        # reads, and the buffer is overwritten by the next one.
        return self._view[:n].tobytes()

    def send_some(self, session: Session) -> int:
        """Write what ``session`` has framed, as much as the kernel takes, without blocking.

        On a plain socket, queued chunks go out together in one gathering
        ``sendmsg()`` (at most :data:`GATHER_CHUNKS` buffers, about
        :data:`GATHER_BYTES` bytes), uncopied: a big frame's parts and the
        frames after it cost one system call, not one each. An SSL socket has
        no ``sendmsg()``: there, and where the platform lacks it, one
        ``send()`` per chunk (the write buffer joins small chunks first).

        Returns the bytes written, or -1 if the socket failed.
        """
        sock = self.sock
        gather = self._gather
        total = 0
        # The session hands out its buffer in chunks; the loop ends when it is
        # empty or the kernel takes less than offered (full: the next write
        # waits for writability, never blocks).
        while True:
            if gather:
                buffers = session.chunks_to_send(GATHER_CHUNKS, GATHER_BYTES)
                if not buffers:
                    break
                data = buffers[0]
                many = len(buffers) > 1
                want = sum(map(len, buffers)) if many else len(data)
            else:
                data = session.data_to_send()
                if not data:
                    break
                many = False
                want = len(data)
            try:
                n = sock.sendmsg(buffers) if many else sock.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError as exc:
                log.info("write to %s failed: %s", self.url, exc)
                return -1
            session.sent(n)  # the session drops what went, and knows what is done
            total += n
            self.flow.wrote(n)  # the upper bound of the kernel's unsent bytes grows
            if n < want:
                break  # the kernel is full: wait for writability
        return total

    def tls_pending(self) -> bool:
        """Decrypted bytes already wait inside the SSL object (no selector event comes)."""
        sock = self.sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def read_kernel(self) -> int:
        """The kernel's unsent bytes (an ioctl: this thread only, like every socket call)."""
        self.kernel_unsent = unsent = kernel_unsent(self.sock)
        self.flow.kernel_bound = unsent  # the bound starts again from what is really there
        return unsent

    def close(self) -> None:
        """Close the socket (the link is over; the poller has forgotten it)."""
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


def abort(ws: Any) -> None:
    """Wake a handshake blocked on its socket (from any thread). Best effort."""
    sock = getattr(ws, "sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# What a connection attempt waits for, as a connect timeout names it.
TCP = "the TCP connect"
TLS = "the TLS handshake"
UPGRADE = "the WebSocket handshake"

Track = Callable[[str, Optional[socket.socket]], bool]
"""``track(stage, sock)``: the attempt is now waiting for ``stage``, blocked on
``sock``; returns False if the attempt was aborted meanwhile."""

# ws_options keys that put a proxy (or the user's own socket) in the way.
_NOT_DIRECT = ("http_proxy_host", "proxy_type", "socket")

_ssl_socket: Optional[Callable[[socket.socket, Dict[str, Any], str], ssl.SSLSocket]]
try:  # websocket-client's own TLS wrapping (sslopt, SNI, its CA bundle variable)
    from websocket._http import _ssl_socket
except ImportError:  # pragma: no cover - then websocket-client connects wss:// itself
    _ssl_socket = None


def open_socket(
    url: str,
    *,
    timeout: float,
    ws_options: Dict[str, Any],
    sslopt: Optional[Dict[str, Any]],
    track: Track,
) -> Optional[socket.socket]:
    """The TCP connect (and TLS for ``wss://``) on sockets an abort can reach.

    websocket-client makes its socket and connects it inside ``connect()``, where
    no other thread can reach it: ``close()`` could not end a connect in progress
    (the connector outlived close(timeout=2) by 9.7 s). Here every socket is
    shown to ``track`` before the call that blocks on it, so :func:`abort` of the
    socket (a shutdown()) ends that call: on Linux a shutdown() wakes a connect()
    in progress as it wakes a recv(); elsewhere the connect ends at ``timeout``.
    Pass the socket to :func:`handshake` (``extra={"socket": sock}``), which then
    only does the upgrade.

    Args:
        timeout: Seconds for each blocking call.
        ws_options: The client's ``ws_options`` (a proxy there: None).
        sslopt: The client's TLS options.
        track: Told each stage and socket; False stops the attempt.

    Returns:
        The connected socket, or None where websocket-client must connect on its
        own: a proxy (in ``ws_options`` or the environment) or the user's own
        socket. Name resolution blocks either way (getaddrinfo() cannot be aborted).

    Raises:
        OSError: the connect or TLS failed, timed out, or was aborted.
    """
    if _ssl_socket is None or any(key in ws_options for key in _NOT_DIRECT):
        return None
    hostname, port, _, secure = parse_url(url)
    if get_proxy_info(hostname, secure)[0]:
        return None
    error: Optional[OSError] = None
    for family, kind, proto, _, address in socket.getaddrinfo(
        hostname, port, 0, socket.SOCK_STREAM, socket.SOL_TCP
    ):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            for option in DEFAULT_SOCKET_OPTION:
                sock.setsockopt(*option)
            if not track(TCP, sock):
                raise _aborted()
            sock.connect(address)
        except OSError as exc:
            track(TCP, None)
            sock.close()
            if exc.errno not in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH):
                raise
            error = exc  # the next address, as websocket-client does
            continue
        if not secure:
            if not track(UPGRADE, sock):
                raise _aborted()
            return sock
        # The TLS handshake once the TLS socket is shown (wrapping detaches the
        # plain one, so an abort must reach the new one).
        options = {**(sslopt or {}), "do_handshake_on_connect": False}
        tls = _ssl_socket(sock, options, hostname)
        if not track(TLS, tls):
            raise _aborted()
        tls.do_handshake()
        track(UPGRADE, tls)
        return tls
    raise error or OSError(f"no address for {hostname}")


def _aborted() -> ConnectionAbortedError:
    return ConnectionAbortedError(errno.ECONNABORTED, "connection attempt aborted")
