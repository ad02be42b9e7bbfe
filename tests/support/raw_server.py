"""A hand-made WebSocket peer for tests that need frames no real server sends.

It completes the opening handshake (RFC 6455 §4.2.2), then writes whatever bytes
the test scripted, and reports the first frame the client sends back.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from typing import List, Optional, Tuple

from tether_sync.protocol.frames import mask_payload

from .listener import Listener

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class ScriptedPeer:
    """Accepts connections; sends ``script`` after each handshake.

    Connections are served one after the other; a subclass that keeps each
    connection open sets ``threaded = True`` and overrides :meth:`_talk`.

    Attributes:
        replies: ``(opcode, payload)`` of the first frame each client sent back.
        handshakes: How many handshakes completed.
    """

    threaded = False
    """Serve each connection on a thread of its own (see :class:`Listener`)."""

    def __init__(self, script: bytes) -> None:
        self.script = script
        self.replies: List[Tuple[int, bytes]] = []
        self.handshakes = 0
        self._cond = threading.Condition()
        self._listener = Listener(self._talk, threaded=self.threaded, name="scripted-peer")
        self.url = self._listener.url

    def wait_replies(self, n: int, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.replies) >= n, timeout)

    def close(self) -> None:
        self._listener.close()

    def _talk(self, conn: socket.socket) -> None:
        """Handshake, send the script, record the first frame that comes back."""
        with conn:
            conn.settimeout(10)
            self._handshake(conn)
            conn.sendall(self.script)
            reply = _read_frame(conn)
        if reply is not None:
            with self._cond:
                self.replies.append(reply)
                self._cond.notify_all()

    def _handshake(self, conn: socket.socket) -> None:
        accept_handshake(conn)
        with self._cond:
            self.handshakes += 1
            self._cond.notify_all()


def read_request(conn: socket.socket) -> bytes:
    """A client's opening handshake request, up to its blank line."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("client left during the handshake")
        request += chunk
    return request


def accept_value(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept answer to a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def accept_handshake(conn: socket.socket) -> bytes:
    """Read a client's opening handshake and answer 101 (RFC 6455 §4.2.2); the request."""
    request = read_request(conn)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = accept_value(key)
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    return request


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _read_frame(conn: socket.socket) -> Optional[Tuple[int, bytes]]:
    """One client frame (masked, per RFC 6455 §5.3), unmasked."""
    b0, b1 = _recv_exact(conn, 2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", _recv_exact(conn, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", _recv_exact(conn, 8))
    key = _recv_exact(conn, 4)
    return b0 & 0x0F, mask_payload(_recv_exact(conn, length), key)


def server_frame(
    opcode: int, payload: bytes, *, masked: bool = False, rsv1: bool = False, fin: bool = True
) -> bytes:
    """A frame as a server would send it (unmasked unless asked to break the rules)."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if masked:
        key = b"\x01\x02\x03\x04"
        return head + key + mask_payload(payload, key)
    return head + payload


class MutePeer:
    """Accepts TCP connections, completes the upgrade (or not), then says nothing.

    It never reads either: a client's writes stall once the kernel buffers fill.
    Connections stay open until :meth:`close`.

    Args:
        upgrade: Complete the WebSocket handshake (False: no HTTP answer at all).
    """

    def __init__(self, upgrade: bool = True) -> None:
        self.upgrade = upgrade
        self._listener = Listener(self._greet, name="mute-peer")
        self.port = self._listener.port
        self.url = self._listener.url

    def _greet(self, conn: socket.socket) -> None:
        # The connection stays open: the listener closes it in close().
        if self.upgrade:
            conn.settimeout(10)
            accept_handshake(conn)

    def close(self) -> None:
        self._listener.close()
