"""Link.recv on a real socket pair: what a read hands the session."""

from __future__ import annotations

import select
import socket
from typing import Iterator, Tuple

import pytest

from tether_sync.engine.transport import Link


@pytest.fixture
def pair() -> Iterator[Tuple[Link, socket.socket]]:
    ours, theirs = socket.socketpair()
    link = Link(ours, "ws://127.0.0.1:1/", high_water_mark=2**20, read_size=4096)
    try:
        yield link, theirs
    finally:
        link.close()
        theirs.close()


def wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 5)[0], "no data within 5 s"


def test_reads_are_whole_immutable_bytes_that_later_reads_do_not_change(
    pair: Tuple[Link, socket.socket],
) -> None:
    link, peer = pair
    assert link.recv() is None  # nothing yet: not EOF
    peer.sendall(b"first")
    wait_readable(link.sock)
    first = link.recv()
    peer.sendall(b"SECOND")
    wait_readable(link.sock)
    second = link.recv()
    assert (first, second) == (b"first", b"SECOND")
    assert type(first) is bytes and type(second) is bytes


def test_a_read_takes_at_most_read_size_and_the_rest_comes_next(
    pair: Tuple[Link, socket.socket],
) -> None:
    link, peer = pair
    data = bytes(range(256)) * 40  # 10,240 bytes, more than one 4 KiB read
    peer.sendall(data)
    got = b""
    while len(got) < len(data):
        wait_readable(link.sock)
        chunk = link.recv()
        assert chunk is not None and 0 < len(chunk) <= 4096
        got += chunk
    assert got == data
    peer.shutdown(socket.SHUT_WR)
    wait_readable(link.sock)
    assert link.recv() == b""  # EOF
