"""Big messages among small ones, written in part by a small kernel buffer: ws:// and wss://.

On a plain socket the I/O thread writes queued chunks with one gathering
``sendmsg()``; on TLS, one ``send()`` per chunk. Both must put every byte on
the wire once, in order, whatever part of a write the kernel takes.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any, Callable, Dict, List

import pytest

from tether_sync import TetherClient
from tether_sync.engine import transport
from tether_sync.protocol.session import Session

trustme = pytest.importorskip("trustme")

SNDBUF = 16384  # the client's kernel send buffer: far below one big message


class Writes:
    """What the I/O thread offered the kernel and what it took (instrumentation only)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the I/O thread appends; the test reads at the end
        self.gathered = 0  # gathering writes offered (more than one chunk)
        self.partial = 0  # writes the kernel took only part of
        self.refused = 0  # writes the kernel took none of (would block; TLS's way)
        self.offered = 0  # bytes offered by the last write, 0 once it was reported
        self.sndbuf: List[int] = []


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    """Shrink each link's SO_SNDBUF and record its writes (no client option sets it)."""
    seen = Writes()
    link_init = transport.Link.__init__
    chunks_to_send = Session.chunks_to_send
    data_to_send = Session.data_to_send
    sent = Session.sent

    def small_buffer_link(
        self: transport.Link, sock: socket.socket, *args: Any, **kwargs: Any
    ) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        with seen.lock:
            seen.sndbuf.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        link_init(self, sock, *args, **kwargs)

    def record_chunks(self: Session, max_chunks: int, max_bytes: int) -> List[memoryview]:
        got = chunks_to_send(self, max_chunks, max_bytes)
        with seen.lock:
            seen.gathered += len(got) > 1
            seen.refused += seen.offered > 0
            seen.offered = sum(len(c) for c in got)
        return got

    def record_data(self: Session) -> memoryview:
        got = data_to_send(self)
        with seen.lock:
            seen.refused += seen.offered > 0
            seen.offered = len(got)
        return got

    def record_sent(self: Session, n: int) -> None:
        with seen.lock:
            seen.partial += n < seen.offered
            seen.offered = 0
        sent(self, n)

    monkeypatch.setattr(transport.Link, "__init__", small_buffer_link)
    monkeypatch.setattr(Session, "chunks_to_send", record_chunks)
    monkeypatch.setattr(Session, "data_to_send", record_data)
    monkeypatch.setattr(Session, "sent", record_sent)
    return seen


@pytest.mark.timeout(90)
def test_big_messages_among_small_ones_arrive_byte_exact_and_in_order(
    echo: Dict[str, Any], writes: Writes, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(
        echo["url"],
        protocol="raw",
        sslopt=echo["sslopt"],
        queue={"max_size": 10_000},
        backpressure={"inbound_overflow": "block"},  # nothing dropped: hold the reads
        max_message_size=4 * 2**20,
    )
    inbox = client.subscribe("default")
    client.connect(wait=True, timeout=10)
    sizes = [64 * 1024, 2**20, 64 * 1024 + 1, 96 * 1024 + 1, 3 * 2**20 + 7, 200_000]
    sent: List[bytes] = []
    for i, size in enumerate(sizes * 2):
        sent += [f"small-{i}-{j}".encode() for j in range(20)]
        sent.append(os.urandom(size))
    sent.append(b"end")
    for message in sent:
        client.send(message)
    received = [inbox.get(timeout=30) for _ in sent]
    assert [len(m) for m in received] == [len(m) for m in sent]
    assert received == sent
    with writes.lock:
        assert writes.sndbuf and max(writes.sndbuf) <= 4 * SNDBUF  # Linux doubles it
        # The kernel took part of a write, or none (an SSLSocket writes whole
        # records or raises SSLWantWriteError), again and again.
        assert writes.partial + writes.refused > 10
        # ws:// gathers several chunks into one sendmsg(); wss:// never does.
        assert (writes.gathered > 0) == echo["url"].startswith("ws://")
