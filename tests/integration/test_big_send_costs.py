"""What a big send costs beyond its bytes: memory held while it is written, pings per stream.

A real client and a peer on 127.0.0.1 that reads every frame, keeps nothing and
answers pings (the client holds a big raw message's Delivery until a ping sent
after it is answered).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import tracemalloc
from typing import Any, Iterator

import pytest
from support.listener import Listener
from support.raw_server import accept_handshake, server_frame

from tether_sync import TetherClient

MIB = 2**20
OP_PING, OP_PONG, OP_CLOSE = 0x9, 0xA, 0x8


class DiscardingPeer:
    """Reads client frames without keeping their payloads; answers pings and the close.

    Args:
        go: The handshake is answered once this is set (messages sent before
            that are queued by the client).
    """

    def __init__(self, go: threading.Event) -> None:
        self.go = go
        self.data_bytes = 0  # payload bytes of data frames received
        self.pings = 0
        self._buf = bytearray(MIB)  # payloads land here, overwritten: nothing allocated
        self._listener = Listener(self._talk, name="discarding-peer")
        self.url = self._listener.url

    def close(self) -> None:
        self._listener.close()

    def _exact(self, conn: socket.socket, n: int) -> bytes:
        view = memoryview(self._buf)[:n]
        got = 0
        while got < n:
            k = conn.recv_into(view[got:])
            if not k:
                raise OSError("the client left")
            got += k
        return bytes(view)

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            self.go.wait(30)
            accept_handshake(conn)
            view = memoryview(self._buf)
            while True:
                b0, b1 = self._exact(conn, 2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", self._exact(conn, 2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", self._exact(conn, 8))
                key = self._exact(conn, 4)
                op = b0 & 0x0F
                if op & 0x8:  # a control frame: small, read whole
                    masked = self._exact(conn, n)
                    payload = bytes(b ^ key[i % 4] for i, b in enumerate(masked))
                    if op == OP_PING:
                        self.pings += 1
                        conn.sendall(server_frame(OP_PONG, payload))
                    elif op == OP_CLOSE:
                        conn.sendall(server_frame(OP_CLOSE, payload[:2]))
                        return
                    continue
                left = n
                while left:
                    k = conn.recv_into(view, min(left, len(view)))
                    if not k:
                        return
                    left -= k
                self.data_bytes += n


@pytest.fixture
def open_peer() -> Iterator[DiscardingPeer]:
    go = threading.Event()
    go.set()
    peer = DiscardingPeer(go)
    yield peer
    peer.close()


def _client(url: str, **options: Any) -> TetherClient:
    return TetherClient(
        url, protocol="raw", heartbeat=False, reconnect=False, max_message_size=64 * MIB, **options
    )


@pytest.mark.timeout(60)
def test_a_16_mib_message_is_written_without_a_masked_copy_of_it(
    open_peer: DiscardingPeer,
) -> None:
    # The masked payload used to be made whole before the first byte went out:
    # 16 MiB more for as long as the message was being written. Now pieces are
    # masked as the writes reach them, and dropped once written.
    client = _client(open_peer.url)
    try:
        client.connect(wait=True, timeout=10)
        payload = os.urandom(16 * MIB)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            client.send(payload).result(timeout=30)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert open_peer.data_bytes == len(payload)
        assert peak < 4 * MIB  # was more than 16 MiB
    finally:
        client.close(timeout=5)


@pytest.mark.timeout(60)
def test_a_queued_stream_of_64_kib_messages_costs_a_ping_per_mib_not_per_256_kib() -> None:
    # Without acks, every pass of the pump that holds a large message ends with
    # a ping the server must answer (the Deliveries wait for its pong). 4 MiB of
    # 64 KiB messages, all queued before the link opens: four passes of 1 MiB
    # (was sixteen of 256 KiB: sixteen pings and pongs). A pass also ends at the
    # high-water mark, where a slow reader would make the count vary: the mark
    # is set far above what is sent.
    go = threading.Event()
    peer = DiscardingPeer(go)
    client = _client(peer.url, backpressure={"high_water_mark": 64 * MIB})
    try:
        client.connect()
        payload = os.urandom(64 * 1024)
        deliveries = [client.send(payload) for _ in range(64)]
        go.set()  # the handshake is answered: the link opens with all 64 queued
        for d in deliveries:
            d.result(timeout=30)
        assert peer.data_bytes == 64 * len(payload)
        assert peer.pings == 4
    finally:
        client.close(timeout=5)
        peer.close()
