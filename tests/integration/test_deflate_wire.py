"""permessage-deflate over a real socket: websocket-client's handshake, our codec.

The peer is python-websockets' threaded server with compression on (its
default settings), on 127.0.0.1. websocket-client sends our offer header and
exposes the response headers through ``getheaders()``; after that the raw
socket carries frames built by ``tether_sync.protocol.frames`` and ``deflate``. This is
the exact recipe the client's loop follows.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any, Iterator, List, Optional

import pytest
import websocket
from websockets.sync.server import Server, ServerConnection, serve

from tether_sync.protocol.deflate import PerMessageDeflate, accept_response, client_offer
from tether_sync.protocol.frames import (
    OP_CLOSE,
    OP_TEXT,
    FrameParser,
    MaskKeys,
    encode_close_payload,
    encode_frame,
)

MiB = 2**20


def _echo(conn: ServerConnection) -> None:
    for message in conn:
        conn.send(message)


def _start(compression: Optional[str]) -> Iterator[str]:
    server: Server = serve(
        _echo, "127.0.0.1", 0, compression=compression, max_size=8 * MiB, ping_interval=None
    )
    thread = threading.Thread(target=server.serve_forever, name="ws-echo", daemon=True)
    thread.start()
    try:
        port = server.socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture
def deflate_server() -> Iterator[str]:
    yield from _start("deflate")


@pytest.fixture
def plain_server() -> Iterator[str]:
    yield from _start(None)


def _recv_message(sock: socket.socket, parser: FrameParser) -> Any:
    while True:
        data = sock.recv(262144)
        assert data, "server closed the connection"
        msgs = parser.feed(data)
        if msgs:
            assert len(msgs) == 1
            return msgs[0]


def _payload() -> bytes:
    rows = [
        {"seq": i, "channel": "prices", "bid": i * 0.5, "ask": i * 0.5 + 0.25} for i in range(20000)
    ]
    data = json.dumps(rows).encode()
    return data + b" " * max(0, MiB - len(data))


def test_one_mib_json_crosses_compressed_both_ways(deflate_server: str) -> None:
    ws = websocket.create_connection(
        deflate_server, header=[f"Sec-WebSocket-Extensions: {client_offer()}"], timeout=10
    )
    try:
        headers = ws.getheaders()
        assert headers is not None
        params = accept_response(headers.get("sec-websocket-extensions"))
        assert params is not None  # websockets' server: client_max_window_bits=12, server 12
        assert (params.client_max_window_bits, params.server_max_window_bits) == (12, 12)
        codec = PerMessageDeflate(params)
        parser = FrameParser(8 * MiB, inflate=codec.decode)
        keys = MaskKeys()
        sock = ws.sock
        assert sock is not None

        payload = _payload()
        assert len(payload) >= MiB
        for _ in range(2):  # twice: the second message reuses both contexts
            data, rsv1 = codec.encode(payload)
            assert rsv1 and len(data) < len(payload) // 4
            sock.sendall(encode_frame(OP_TEXT, data, keys.next(), rsv1=rsv1))
            assert _recv_message(sock, parser) == (OP_TEXT, payload.decode())

        # Below the threshold: sent uncompressed; websockets answers compressed.
        small, rsv1 = codec.encode(b'{"type":"ping"}')
        assert not rsv1
        sock.sendall(encode_frame(OP_TEXT, small, keys.next()))
        assert _recv_message(sock, parser) == (OP_TEXT, '{"type":"ping"}')

        sock.sendall(encode_frame(OP_CLOSE, encode_close_payload(1000), keys.next()))
        assert _recv_message(sock, parser)[0] == OP_CLOSE
    finally:
        ws.shutdown()


def test_server_without_compression_declines(plain_server: str) -> None:
    ws = websocket.create_connection(
        plain_server, header=[f"Sec-WebSocket-Extensions: {client_offer()}"], timeout=10
    )
    try:
        headers = ws.getheaders()
        assert headers is not None
        assert accept_response(headers.get("sec-websocket-extensions")) is None
        # Then the parser gets no inflate, and frames are sent plain.
        parser = FrameParser(8 * MiB)
        sock = ws.sock
        assert sock is not None
        sock.sendall(encode_frame(OP_TEXT, b"plain", MaskKeys().next()))
        got: List[Any] = [_recv_message(sock, parser)]
        assert got == [(OP_TEXT, "plain")]
    finally:
        ws.shutdown()
