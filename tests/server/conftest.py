"""Helpers for the server tests: a thin JSON client over plain websocket-client."""

from __future__ import annotations

import itertools
import json
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
