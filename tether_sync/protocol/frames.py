"""Fast, pure client-side RFC 6455 frame codec.

This module turns the bytes a WebSocket server sends into messages and turns
the messages a client sends into masked frames. It is deliberately *pure*: no
sockets, threads, clocks or websocket-client imports. The client's single I/O
thread reads the socket in large chunks and hands each chunk to
:meth:`FrameParser.feed`, which parses every frame in it in one tight loop.

Why not websocket-client's reader: it issues one ``recv`` per header field and
validates UTF-8 in pure Python. Here UTF-8 is validated by ``bytes.decode``
(C code) on the whole message, and the common case (an unfragmented text or
binary frame of at most 125 bytes) takes a short fast path.

Typical use::

    parser = FrameParser(max_message_size=16 * 2**20)
    for opcode, payload in parser.feed(sock.recv(262144)):
        ...

    keys = MaskKeys()
    sock.sendall(encode_frame(OP_TEXT, "hi".encode(), keys.next()))

With permessage-deflate (RFC 7692) negotiated, give the parser the codec's
inflate function and set RSV1 on the frames of compressed messages::

    codec = deflate.PerMessageDeflate(params)
    parser = FrameParser(max_message_size, inflate=codec.decode)
    data, rsv1 = codec.encode(payload)
    sock.sendall(encode_frame(OP_TEXT, data, keys.next(), rsv1=rsv1))
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import struct
from typing import Callable, Iterable, List, Optional, Protocol, Tuple, Union

from ..exceptions import ProtocolError

__all__ = [
    "MAX_CONTROL_PAYLOAD",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "BytesLike",
    "Deflate",
    "FrameParser",
    "FrameProtocolError",
    "Inflate",
    "MaskKeys",
    "Message",
    "encode_close_payload",
    "encode_frame",
    "encode_frame_header",
    "encode_frames",
    "is_valid_close_code",
    "mask_payload",
    "parse_close",
]

# Opcodes, RFC 6455 §5.2 / §11.8.
OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: Control frames carry at most 125 payload bytes (RFC 6455 §5.5).
MAX_CONTROL_PAYLOAD = 125

#: Close codes used below (RFC 6455 §7.4.1).
_CLOSE_NO_STATUS = 1005
_CLOSE_PROTOCOL_ERROR = 1002
_CLOSE_INVALID_PAYLOAD = 1007
_CLOSE_TOO_BIG = 1009

#: A close reason must fit a 125-byte control payload after the 2-byte code.
_MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2

#: One parsed message: ``(opcode, payload)``; ``str`` only for OP_TEXT.
Message = Tuple[int, Union[str, bytes]]

#: What the codec accepts as input bytes.
BytesLike = Union[bytes, bytearray, memoryview]

#: Inflates one compressed message: ``(payload, max_size) -> bytes``; raises
#: :class:`ProtocolError` (e.g. 1009 past ``max_size``). See ``deflate.PerMessageDeflate``.
Inflate = Callable[[bytes, int], bytes]


class Deflate(Protocol):
    """What :func:`encode_frames` needs of a compressor (``deflate.PerMessageDeflate``)."""

    #: Messages shorter than this are sent as they are, without calling ``encode``.
    threshold: int

    def encode(self, payload: BytesLike) -> Tuple[bytes, bool]:
        """Compress one whole message: ``(data, rsv1)``."""


_VALID_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

# Payloads up to this size are masked by XOR-ing two big ints (fastest for
# small data); larger ones with four strided bytes.translate() calls, which
# are ~2.5x faster than the int path at 64 KiB-1 MiB (measured on CPython 3.11,
# see benchmarks/bench_frames.py).
_INT_MASK_MAX = 2048

# _XOR_TABLES[k] maps every byte b to b ^ k; used with bytes.translate() to
# mask every 4th byte with one byte of the key (RFC 6455 §5.3). 64 KiB total.
# Built with int XOR (~0.1 ms) rather than a nested generator (~1.5 ms at import).
_IDENTITY = int.from_bytes(bytes(range(256)), "big")
_XOR_TABLES: Tuple[bytes, ...] = tuple(
    (_IDENTITY ^ int.from_bytes(bytes((k,)) * 256, "big")).to_bytes(256, "big") for k in range(256)
)
del _IDENTITY

# Payload pieces smaller than this are copied into a shared bytearray
# (see FrameParser._add); bigger ones are kept as they are, joined once.
_COALESCE_BELOW = 4096

#: Masks a payload with a 4-byte key, in C: ``(payload, key) -> bytes``.
CMask = Callable[[BytesLike, bytes], bytes]


def _load_c_mask() -> Optional[CMask]:
    """websockets' compiled ``apply_mask``, if websockets is installed; else None.

    Optional speedup: masking in pure Python runs at 200-370 MB/s, the C loop
    at 20+ GB/s. Only the extension file (``websockets/speedups*.so``, self
    contained, about 0.5 ms) is loaded, not the ``websockets`` package (about
    30 ms, and it would import sockets and more into this pure module). Any
    failure (not installed, no compiled file, a wrong answer on a known
    input) leaves the pure-Python path.
    """
    try:
        spec = importlib.util.find_spec("websockets")  # finds; does not import
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, "speedups" + suffix)
                if not os.path.exists(path):
                    continue
                ext = importlib.util.spec_from_file_location("websockets.speedups", path)
                if ext is None or ext.loader is None:
                    return None
                module = importlib.util.module_from_spec(ext)
                ext.loader.exec_module(module)
                apply_mask: CMask = module.apply_mask
                if apply_mask(b"\x00\x01\x02\x03\x04", b"\x10\x20\x30\x40") != b"\x10!2C\x14":
                    return None
                return apply_mask
    except Exception:  # any trouble: the pure path
        return None
    return None


#: The compiled mask in use, or None: the pure-Python one (tests set it to None).
_c_mask: Optional[CMask] = _load_c_mask()

_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack


class FrameProtocolError(ProtocolError):
    """A :class:`ProtocolError` raised by :meth:`FrameParser.feed`.

    Attributes:
        close_code: The close code the violation calls for (1002, 1007 or 1009).
        messages: The messages completed by the same ``feed()`` call *before*
            the violation, in order. They are valid and may still be
            delivered before the connection is failed (RFC 6455 §7.1.7).
    """

    def __init__(
        self,
        message: str,
        close_code: int = _CLOSE_PROTOCOL_ERROR,
        messages: Optional[List[Message]] = None,
    ) -> None:
        super().__init__(message, close_code)
        self.messages: List[Message] = messages if messages is not None else []


class FrameParser:
    """Incremental parser of the frames a server sends to a client.

    Feed it whatever the socket returned, split anywhere; it returns every
    message completed so far. Not thread-safe: one I/O thread owns it.

    Memory: the payload of a data frame that is not complete yet is kept as the
    chunks it arrived in and joined once when the message completes, so a big
    message costs O(size), whatever the read size. Only an incomplete header
    or control frame (at most 127 bytes) is re-joined with the next chunk.

    After a :class:`FrameProtocolError` the parser is dead: the connection must
    be failed (RFC 6455 §7.1.7), and every later ``feed()`` raises again.
    """

    __slots__ = (
        "_error",
        "_frag_len",
        "_frag_op",
        "_frag_rsv1",
        "_frags",
        "_inflate",
        "_max",
        "_need",
        "_rem",
        "_rem_fin",
        "_small_max",
        "_tail",
    )

    def __init__(
        self, max_message_size: int = 16 * 2**20, inflate: Optional[Inflate] = None
    ) -> None:
        """Create a parser.

        Args:
            max_message_size: Largest message (after reassembly of fragments)
                accepted, in bytes; a larger one is a 1009 error (RFC 6455
                §7.4.1), raised as soon as a frame header announces it. With
                ``inflate`` it bounds both the compressed and the inflated size.
            inflate: Set when permessage-deflate was negotiated (RFC 7692): RSV1
                is then allowed on the first frame of a data message, and such
                a message's reassembled payload goes through
                ``inflate(payload, max_message_size)`` before text is
                UTF-8-validated, so :meth:`feed` still returns plain
                ``(opcode, payload)``. A :class:`ProtocolError` it raises
                becomes a :class:`FrameProtocolError` with the same close code.
                None (the default): any RSV bit is a 1002 error.

        Raises:
            ValueError: ``max_message_size`` is negative.
        """
        if max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")
        self._max = max_message_size
        # The fast path handles 7-bit lengths, so it must not exceed the limit.
        self._small_max = min(MAX_CONTROL_PAYLOAD, max_message_size)
        # Start of a frame whose header (or control payload) is incomplete,
        # and the size it must reach before parsing is worth retrying.
        self._tail = b""
        self._need = 0
        # Message being received (RFC 6455 §5.4): its opcode (0 when none),
        # its payload chunks so far and their total length. Invariant:
        # _frag_op == 0 implies _frags == [] and _frag_len == 0.
        self._frag_op = 0
        self._frags: List[Union[bytes, bytearray]] = []
        self._frag_len = 0
        # Payload bytes still to come for the data frame being streamed into
        # _frags (0 when none), and whether that frame has FIN set.
        self._rem = 0
        self._rem_fin = False
        # Whether the message in _frags had RSV1 on its first frame.
        self._frag_rsv1 = False
        self._inflate = inflate
        self._error: Optional[FrameProtocolError] = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame or of a fragmented message."""
        return len(self._tail) + self._frag_len

    def feed(self, data: BytesLike) -> List[Message]:
        """Append received bytes and return every message they complete.

        Args:
            data: The next bytes from the socket (any split, even 1 byte);
                a bytearray or memoryview is copied to bytes first.

        Returns:
            The completed messages in wire order (compressed ones already
            inflated when the parser has ``inflate``): ``(OP_TEXT, str)``,
            ``(OP_BINARY, bytes)``, ``(OP_PING, bytes)``, ``(OP_PONG, bytes)``
            or ``(OP_CLOSE, bytes)`` (the raw close payload; see
            :func:`parse_close`). Fragmented messages are reassembled; control
            frames interleaved with fragments come out where they arrived,
            i.e. before the message they interrupted.

        Raises:
            FrameProtocolError: The server broke RFC 6455. ``close_code`` is
                1002 (framing), 1007 (invalid UTF-8 in a text message) or 1009
                (message larger than ``max_message_size``). ``messages`` holds
                what was completed before the violation. With ``inflate``,
                also whatever it raised (from ``deflate``: 1009 for a message
                inflating past ``max_message_size``, 1007 for corrupt data).
        """
        if self._error is not None:
            err = self._error
            raise FrameProtocolError(str(err), err.close_code)
        # bytearray/memoryview (e.g. from recv_into) are copied: the payloads
        # handed out must be immutable bytes, not views of a reused buffer.
        raw = data if type(data) is bytes else bytes(data)
        out: List[Message] = []
        try:
            pos = 0
            rem = self._rem
            if rem:
                # Continue the payload of a streamed data frame.
                n = len(raw)
                if n < rem:
                    if n:
                        self._add(raw)
                        self._rem = rem - n
                    return out
                self._add(raw[:rem] if n > rem else raw)
                self._rem = 0
                if self._rem_fin:
                    self._finish_message(out)
                pos = rem
            elif self._tail:
                tail = self._tail + raw
                if len(tail) < self._need:
                    self._tail = tail
                    return out
                self._tail = b""
                raw = tail
            self._parse(raw, pos, out)
        except FrameProtocolError as exc:
            exc.messages = out
            self._error = exc
            raise
        except UnicodeDecodeError as exc:
            # RFC 6455 §8.1: invalid UTF-8 in a text message -> 1007.
            err = FrameProtocolError(
                f"invalid UTF-8 in text message: {exc.reason}", _CLOSE_INVALID_PAYLOAD, out
            )
            self._error = err
            raise err from None
        except ProtocolError as exc:
            # From inflate(): e.g. 1009 for a message inflating past the limit.
            err = FrameProtocolError(str(exc), exc.close_code, out)
            self._error = err
            raise err from None
        return out

    def _add(self, piece: bytes) -> None:
        """Append a payload piece to the message being received.

        Small pieces are merged into a trailing bytearray: a server trickling
        a message 1 byte per read (or per fragment) must not cost a list entry
        (~40 bytes) per payload byte, or max_message_size would not bound memory.
        """
        frags = self._frags
        if len(piece) < _COALESCE_BELOW:
            if frags and type(frags[-1]) is bytearray:
                frags[-1] += piece
            else:
                frags.append(bytearray(piece))
        else:
            frags.append(piece)
        self._frag_len += len(piece)

    def _finish_message(self, out: List[Message]) -> None:
        """Join the chunks of the message being received and append it to ``out``."""
        payload = b"".join(self._frags)
        op = self._frag_op
        self._frags = []
        self._frag_len = 0
        self._frag_op = 0
        if self._frag_rsv1:
            self._frag_rsv1 = False
            assert self._inflate is not None
            payload = self._inflate(payload, self._max)
        # RFC 6455 §5.6/§8.1: only the whole text message has to be valid
        # UTF-8; a code point may straddle fragments (or reads).
        out.append((OP_TEXT, payload.decode()) if op == OP_TEXT else (op, payload))

    def _parse(self, buf: bytes, pos: int, out: List[Message]) -> None:
        """Parse the frames of ``buf`` from ``pos`` into ``out``; keep what is left."""
        append = out.append
        n = len(buf)
        small_max = self._small_max
        inflate = self._inflate
        # Cached in a local for speed; written back by the finally clause.
        frag_op = self._frag_op
        try:
            while n - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                # Fast path: complete FIN text/binary frame, no RSV, unmasked,
                # 7-bit length, no message open. The bulk of the traffic.
                if b1 <= small_max and not frag_op:
                    end = pos + 2 + b1
                    if end <= n:
                        if b0 == 0x81:
                            append((OP_TEXT, buf[pos + 2 : end].decode()))
                            pos = end
                            continue
                        if b0 == 0x82:
                            append((OP_BINARY, buf[pos + 2 : end]))
                            pos = end
                            continue

                # General path. Header checks come first, so a bad header fails
                # as soon as it is read, before its payload arrives.
                compressed = False
                if b0 & 0x70:
                    # RFC 6455 §5.2: RSV1-3 must be 0 unless an extension was
                    # negotiated; permessage-deflate (inflate set) defines RSV1.
                    if b0 & 0x70 != 0x40 or inflate is None:
                        raise FrameProtocolError(f"RSV bits set in frame header (0x{b0:02x})")
                    # RFC 7692 §6.1: RSV1 marks the first frame of a compressed
                    # data message; on a control or continuation frame it is an error.
                    if b0 & 0x08:
                        raise FrameProtocolError("RSV1 set on a control frame")
                    if not b0 & 0x07:
                        raise FrameProtocolError("RSV1 set on a continuation frame")
                    compressed = True
                if b1 & 0x80:
                    # RFC 6455 §5.1: a client must close the connection on a
                    # masked frame from the server.
                    raise FrameProtocolError("masked frame from server")
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                length = b1
                start = pos + 2
                if length == 126:
                    # RFC 6455 §5.2: 16-bit extended length. Non-minimal
                    # encodings are tolerated.
                    if n - pos < 4:
                        self._keep(buf, pos, 4)
                        return
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    start = pos + 4
                elif length == 127:
                    # RFC 6455 §5.2: 64-bit extended length, top bit must be 0.
                    if n - pos < 10:
                        self._keep(buf, pos, 10)
                        return
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length >> 63:
                        raise FrameProtocolError("64-bit payload length has its top bit set")
                    start = pos + 10
                end = start + length

                if opcode >= OP_CLOSE:
                    if opcode > OP_PONG:
                        raise FrameProtocolError(f"unknown opcode 0x{opcode:x}")
                    # RFC 6455 §5.5: control frames are never fragmented and
                    # carry at most 125 bytes.
                    if not fin:
                        raise FrameProtocolError("fragmented control frame")
                    if length > MAX_CONTROL_PAYLOAD:
                        raise FrameProtocolError(
                            f"control frame payload of {length} bytes (max 125)"
                        )
                    if end > n:
                        self._keep(buf, pos, end - pos)
                        return
                    # RFC 6455 §5.4: control frames may be injected between
                    # fragments; they are delivered at their place.
                    append((opcode, buf[start:end]))
                    pos = end
                    continue

                if opcode == OP_CONT:
                    if not frag_op:
                        raise FrameProtocolError("continuation frame with no message to continue")
                    total = self._frag_len + length
                    if total > self._max:
                        raise FrameProtocolError(
                            f"message of at least {total} bytes exceeds max_message_size "
                            f"({self._max})",
                            _CLOSE_TOO_BIG,
                        )
                elif opcode > OP_BINARY:
                    # 0x3-0x7 are reserved non-control opcodes (RFC 6455 §5.2).
                    raise FrameProtocolError(f"unknown opcode 0x{opcode:x}")
                elif frag_op:
                    # RFC 6455 §5.4: the fragments of one message are not
                    # interleaved with another data message.
                    raise FrameProtocolError("new data frame while a fragmented message is open")
                elif length > self._max:
                    raise FrameProtocolError(
                        f"frame of {length} bytes exceeds max_message_size ({self._max})",
                        _CLOSE_TOO_BIG,
                    )
                elif fin and end <= n:
                    # Whole unfragmented message (not taken by the fast path).
                    payload = buf[start:end]
                    if compressed and inflate is not None:
                        payload = inflate(payload, self._max)
                    append((OP_TEXT, payload.decode()) if opcode == OP_TEXT else (opcode, payload))
                    pos = end
                    continue
                else:
                    frag_op = opcode
                    self._frag_rsv1 = compressed

                # A fragment, or the start of a data frame still incomplete:
                # collect its payload in _frags.
                if end > n:
                    # Stream the payload: keep what is here, feed() adds the rest.
                    if n > start:
                        self._add(buf[start:])
                    self._rem = end - n
                    self._rem_fin = bool(fin)
                    return
                if length:
                    self._add(buf[start:end])
                pos = end
                if fin:
                    self._frag_op = frag_op
                    self._finish_message(out)
                    frag_op = 0
        finally:
            self._frag_op = frag_op
        if pos < n:
            self._keep(buf, pos, 2)

    def _keep(self, buf: bytes, pos: int, need: int) -> None:
        """Keep the incomplete frame start ``buf[pos:]`` until it has ``need`` bytes."""
        self._tail = buf[pos:] if pos else buf
        self._need = need


