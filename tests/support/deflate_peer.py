"""A hand-made peer that answers a permessage-deflate offer as the test says.

For what no real server sends: a deflate "bomb" (a small frame that inflates
to 1 GiB) and extension answers that break RFC 7692.
"""

from __future__ import annotations

import socket
import threading
import zlib
from typing import List, Optional, Sequence, Tuple

from .listener import Listener
from .raw_server import _read_frame, accept_value, read_request, server_frame

GiB = 2**30


def deflate_bomb(size: int = GiB) -> bytes:
    """A permessage-deflate payload (tail stripped) that inflates to ``size`` zero bytes.

    Built in milliseconds: after the first MiB the compressor's state repeats,
    so every further MiB compresses to the same bytes.
    """
    mib = 2**20
    assert size % mib == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    first = c.compress(bytes(mib)) + c.flush(zlib.Z_SYNC_FLUSH)
    rest = c.compress(bytes(mib)) + c.flush(zlib.Z_SYNC_FLUSH)
    return (first + rest * (size // mib - 1))[:-4]  # RFC 7692 §7.2.1: no 00 00 ff ff


def compressed(text: str) -> bytes:
    """``text`` as one permessage-deflate payload from a fresh compressor."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(text.encode()) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


class DeflatePeer:
    """Accepts connections; answers the extension offer with ``answer``.

    Connection ``i`` gets ``scripts[i]`` after its handshake (the last one for
    every later connection), then the peer records the first frame the client
    sends back.

    Attributes:
        offers: The ``Sec-WebSocket-Extensions`` request value of each handshake
            (None when the client offered nothing).
        replies: ``(opcode, payload)`` of the first frame each client sent back.
    """

    def __init__(self, answer: Optional[str], scripts: Sequence[bytes]) -> None:
        self.answer = answer
        self.scripts = list(scripts)
        self.offers: List[Optional[str]] = []
        self.replies: List[Tuple[int, bytes]] = []
        self._cond = threading.Condition()  # guards the lists
        # One thread per connection: a client that keeps its connection open
        # must not hold up the next one's handshake.
        self._listener = Listener(self._talk, threaded=True, name="deflate-peer")
        self.url = self._listener.url

    @property
    def handshakes(self) -> int:
        with self._cond:
            return len(self.offers)

    def wait(self, *, replies: int = 0, handshakes: int = 0, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: len(self.replies) >= replies and len(self.offers) >= handshakes, timeout
            )

    def close(self) -> None:
        self._listener.close()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            n = self._handshake(conn)
            conn.sendall(self.scripts[min(n, len(self.scripts) - 1)])
            reply = _read_frame(conn)
            if reply is not None:
                with self._cond:
                    self.replies.append(reply)
                    self._cond.notify_all()

    def _handshake(self, conn: socket.socket) -> int:
        request = read_request(conn)
        headers = {}
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().decode()
        key = headers[b"sec-websocket-key"].encode()
        accept = accept_value(key)
        response = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
        )
        if self.answer is not None:
            response += f"Sec-WebSocket-Extensions: {self.answer}\r\n".encode()
        conn.sendall(response + b"\r\n")
        with self._cond:
            self.offers.append(headers.get(b"sec-websocket-extensions"))
            self._cond.notify_all()
            return len(self.offers) - 1


__all__ = ["DeflatePeer", "GiB", "compressed", "deflate_bomb", "server_frame"]
