"""A server that accepts none of the offered subprotocols (issue 23): say so and stop.

Before: websocket-client's "Invalid WebSocket Header", retried forever (11
reconnects in 3 s). A real python-websockets server that speaks no subprotocol.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, List

import pytest

from tether_sync import ProtocolError, TetherClient


@pytest.fixture
def plain_server() -> Iterator[Any]:
    from websockets.sync.server import serve

    handshakes: List[int] = []

    def handler(ws: Any) -> None:
        handshakes.append(1)
        for message in ws:
            ws.send(message)

    server = serve(handler, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.handshakes = handshakes  # type: ignore[attr-defined]
    server.url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.timeout(30)
def test_a_refused_subprotocol_is_named_and_not_retried(plain_server: Any) -> None:
    errors: List[BaseException] = []
    client = TetherClient(plain_server.url, protocol="raw", subprotocols=["chat.v9", "chat.v8"])
    client.on("error", lambda e: errors.append(e.error))
    try:
        with pytest.raises(
            ProtocolError, match=r"none of the offered subprotocols \(chat.v9, chat.v8\)"
        ):
            client.connect(wait=True, timeout=10)
        assert client.state.value == "closed"
        assert client.stats().reconnects == 0 and client.stats().attempt <= 1
    finally:
        client.close(timeout=5)
    assert any("chat.v9" in str(e) for e in errors)


@pytest.mark.timeout(30)
def test_an_accepted_subprotocol_still_opens(plain_server: Any) -> None:
    # The same server with no subprotocol offered: opens and echoes (no false alarm).
    client = TetherClient(plain_server.url, protocol="raw")
    try:
        inbox = client.subscribe("default")
        client.send("hi")
        assert inbox.get(timeout=10) == "hi"
    finally:
        client.close(timeout=5)