def is_valid_close_code(code: int) -> bool:
    """Tell whether a close code may appear in a Close frame on the wire.

    RFC 6455 §7.4.1/§7.4.2: 1000-1003 and 1007-1011 are defined, 1012-1014
    registered since (IANA WebSocket Close Code Number Registry); 3000-4999 are
    for libraries, frameworks and applications. 1004-1006 and 1015 are
    reserved/never sent; everything else below 3000 or from 5000 up is invalid.

    Args:
        code: The close status code.

    Returns:
        True if ``code`` is allowed in a Close frame.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: BytesLike) -> Tuple[int, str]:
    """Decode the payload of a Close frame (RFC 6455 §5.5.1).

    Args:
        payload: The raw payload returned by :meth:`FrameParser.feed`.

    Returns:
        ``(code, reason)``; ``(1005, "")`` for an empty payload, which means
        "no status code was present" (RFC 6455 §7.1.5).

    Raises:
        ProtocolError: 1002 for a 1-byte or >125-byte payload or a code not
            allowed on the wire; 1007 for a reason that is not UTF-8.
    """
    n = len(payload)
    if n == 0:
        return _CLOSE_NO_STATUS, ""
    if n == 1:
        raise ProtocolError("close frame payload of 1 byte", _CLOSE_PROTOCOL_ERROR)
    if n > MAX_CONTROL_PAYLOAD:
        raise ProtocolError(f"close frame payload of {n} bytes (max 125)", _CLOSE_PROTOCOL_ERROR)
    code = (payload[0] << 8) | payload[1]
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}", _CLOSE_PROTOCOL_ERROR)
    try:
        reason = bytes(payload[2:]).decode()
    except UnicodeDecodeError:
        # RFC 6455 §5.5.1 + §8.1: the reason is UTF-8; otherwise fail with 1007.
        raise ProtocolError("close reason is not valid UTF-8", _CLOSE_INVALID_PAYLOAD) from None
    return code, reason


def encode_close_payload(code: int, reason: str = "") -> bytes:
    """Build the payload of a Close frame (RFC 6455 §5.5.1).

    Args:
        code: A close code allowed on the wire (see :func:`is_valid_close_code`).
        reason: Human-readable reason; UTF-8 encoded and truncated on a
            character boundary to 123 bytes so the payload fits 125 bytes.

    Returns:
        The 2-byte big-endian code followed by the reason.

    Raises:
        ValueError: ``code`` may not be sent (e.g. 1005, 1006, 1015), or
            ``reason`` cannot be encoded (lone surrogates).
    """
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 §7.4)")
    raw = reason.encode()
    if len(raw) > _MAX_CLOSE_REASON:
        # Cutting may split a multi-byte character; "ignore" drops only that
        # incomplete tail since the rest is valid UTF-8.
        raw = raw[:_MAX_CLOSE_REASON].decode("utf-8", "ignore").encode()
    return code.to_bytes(2, "big") + raw


class MaskKeys:
    """Source of 4-byte masking keys (RFC 6455 §5.3).

    Keys must be unpredictable, so they come from a strong source
    (``os.urandom``), but drawing 4 bytes per frame costs a syscall per frame.
    Keys are therefore drawn in batches. Not thread-safe by design: it is used
    by the single I/O thread.
    """

    __slots__ = ("_batch", "_buf", "_pos", "_urandom")

    def __init__(self, urandom: Callable[[int], bytes] = os.urandom, batch: int = 1024) -> None:
        """Create a key source.

        Args:
            urandom: Returns that many strong random bytes (injected by tests).
            batch: Keys drawn per call of ``urandom``.

        Raises:
            ValueError: ``batch`` is less than 1.
        """
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self._urandom = urandom
        self._batch = batch
        self._buf = b""
        self._pos = 0

    def next(self) -> bytes:
        """Return the next 4-byte masking key.

        Raises:
            ValueError: ``urandom`` returned fewer bytes than asked.
        """
        pos = self._pos
        if pos >= len(self._buf):
            want = 4 * self._batch
            buf = self._urandom(want)
            if len(buf) != want:
                raise ValueError(f"urandom returned {len(buf)} bytes, expected {want}")
            self._buf = buf
            pos = 0
        self._pos = pos + 4
        return self._buf[pos : pos + 4]


def mask_payload(payload: BytesLike, mask_key: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask_key`` (RFC 6455 §5.3).

    Masking and unmasking are the same operation.

    Args:
        payload: The data.
        mask_key: 4 bytes.

    Returns:
        The masked (or unmasked) data, same length as ``payload``.
    """
    c_mask = _c_mask
    if c_mask is not None:
        return c_mask(payload, mask_key)
    n = len(payload)
    if n <= _INT_MASK_MAX:
        key = (mask_key * ((n >> 2) + 1))[:n]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little"
        )
    out = bytearray(n)
    _strided_mask(out, 0, payload, mask_key)
    return bytes(out)


