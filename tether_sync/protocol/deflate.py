"""Client side of permessage-deflate (RFC 7692), pure building blocks on ``zlib``.

websocket-client does the opening handshake but rejects RSV1 frames, so the
extension lives here and in :mod:`tether_sync.protocol.frames`. Nothing in this module
touches a socket, a thread or a clock; one :class:`PerMessageDeflate` belongs to
one connection and is used by the single I/O thread.

Typical use::

    offer = client_offer()                       # "permessage-deflate; client_max_window_bits=12"
    ws = websocket.create_connection(url, header=[f"Sec-WebSocket-Extensions: {offer}"])
    params = accept_response(ws.getheaders().get("sec-websocket-extensions"))
    if params is not None:                       # None: the server declined compression
        codec = PerMessageDeflate(params)
        parser = FrameParser(max_message_size, inflate=codec.decode)
        payload, rsv1 = codec.encode(b"...")
        frame = encode_frame(OP_TEXT, payload, keys.next(), rsv1=rsv1)

Defaults follow python-websockets (``enable_client_permessage_deflate`` /
``enable_server_permessage_deflate``): the client's window is limited to
2**12 bytes, ``memLevel`` 5, compression level 6 (zlib's default). The
compressor then costs about 2**14 + 2**14 bytes and the decompressor 2**15
(the server's window, unless it announces a smaller one): about 64 KiB a
connection, allocated only once a message is actually compressed or inflated.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from ..exceptions import ProtocolError

__all__ = [
    "DEFAULT_THRESHOLD",
    "EXTENSION_NAME",
    "DeflateParams",
    "PerMessageDeflate",
    "accept_response",
    "client_offer",
    "parse_extensions",
]

#: The extension token of RFC 7692 §7.
EXTENSION_NAME = "permessage-deflate"

#: Messages shorter than this many bytes are sent uncompressed by default:
#: deflating them costs more CPU than the few bytes it saves.
DEFAULT_THRESHOLD = 1024

#: RFC 7692 §7.2.1: the sender strips this empty stored block (the end of a
#: sync flush) from every compressed message; the receiver appends it again.
_TAIL = b"\x00\x00\xff\xff"

# Below this compressed size, one decompress() of payload + tail is cheaper
# than two calls (the same cut-off as python-websockets, measured there).
_CONCAT_BELOW = 2044

_CLOSE_PROTOCOL_ERROR = 1002
_CLOSE_INVALID_PAYLOAD = 1007
_CLOSE_TOO_BIG = 1009

# RFC 7230 §3.2.6 token, and the parameter grammar of RFC 6455 §9.1.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_OWS = r"[ \t]*"
_PARAM_RE = re.compile(
    rf"{_OWS};{_OWS}({_TOKEN})(?:{_OWS}={_OWS}(?:({_TOKEN})|\"((?:[^\"\\]|\\.)*)\"))?"
)
_NAME_RE = re.compile(rf"{_OWS}({_TOKEN})")
_UNESCAPE_RE = re.compile(r"\\(.)")

# RFC 7692 §7.1.2: window bits are 8-15, written without leading zeros.
_WINDOW_BITS = {str(bits): bits for bits in range(8, 16)}

BytesLike = Union[bytes, bytearray, memoryview]

#: One parsed extension: its name and its ``(param, value or None)`` pairs in order.
Extension = Tuple[str, List[Tuple[str, Optional[str]]]]


@dataclass(frozen=True)
class DeflateParams:
    """The permessage-deflate parameters agreed in the handshake (RFC 7692 §7.1).

    Attributes:
        server_no_context_takeover: The server starts every message with an
            empty LZ77 window, so the client inflates each message afresh.
        client_no_context_takeover: The client must not refer to earlier
            messages when it compresses one.
        server_max_window_bits: log2 of the server's LZ77 window (8-15).
        client_max_window_bits: log2 of the client's LZ77 window (9-15; zlib
            cannot compress with a 256-byte window, so 8 is never agreed).
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15


def _check_offer(
    client_max_window_bits: Optional[int], server_max_window_bits: Optional[int]
) -> None:
    if client_max_window_bits is not None and not 9 <= client_max_window_bits <= 15:
        # zlib rejects a raw deflate window of 8 bits (madler/zlib#171).
        raise ValueError("client_max_window_bits must be between 9 and 15, or None")
    if server_max_window_bits is not None and not 8 <= server_max_window_bits <= 15:
        raise ValueError("server_max_window_bits must be between 8 and 15, or None")


