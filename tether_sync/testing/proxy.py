"""A fault-injecting TCP relay on 127.0.0.1, in front of the bundled server.

The test server's URL is the relay's, so faults act on the network between the
client and the server without touching the server: a blackhole, latency, a
peer that stops reading, resets, refused handshakes, and a port where nothing
listens (a killed server). Each relayed connection has four threads (a reader
and a writer per direction, so that latency delays each chunk without
delaying the ones behind it); every thread polls its socket with a short
timeout, so a reset or :meth:`FaultProxy.close` ends it within
:data:`POLL` seconds.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import struct
import threading
import time
from typing import Callable, Deque, List, Optional, Tuple

log = logging.getLogger("tether_sync")

POLL = 0.05
"""Seconds a relay thread waits on its socket before it looks at its flags again."""

READ_SIZE = 256 * 1024

Tap = Callable[[bytes], None]
"""Receives every chunk the server sends on one connection (for recording)."""

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Faults:
    """The relay's fault settings; every relay thread reads them.

    Guarded by ``cond`` (its one purpose); ``cond`` is notified on every change,
    so a thread waiting for a window to end re-reads the settings.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.latency = 0.0  # seconds added to each chunk, each way
        self.blackhole_until = 0.0  # monotonic: nothing moves either way until then
        self.stall_until = 0.0  # monotonic: client -> server not read until then
        self.refuse = 0  # handshakes to refuse
        self.refuse_status = 503

    def hold(self, upstream: bool) -> float:
        """Seconds this direction must wait before it may move bytes (0: go)."""
        now = time.monotonic()
        until = self.blackhole_until
        if upstream:
            until = max(until, self.stall_until)
        return max(0.0, until - now)