def _strided_mask(out: bytearray, at: int, payload: BytesLike, mask_key: bytes) -> None:
    """Write ``payload`` masked with ``mask_key`` into ``out`` from index ``at``.

    Byte i is XOR-ed with key byte i % 4, so each of the four strided slices
    is XOR-ed with one constant byte: a table lookup done by bytes.translate in C.
    """
    t = _XOR_TABLES
    data = payload if type(payload) is bytes else bytes(payload)
    out[at::4] = data[0::4].translate(t[mask_key[0]])
    out[at + 1 :: 4] = data[1::4].translate(t[mask_key[1]])
    out[at + 2 :: 4] = data[2::4].translate(t[mask_key[2]])
    out[at + 3 :: 4] = data[3::4].translate(t[mask_key[3]])


def encode_frame(
    opcode: int, payload: BytesLike, mask_key: bytes, fin: bool = True, rsv1: bool = False
) -> bytes:
    """Encode one client frame, masked as RFC 6455 §5.1/§5.3 requires.

    Args:
        opcode: One of the ``OP_*`` constants.
        payload: The (unmasked) payload; text must already be UTF-8 encoded.
        mask_key: The 4-byte masking key, e.g. from :meth:`MaskKeys.next`.
        fin: False for every fragment but the last one (RFC 6455 §5.4).
        rsv1: Set RSV1: the first (or only) frame of a message compressed with
            permessage-deflate (RFC 7692 §6); only for OP_TEXT / OP_BINARY.

    Returns:
        The whole frame: header, masking key, masked payload.

    Raises:
        ValueError: Unknown opcode, a key that is not 4 bytes, a control
            frame that is fragmented or longer than 125 bytes (RFC 6455 §5.5),
            or ``rsv1`` on a control or continuation frame.
    """
    n = len(payload)
    if opcode not in _VALID_OPCODES or len(mask_key) != 4:
        raise ValueError(f"invalid opcode {opcode!r} or mask key {mask_key!r}")
    if opcode & 0x8 and (n > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames must be final and carry at most 125 bytes")
    b0 = opcode | 0x80 if fin else opcode
    if rsv1:
        if opcode not in (OP_TEXT, OP_BINARY):
            raise ValueError("RSV1 is only set on the first frame of a data message")
        b0 |= 0x40
    # RFC 6455 §5.2: minimal length encoding; 0x80 is the MASK bit.
    if n < 126:
        header = bytes((b0, 0x80 | n))
    elif n < 0x10000:
        header = _pack_16(b0, 0xFE, n)
    else:
        header = _pack_64(b0, 0xFF, n)
    c_mask = _c_mask
    if c_mask is not None:
        # One copy to mask, one to join (header and key: at most 14 bytes).
        return b"".join((header, mask_key, c_mask(payload, mask_key)))
    if n <= _INT_MASK_MAX:
        key = (mask_key * ((n >> 2) + 1))[:n]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little"
        )
        return header + mask_key + masked
    # Large payload: mask straight into the frame buffer to avoid extra copies.
    h = len(header) + 4
    out = bytearray(h + n)
    out[: h - 4] = header
    out[h - 4 : h] = mask_key
    _strided_mask(out, h, payload, mask_key)
    return bytes(out)