def client_offer(
    client_max_window_bits: Optional[int] = 12,
    server_max_window_bits: Optional[int] = None,
    client_no_context_takeover: bool = False,
    server_no_context_takeover: bool = False,
) -> str:
    """Build the ``Sec-WebSocket-Extensions`` value of the opening request.

    Args:
        client_max_window_bits: The largest window (log2) the client will
            compress with, announced so the server may lower it (9-15);
            None: not announced, the client then uses 15.
        server_max_window_bits: Ask the server to compress with at most this
            window (8-15), which bounds the client's inflate memory; None:
            the server chooses.
        client_no_context_takeover: Announce that the client compresses every
            message on its own (less memory kept between messages, worse ratio).
        server_no_context_takeover: Ask the server to do the same.

    Returns:
        The header value, e.g. ``"permessage-deflate; client_max_window_bits=12"``.
        Pass the same arguments to :func:`accept_response`.

    Raises:
        ValueError: A window size out of range.
    """
    _check_offer(client_max_window_bits, server_max_window_bits)
    parts = [EXTENSION_NAME]
    if server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if server_max_window_bits is not None:
        parts.append(f"server_max_window_bits={server_max_window_bits}")
    if client_max_window_bits is not None:
        parts.append(f"client_max_window_bits={client_max_window_bits}")
    return "; ".join(parts)


def parse_extensions(header_value: str) -> List[Extension]:
    """Parse a ``Sec-WebSocket-Extensions`` value (RFC 6455 §9.1).

    Args:
        header_value: E.g. ``'permessage-deflate; server_max_window_bits="10", x-foo'``.

    Returns:
        One ``(name, [(param, value), ...])`` per extension, in order. A
        quoted-string value is unquoted; a parameter without value has None.
        Names are lower-cased (tokens are case-insensitive).

    Raises:
        ProtocolError: 1002, the value does not follow the grammar.
    """
    out: List[Extension] = []
    pos = 0
    n = len(header_value)
    while True:
        m = _NAME_RE.match(header_value, pos)
        if m is None:
            raise ProtocolError(
                f"malformed Sec-WebSocket-Extensions header at offset {pos}: {header_value!r}"
            )
        name = m.group(1).lower()
        pos = m.end()
        params: List[Tuple[str, Optional[str]]] = []
        while True:
            p = _PARAM_RE.match(header_value, pos)
            if p is None:
                break
            value: Optional[str] = p.group(2)
            if p.group(3) is not None:
                value = _UNESCAPE_RE.sub(r"\1", p.group(3))
            params.append((p.group(1).lower(), value))
            pos = p.end()
        out.append((name, params))
        while pos < n and header_value[pos] in " \t":
            pos += 1
        if pos >= n:
            return out
        if header_value[pos] != ",":
            raise ProtocolError(
                f"malformed Sec-WebSocket-Extensions header at offset {pos}: {header_value!r}"
            )
        pos += 1


def _window_bits(name: str, value: Optional[str]) -> int:
    bits = _WINDOW_BITS.get(value) if value is not None else None
    if bits is None:
        # RFC 7692 §7.1.2.1/§7.1.2.2: a decimal 8-15 without leading zeros.
        raise ProtocolError(f"permessage-deflate: invalid {name} value {value!r}")
    return bits


