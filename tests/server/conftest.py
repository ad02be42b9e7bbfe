"""Helpers for the server tests: a thin JSON client over plain websocket-client."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
import websocket

_barrier_ids = itertools.count(1)


class Client:
    """A blocking websocket-client connection with JSON helpers.

    ``barrier()`` sends a ``tether:ping`` and returns everything received before
    its pong: since the server answers a connection's messages in order (with no
    latency set), that proves a message got *no* reply without waiting for a
    timeout.
    """

    def __init__(self, url: str, timeout: float = 5.0, **options: Any) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout, **options)
        self.timeout = timeout

    def send_json(self, message: Any) -> None:
        self.ws.send(json.dumps(message))

    def send(self, text: str) -> None:
        self.ws.send(text)

    def send_binary(self, data: bytes) -> None:
        self.ws.send_binary(data)

    def recv_text(self, timeout: Optional[float] = None) -> str:
        self.ws.settimeout(self.timeout if timeout is None else timeout)
        opcode, data = self.ws.recv_data(control_frame=False)
        assert opcode == websocket.ABNF.OPCODE_TEXT, f"expected a text frame, got opcode {opcode}"
        return data.decode("utf-8")

    def recv_json(self, timeout: Optional[float] = None) -> Any:
        return json.loads(self.recv_text(timeout))

    def recv_close(self, timeout: Optional[float] = None, reply: bool = True) -> Tuple[int, str]:
        """Read frames until a close frame; echo it (unless ``reply`` is False).

        Returns:
            The close frame's (code, reason).
        """
        self.ws.settimeout(self.timeout if timeout is None else timeout)
        while True:
            frame = self.ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                reason = data[2:].decode("utf-8")
                if reply:
                    # Answer, then close the socket, as a well-behaved client does.
                    try:
                        self.ws.send_close(code, reason.encode("utf-8"))
                    finally:
                        self.ws.shutdown()
                return code, reason

    def barrier(self, timeout: Optional[float] = None) -> List[Any]:
        ts = f"barrier-{next(_barrier_ids)}"
        self.send_json({"type": "tether:ping", "ts": ts})
        seen: List[Any] = []
        while True:
            message = self.recv_json(timeout)
            if message == {"type": "tether:pong", "ts": ts}:
                return seen
            seen.append(message)

    def close(self) -> None:
        try:
            if self.ws.connected:
                self.ws.close(timeout=1.0)
        except Exception:
            pass
        finally:
            self.ws.shutdown()


@pytest.fixture
def connect() -> Iterator[Callable[..., Client]]:
    """Factory: ``connect(server.url)`` opens a :class:`Client`, closed at teardown."""
    clients: List[Client] = []

    def factory(url: str, timeout: float = 5.0, **options: Any) -> Client:
        client = Client(url, timeout, **options)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            client.close()


class RedisServer:
    """A real ``redis-server`` on a free loopback port, with its data in a temp dir.

    Append-only file on (fsync on every write), no RDB snapshots: a
    :meth:`restart` keeps everything that was acknowledged.
    """

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.port = _free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            threading.Event().wait(0.02)  # polling a port that is not listening yet
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """SHUTDOWN (SIGTERM): the append-only file is flushed."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` for one test (skipped when the binary is missing)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(str(directory)).start()
    try:
        yield server
    finally:
        server.stop()
