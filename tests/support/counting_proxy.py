"""A TCP relay on 127.0.0.1 that counts the bytes crossing it each way.

Put it between a client and a server to measure what really went on the wire
(handshake included), e.g. that a compressed 1 MiB message took far fewer bytes.
"""

from __future__ import annotations

import socket
import threading
from typing import List, Tuple

from .listener import Listener


class CountingProxy:
    """Relays every connection to ``(host, port)``; counts bytes each way.

    Attributes:
        url: ``ws://127.0.0.1:<port>/`` of the relay (``path`` appended).
        up: Bytes the clients sent (towards the server), all connections.
        down: Bytes the server sent (towards the clients), all connections.
    """

    def __init__(self, host: str, port: int, path: str = "/") -> None:
        self._target = (host, port)
        self._lock = threading.Lock()  # guards up, down, _socks
        self.up = 0
        self.down = 0
        self._socks: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._listener = Listener(self._relay, name="count-proxy")
        self.url = f"ws://127.0.0.1:{self._listener.port}{path}"

    def counts(self) -> Tuple[int, int]:
        """``(up, down)`` so far."""
        with self._lock:
            return self.up, self.down

    def close(self) -> None:
        self._listener.close()  # shuts down and closes the client sides too
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self._threads):
            thread.join(5)
        for sock in socks:
            sock.close()

    def _relay(self, client: socket.socket) -> None:
        """Connect to the target for ``client``; one pump thread each way."""
        try:
            server = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        with self._lock:
            self._socks += [client, server]
        for src, dst, up in ((client, server, True), (server, client, False)):
            thread = threading.Thread(
                target=self._pump, args=(src, dst, up), name="count-pump", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        while True:
            try:
                data = src.recv(262144)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self._lock:
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
            try:
                dst.sendall(data)
            except OSError:
                return