def accept_response(
    header_value: Optional[str],
    client_max_window_bits: Optional[int] = 12,
    server_max_window_bits: Optional[int] = None,
    client_no_context_takeover: bool = False,
    server_no_context_takeover: bool = False,
) -> Optional[DeflateParams]:
    """Check the server's ``Sec-WebSocket-Extensions`` response against our offer.

    The keyword arguments must be the ones given to :func:`client_offer`.
    RFC 7692 §7.1 says what a server may answer to each offered parameter;
    anything else fails the connection.

    Args:
        header_value: The response header's value (``None`` or empty when the
            server sent none).
        client_max_window_bits: As offered.
        server_max_window_bits: As offered.
        client_no_context_takeover: As offered.
        server_no_context_takeover: As offered.

    Returns:
        The agreed parameters, or None when the server declined the extension
        (no header): then the connection runs uncompressed and the parser
        must not be given ``inflate``.

    Raises:
        ProtocolError: 1002 for a malformed header, an extension we did not
            offer (RFC 6455 §9.1), permessage-deflate accepted twice, an
            unknown or repeated parameter, a parameter with a bad value, or a
            value the offer does not allow (e.g. a larger window than asked).
    """
    if header_value is None or not header_value.strip():
        return None
    _check_offer(client_max_window_bits, server_max_window_bits)
    extensions = parse_extensions(header_value)
    for name, _ in extensions:
        if name != EXTENSION_NAME:
            raise ProtocolError(f"server accepted extension {name!r}, which was not offered")
    if len(extensions) > 1:
        raise ProtocolError("server accepted permessage-deflate more than once")
    seen = set()
    server_nct = False
    client_nct = client_no_context_takeover
    server_bits: Optional[int] = None
    client_bits: Optional[int] = None
    for param, value in extensions[0][1]:
        if param in seen:
            raise ProtocolError(f"permessage-deflate: duplicate parameter {param}")
        seen.add(param)
        if param in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                raise ProtocolError(f"permessage-deflate: {param} takes no value, got {value!r}")
            if param == "server_no_context_takeover":
                server_nct = True
            else:
                # §7.1.1.2: the server may demand it even if we did not offer it.
                client_nct = True
        elif param == "server_max_window_bits":
            server_bits = _window_bits(param, value)
        elif param == "client_max_window_bits":
            client_bits = _window_bits(param, value)
        else:
            raise ProtocolError(f"permessage-deflate: unknown parameter {param!r}")

    # §7.1.1.1: an offered server_no_context_takeover must be echoed.
    if server_no_context_takeover and not server_nct:
        raise ProtocolError("permessage-deflate: server ignored server_no_context_takeover")
    # §7.1.2.1: an offered server_max_window_bits must be answered with <= it.
    if server_max_window_bits is not None:
        if server_bits is None:
            raise ProtocolError("permessage-deflate: server ignored server_max_window_bits")
        if server_bits > server_max_window_bits:
            raise ProtocolError(
                f"permessage-deflate: server_max_window_bits={server_bits} exceeds the "
                f"offered {server_max_window_bits}"
            )
    # §7.1.2.2: client_max_window_bits only if offered, and then <= the offer.
    if client_bits is not None:
        if client_max_window_bits is None:
            raise ProtocolError(
                "permessage-deflate: server sent client_max_window_bits, which was not offered"
            )
        if client_bits > client_max_window_bits:
            raise ProtocolError(
                f"permessage-deflate: client_max_window_bits={client_bits} exceeds the "
                f"offered {client_max_window_bits}"
            )
        if client_bits == 8:
            # zlib cannot produce a stream limited to a 256-byte window.
            raise ProtocolError("permessage-deflate: client_max_window_bits=8 is not supported")
    else:
        client_bits = client_max_window_bits
    return DeflateParams(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_bits if server_bits is not None else 15,
        client_max_window_bits=client_bits if client_bits is not None else 15,
    )


