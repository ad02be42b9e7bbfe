"""A TCP listener on 127.0.0.1 for hand-made test peers.

Every peer the tests write by hand (scripted WebSocket peers, proxies, peers that
stall, lie or slam the door) is this listener plus a function that talks to one
connection. Written once, so that every peer stops at once when a test ends:
``close()`` on a listening socket does not wake a thread blocked in ``accept()``
on Linux, ``shutdown()`` does (a copy that only closed made its test wait for
the join's timeout).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, List


class Listener:
    """Accepts TCP connections on 127.0.0.1 (a free port) and hands each to ``handle``.

    ``handle(conn)`` runs on the accepting thread, one connection after the other,
    or with ``threaded=True`` on a thread of its own per connection (for peers
    that keep a connection open while the client makes the next one). The
    handler owns the connection: it closes it (usually ``with conn:``) or keeps
    it open as long as it likes. An ``OSError`` out of the handler (the client
    left) ends that connection only.

    :meth:`close` returns quickly: it shuts the listening socket down (which
    wakes ``accept()``), shuts down every accepted connection (which wakes a
    handler blocked in ``recv()``), joins the threads with a timeout, then
    closes the connections.

    Args:
        handle: Talks to one accepted connection.
        threaded: One thread per connection instead of one after the other.
        name: The accepting thread's name (handler threads add ``-conn``).

    Attributes:
        port: The port listened on.
        url: ``ws://127.0.0.1:<port>/``.
    """

    def __init__(
        self,
        handle: Callable[[socket.socket], None],
        *,
        threaded: bool = False,
        name: str = "test-listener",
    ) -> None:
        self._handle = handle
        self._threaded = threaded
        self._name = name
        self._lock = threading.Lock()  # guards _conns, _threads and _closed
        self._conns: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._closed = False
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/"
        self._acceptor = threading.Thread(target=self._accept, name=name, daemon=True)
        self._acceptor.start()

    @property
    def accepted(self) -> int:
        """How many connections were accepted so far."""
        with self._lock:
            return len(self._conns)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, wake and join every thread, close every connection (idempotent).

        Args:
            timeout: Seconds for all the joins together.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        except OSError:
            pass
        self._sock.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv()
            except OSError:
                pass  # closed by its handler already
        deadline = time.monotonic() + timeout
        self._acceptor.join(timeout)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for conn in conns:
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # close()
            with self._lock:
                if self._closed:  # accepted as close() began: it never saw this one
                    conn.close()
                    return
                self._conns.append(conn)
                if self._threaded:
                    thread = threading.Thread(
                        target=self._run, args=(conn,), name=f"{self._name}-conn", daemon=True
                    )
                    self._threads.append(thread)
                    thread.start()  # under the lock: close() never joins an unstarted thread
            if not self._threaded:
                self._run(conn)

    def _run(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        except OSError:
            pass  # the client left, or close() shut the connection down