class _Direction:
    """One direction of one relayed connection: a reader, a queue, a writer."""

    def __init__(
        self,
        pipe: _Pipe,
        src: socket.socket,
        dst: socket.socket,
        upstream: bool,
        tap: Optional[Tap],
    ) -> None:
        self._pipe = pipe
        self._src = src
        self._dst = dst
        self._upstream = upstream  # client -> server
        self._tap = tap
        # Guards _chunks (its one purpose): (due, bytes), b"" is the EOF mark.
        self._cond = threading.Condition(threading.Lock())
        self._chunks: Deque[Tuple[float, bytes]] = collections.deque()
        name = "up" if upstream else "down"
        self.threads = [
            threading.Thread(target=self._read, name=f"tether-proxy-{name}-r", daemon=True),
            threading.Thread(target=self._write, name=f"tether-proxy-{name}-w", daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _wait_faults(self, upstream_stall: bool) -> bool:
        """Wait out a blackhole (or a stall); False if the pipe died meanwhile."""
        faults = self._pipe.faults
        with faults.cond:
            while not self._pipe.dead:
                hold = faults.hold(upstream_stall)
                if hold <= 0:
                    return True
                faults.cond.wait(min(hold, POLL))
        return False

    def _read(self) -> None:
        src, faults = self._src, self._pipe.faults
        try:
            while self._wait_faults(self._upstream):
                ready, _, _ = select.select([src], [], [], POLL)
                if not ready:
                    continue
                with faults.cond:
                    if faults.hold(self._upstream) > 0:
                        continue  # a fault began while we waited: wait it out first
                data = src.recv(READ_SIZE)
                with faults.cond:
                    due = time.monotonic() + faults.latency
                if data and self._tap is not None:
                    try:
                        self._tap(data)
                    except Exception:  # a recorder never breaks the relay
                        log.exception("recording tap failed; recording stops for this link")
                        self._tap = None
                with self._cond:
                    self._chunks.append((due, data))
                    self._cond.notify_all()
                if not data:
                    return
        except (OSError, ValueError):
            self._pipe.reset()

    def _write(self) -> None:
        dst = self._dst
        try:
            while not self._pipe.dead:
                with self._cond:
                    if not self._chunks:
                        self._cond.wait(POLL)
                        continue
                    due, data = self._chunks[0]
                wait = due - time.monotonic()
                if wait > 0:
                    with self._cond:
                        self._cond.wait(min(wait, POLL))
                    continue
                if not self._wait_faults(False):  # a blackhole holds the queued bytes too
                    return
                with self._cond:
                    self._chunks.popleft()
                if not data:  # EOF from the source: pass the half-close on
                    dst.shutdown(socket.SHUT_WR)
                    self._pipe.half_closed()
                    return
                view = memoryview(data)
                while view and not self._pipe.dead:
                    _, ready, _ = select.select([], [dst], [], POLL)
                    if ready:
                        sent = dst.send(view)
                        view = view[sent:]
        except (OSError, ValueError):
            self._pipe.reset()


class _Pipe:
    """One relayed connection: the client's socket and the one to the server."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: socket.socket,
        server: socket.socket,
        tap: Optional[Tap],
    ) -> None:
        self.faults = proxy.faults
        self._proxy = proxy
        self.client = client
        self.server = server
        self.dead = False
        # Guards dead and _halves (its one purpose: reset() and the EOFs race).
        self._lock = threading.Lock()
        self._halves = 0
        self.up = _Direction(self, client, server, True, None)
        self.down = _Direction(self, server, client, False, tap)

    @property
    def threads(self) -> List[threading.Thread]:
        return [*self.up.threads, *self.down.threads]

    def start(self) -> None:
        self.up.start()
        self.down.start()

    def half_closed(self) -> None:
        with self._lock:
            self._halves += 1
            done = self._halves == 2
        if done:
            self.reset(rst=False)

    def reset(self, rst: bool = True) -> None:
        """End the connection: RST both sides (``rst``), or a plain close."""
        with self._lock:
            if self.dead:
                return
            self.dead = True
        for sock in (self.client, self.server):
            try:
                if rst:
                    # Linger 0: close() sends RST and drops unsent bytes, as a
                    # connection reset by the network or a crashed host would.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass
        self.up.wake()
        self.down.wake()
        self._proxy._forget(self)


class FaultProxy:
    """A TCP relay from a fixed loopback port to ``upstream``, with faults.

    Args:
        upstream: ``(host, port)`` of the server.
        tap: Called with a new connection's ``(send)``: returns a :data:`Tap`
            for the bytes the server sends on it, or None.

    Attributes:
        port: The relay's port (the same across :meth:`kill` and :meth:`revive`).
    """

    def __init__(
        self,
        upstream: Tuple[str, int],
        tap: Optional[Callable[[], Optional[Tap]]] = None,
    ) -> None:
        self.upstream = upstream
        self.faults = _Faults()
        self._tap = tap
        # Guards _pipes, _threads, _listener and _accepter (its one purpose).
        self._lock = threading.Lock()
        self._pipes: List[_Pipe] = []
        self._threads: List[threading.Thread] = []
        self._listener: Optional[socket.socket] = None
        self._accepter: Optional[threading.Thread] = None
        self.port = 0
        self.accepted = 0  # connections accepted (refused ones included)
        self._listen()

    # ------------------------------------------------------------ faults

    def set_latency(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` late, each way (0 lifts it)."""
        with self.faults.cond:
            self.faults.latency = max(0.0, float(seconds))
            self.faults.cond.notify_all()

    def blackhole(self, seconds: float) -> None:
        """Nothing moves either way for ``seconds``; then it all flows again."""
        with self.faults.cond:
            self.faults.blackhole_until = time.monotonic() + max(0.0, float(seconds))
            self.faults.cond.notify_all()

    def stall_reading(self, seconds: float) -> None:
        """Stop reading what clients send for ``seconds`` (their writes back up)."""
        with self.faults.cond:
            self.faults.stall_until = time.monotonic() + max(0.0, float(seconds))
            self.faults.cond.notify_all()

    def refuse(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` handshakes with HTTP ``status`` and close."""
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status!r}")
        with self.faults.cond:
            self.faults.refuse = max(0, int(n))
            self.faults.refuse_status = status

    def heal(self) -> None:
        """Lift every fault."""
        with self.faults.cond:
            self.faults.latency = 0.0
            self.faults.blackhole_until = 0.0
            self.faults.stall_until = 0.0
            self.faults.refuse = 0
            self.faults.cond.notify_all()

    def reset_all(self) -> int:
        """RST every relayed connection; how many there were."""
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.reset()
        return len(pipes)

    @property
    def connections(self) -> int:
        """Relayed connections open now."""
        with self._lock:
            return len(self._pipes)

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._listener is not None

    def kill(self) -> None:
        """Stop listening (the port refuses connections) and end every connection."""
        self._unlisten()
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.reset(rst=False)  # a killed process's sockets: the kernel sends FIN

    def revive(self) -> None:
        """Listen again on the same port (after :meth:`kill`)."""
        if not self.listening:
            self._listen()

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, reset every connection, join every thread."""
        self._unlisten()
        self.reset_all()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
            self._threads = []
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------ internals

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port))
        except OSError:
            listener.close()
            raise
        listener.listen(128)
        self.port = listener.getsockname()[1]
        accepter = threading.Thread(
            target=self._accept, args=(listener,), name="tether-proxy-accept", daemon=True
        )
        with self._lock:
            self._listener = listener
            self._accepter = accepter
            self._threads.append(accepter)
        accepter.start()

    def _unlisten(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            accepter, self._accepter = self._accepter, None
        if listener is not None:
            listener.close()
        if accepter is not None:
            accepter.join(5.0)  # it polls: ends within POLL seconds

    def _accept(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                ready, _, _ = select.select([listener], [], [], POLL)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                return
            self.accepted += 1
            with self.faults.cond:
                refuse = self.faults.refuse > 0
                if refuse:
                    self.faults.refuse -= 1
                status = self.faults.refuse_status
            if refuse:
                thread = threading.Thread(
                    target=_refuse, args=(client, status), name="tether-proxy-refuse", daemon=True
                )
                with self._lock:
                    self._threads.append(thread)
                thread.start()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5.0)
            except OSError:
                _rst(client)  # the server is down: the client sees a reset
                continue
            for sock in (client, server):
                sock.setblocking(True)
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tap = self._tap() if self._tap is not None else None
            pipe = _Pipe(self, client, server, tap)
            with self._lock:
                self._pipes.append(pipe)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.extend(pipe.threads)
            pipe.start()

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            if pipe in self._pipes:
                self._pipes.remove(pipe)


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def _refuse(client: socket.socket, status: int) -> None:
    """Read the request head, answer ``status``, close (a refused handshake)."""
    try:
        client.settimeout(5.0)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                break
            head += chunk
        reason = _REASONS.get(status, "Refused")
        body = f"{status} {reason}: refused by the tether_server fixture\n".encode()
        client.sendall(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
    except OSError:
        pass
    finally:
        client.close()


__all__ = ["POLL", "FaultProxy", "Tap"]