class PerMessageDeflate:
    """One connection's permessage-deflate codec (RFC 7692 §6-§7.2).

    ``encode`` compresses outgoing messages, ``decode`` inflates incoming ones
    whose first frame had RSV1 set; pass ``decode`` to
    ``FrameParser(inflate=...)``. Context takeover (§7.1.1) is kept in both
    directions unless the parameters turn it off. Not thread-safe: the I/O
    thread owns it. Compressor and decompressor are created on first use.

    Attributes:
        params: The negotiated parameters.
        threshold: Messages shorter than this (bytes) are sent uncompressed.
    """

    __slots__ = (
        "_deflater",
        "_flush_mode",
        "_inflate_bits",
        "_inflater",
        "_level",
        "_mem_level",
        "params",
        "threshold",
    )

    def __init__(
        self,
        params: DeflateParams,
        threshold: int = DEFAULT_THRESHOLD,
        level: int = 6,
        mem_level: int = 5,
    ) -> None:
        """Create the codec of one connection.

        Args:
            params: From :func:`accept_response`.
            threshold: Compress only messages of at least this many bytes
                (0: every message).
            level: zlib compression level, 0-9.
            mem_level: zlib memLevel, 1-9 (memory of the compressor's hash
                table: 2**(mem_level + 9) bytes).

        Raises:
            ValueError: An argument out of range.
        """
        if threshold < 0:
            raise ValueError("threshold must be >= 0")
        if not 0 <= level <= 9:
            raise ValueError("level must be between 0 and 9")
        if not 1 <= mem_level <= 9:
            raise ValueError("mem_level must be between 1 and 9")
        if not 9 <= params.client_max_window_bits <= 15:
            raise ValueError("params.client_max_window_bits must be between 9 and 15")
        if not 8 <= params.server_max_window_bits <= 15:
            raise ValueError("params.server_max_window_bits must be between 8 and 15")
        self.params = params
        self.threshold = threshold
        self._level = level
        self._mem_level = mem_level
        # A full flush ends the message like a sync flush (same 00 00 ff ff
        # tail, §7.2.1) and also forgets the window, which is exactly "no
        # context takeover" without building a new compressor per message.
        self._flush_mode = (
            zlib.Z_FULL_FLUSH if params.client_no_context_takeover else zlib.Z_SYNC_FLUSH
        )
        # A zlib deflater limited to 2**8 really uses 2**9 (madler/zlib#171),
        # so inflate with at least 9 bits; a bigger window is always safe.
        self._inflate_bits = -max(params.server_max_window_bits, 9)
        self._deflater: Optional[zlib._Compress] = None
        self._inflater: Optional[zlib._Decompress] = None

    def __repr__(self) -> str:
        return f"PerMessageDeflate({self.params!r}, threshold={self.threshold})"

    def encode(self, payload: BytesLike) -> Tuple[bytes, bool]:
        """Compress one outgoing message, if it is worth it.

        Args:
            payload: The whole message (text already UTF-8 encoded).

        Returns:
            ``(data, rsv1)``: the compressed data (tail stripped, §7.2.1) and
            True, or the payload itself and False when it is shorter than
            ``threshold``. Send ``data`` with RSV1 = ``rsv1`` on the first
            frame (``encode_frame(..., rsv1=rsv1)``); it may be fragmented.
        """
        if len(payload) < self.threshold:
            return (payload if type(payload) is bytes else bytes(payload)), False
        c = self._deflater
        if c is None:
            c = self._deflater = zlib.compressobj(
                self._level, zlib.DEFLATED, -self.params.client_max_window_bits, self._mem_level
            )
        data = c.compress(payload) + c.flush(self._flush_mode)
        # A sync/full flush always ends with the empty stored block.
        if data[-4:] != _TAIL:  # pragma: no cover - zlib guarantees it
            raise AssertionError("zlib flush did not end with 00 00 ff ff")
        return data[:-4], True

    def decode(self, payload: BytesLike, max_size: int) -> bytes:
        """Inflate one incoming compressed message, never beyond ``max_size``.

        Args:
            payload: The reassembled payload of a message whose first frame
                had RSV1 set.
            max_size: Largest inflated size accepted, in bytes.

        Returns:
            The uncompressed message.

        Raises:
            ProtocolError: 1009 when the message inflates past ``max_size``
                (detected with at most ``max_size + 1`` bytes of output
                allocated, so a small "zip bomb" costs nothing); 1007 when the
                data is not a valid deflate stream.
        """
        d = self._inflater
        if d is None or self.params.server_no_context_takeover:
            d = zlib.decompressobj(self._inflate_bits)
            self._inflater = None if self.params.server_no_context_takeover else d
        # max_length = max_size + 1 lets "exactly max_size" pass and anything
        # bigger stop after one extra byte. It is >= 1: 0 would mean unbounded.
        limit = max_size + 1
        try:
            if len(payload) < _CONCAT_BELOW:
                out = d.decompress(bytes(payload) + _TAIL, limit)
            else:
                out = d.decompress(payload, limit)
                if len(out) <= max_size:
                    # The tail may release output zlib still held back.
                    more = d.decompress(_TAIL, limit - len(out))
                    if more:
                        out += more
        except zlib.error as exc:
            self._inflater = None
            raise ProtocolError(
                f"permessage-deflate: invalid compressed data ({exc})", _CLOSE_INVALID_PAYLOAD
            ) from None
        if len(out) > max_size:
            # Output hit the limit (with input maybe left in unconsumed_tail).
            self._inflater = None
            raise ProtocolError(
                f"compressed message inflates beyond max_message_size ({max_size})",
                _CLOSE_TOO_BIG,
            )
        if d.eof:
            # The server ended its stream with a BFINAL block (allowed,
            # §7.2.3.1): start a fresh inflater next time. Anything but the
            # tail after that block is garbage.
            self._inflater = None
            if d.unused_data not in (b"", _TAIL):
                raise ProtocolError(
                    "permessage-deflate: data after the final deflate block",
                    _CLOSE_INVALID_PAYLOAD,
                )
        return out
