"""The kernel takes writes until about ``high_water_mark`` unsent bytes, not half of it.

``Link`` sets TCP_NOTSENT_LOWAT (transport.set_notsent_lowat), so that a full
kernel is a real signal for the outbound backpressure. At half the mark, the
kernel refused a write past 500 kB unsent (of the default 1 MB mark) and woke
the I/O thread below 250 kB: a stream of 1 MiB messages then took about 1.5
writes and half a wake-up per message (benchmarks/README.md, "Issue 22,
session 21"). Real sockets on 127.0.0.1; the peer does not read, so once its
receive window is full what the client writes stays unsent.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import sys
from typing import Iterator, Tuple

import pytest

from tether_sync.engine.transport import set_notsent_lowat

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(socket, "TCP_NOTSENT_LOWAT"),
    reason="TCP_NOTSENT_LOWAT and SIOCOUTQNSD: Linux",
)

SIOCOUTQNSD = 0x894B  # bytes in the send queue not yet sent (linux/sockios.h)
HWM = 200_000
CHUNK = 16 * 1024


def unsent(sock: socket.socket) -> int:
    buf = fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        peer, _ = server.accept()
    try:
        yield client, peer
    finally:
        client.close()
        peer.close()


def fill(sock: socket.socket) -> None:
    """Write until the kernel refuses (bounded: it refuses at the option's value)."""
    sock.setblocking(False)
    data = b"x" * CHUNK
    for _ in range(100_000):
        try:
            sock.send(data)
        except BlockingIOError:
            return
    pytest.fail("the kernel never refused a write")


def test_the_kernel_holds_about_the_mark_unsent_before_refusing(
    pair: Tuple[socket.socket, socket.socket],
) -> None:
    client, _peer = pair
    assert set_notsent_lowat(client, HWM)
    fill(client)
    held = unsent(client)
    # Writes are taken while fewer than HWM bytes are unsent (the last one
    # crosses it, by a write and the kernel's rounding to its segments); at
    # half the mark this was about 100 kB.
    assert HWM - CHUNK <= held <= HWM + 4 * CHUNK


def test_the_socket_is_writable_again_once_half_the_mark_is_sent(
    pair: Tuple[socket.socket, socket.socket],
) -> None:
    client, peer = pair
    assert set_notsent_lowat(client, HWM)
    fill(client)
    assert not select.select([], [client], [], 0)[1]  # full: not writable
    peer.settimeout(5)
    while unsent(client) >= HWM // 2:  # the peer reads: its window opens, bytes go
        assert peer.recv(256 * 1024)
    assert select.select([], [client], [], 5)[1]