def encode_frame_header(
    opcode: int, length: int, mask_key: bytes, fin: bool = True, rsv1: bool = False
) -> bytes:
    """The start of a client frame: header and masking key, without the payload.

    For big payloads, so that the masked payload (:func:`mask_payload`) can be
    written after it without being copied into one frame object. Together they
    are byte for byte what :func:`encode_frame` returns.

    Args:
        opcode: One of the ``OP_*`` constants.
        length: The payload length in bytes.
        mask_key: The 4-byte masking key the payload is masked with.
        fin: As :func:`encode_frame`.
        rsv1: As :func:`encode_frame`.

    Returns:
        2 to 14 bytes: the header (minimal length encoding) and ``mask_key``.

    Raises:
        ValueError: As :func:`encode_frame`, or a negative ``length``.
    """
    if opcode not in _VALID_OPCODES or len(mask_key) != 4 or length < 0:
        raise ValueError(f"invalid opcode {opcode!r}, length {length!r} or mask key")
    if opcode & 0x8 and (length > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames must be final and carry at most 125 bytes")
    b0 = opcode | 0x80 if fin else opcode
    if rsv1:
        if opcode not in (OP_TEXT, OP_BINARY):
            raise ValueError("RSV1 is only set on the first frame of a data message")
        b0 |= 0x40
    if length < 126:
        return bytes((b0, 0x80 | length)) + mask_key
    if length < 0x10000:
        return _pack_16(b0, 0xFE, length) + mask_key
    return _pack_64(b0, 0xFF, length) + mask_key


def encode_frames(
    frames: Iterable[Tuple[int, BytesLike]], keys: MaskKeys, deflate: Optional[Deflate] = None
) -> bytes:
    """Encode several final frames into one buffer (write coalescing).

    Args:
        frames: ``(opcode, payload)`` pairs, each sent as a FIN frame.
        keys: Source of a fresh masking key per frame.
        deflate: With permessage-deflate negotiated, the connection's codec
            (``deflate.PerMessageDeflate``): text and binary frames of at
            least ``deflate.threshold`` bytes go through ``deflate.encode``;
            smaller ones and control frames cost one comparison more than
            without it. None: nothing is compressed.

    Returns:
        The frames concatenated in order.

    Raises:
        ValueError: As :func:`encode_frame`.
    """
    next_key = keys.next
    if deflate is None:
        return b"".join([encode_frame(op, payload, next_key()) for op, payload in frames])
    threshold = deflate.threshold
    compress = deflate.encode
    # One comprehension, like the uncompressed path: a small message costs a
    # len() and a comparison more, not a Python loop body.
    return b"".join(
        [
            encode_frame(op, payload, next_key())
            if len(payload) < threshold or not OP_CONT < op <= OP_BINARY
            else _encode_compressed(op, payload, next_key(), compress)
            for op, payload in frames
        ]
    )


def _encode_compressed(
    opcode: int,
    payload: BytesLike,
    mask_key: bytes,
    compress: Callable[[BytesLike], Tuple[bytes, bool]],
) -> bytes:
    data, rsv1 = compress(payload)
    return encode_frame(opcode, data, mask_key, True, rsv1)
