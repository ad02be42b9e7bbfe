"""Big payloads are masked piece by piece as writes reach them, not when they are queued.

A queued big message used to be masked whole at once: a second copy of the
whole payload (16 MiB more for a 16 MiB message) for as long as it was queued.
Now the write buffer keeps the payload as it is and masks ``PIECE`` bytes at a
time, when a write hands them out.
"""

from __future__ import annotations

import os
import tracemalloc
from typing import Iterator, List

import pytest
from support.client_frames import Item, read_frames

from tether_sync.protocol import frames
from tether_sync.protocol.writebuf import BIG_CHUNK, PIECE, WriteBuffer

MIB = 2**20


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def _grown(since: int) -> int:
    return tracemalloc.get_traced_memory()[0] - since


def test_queuing_a_big_message_makes_no_masked_copy_of_it(traced: None) -> None:
    payload = os.urandom(8 * MIB)
    buf = WriteBuffer(frames.MaskKeys())
    before = tracemalloc.get_traced_memory()[0]
    buf.add_messages([Item(b"small"), Item(payload)])
    assert buf.size > len(payload)
    assert _grown(before) < MIB // 4  # was 8 MiB: the whole payload, masked


def test_a_gathering_write_masks_only_what_it_offers(traced: None) -> None:
    payload = os.urandom(8 * MIB)
    buf = WriteBuffer(frames.MaskKeys())
    buf.add_messages([Item(payload)])
    before = tracemalloc.get_traced_memory()[0]
    chunks = buf.pending_chunks(64, 256 * 1024)
    offered = sum(len(c) for c in chunks)
    assert 256 * 1024 <= offered <= 256 * 1024 + PIECE + PIECE // 2
    assert _grown(before) < offered + MIB // 4  # not the 8 MiB of the whole payload
    # Written in full, write after write, the frame is the payload masked once.
    out = bytearray()
    peak_growth = 0
    while buf:
        chunks = buf.pending_chunks(64, 256 * 1024)
        data = b"".join(chunks)
        out += data
        del chunks
        buf.advance(len(data))
        peak_growth = max(peak_growth, _grown(before) - len(out) - len(data))
    assert read_frames(bytes(out), 1) == [(frames.OP_BINARY, payload)]
    assert peak_growth < MIB  # masked pieces are dropped once written


@pytest.mark.parametrize(
    "size",
    [
        BIG_CHUNK,
        BIG_CHUNK + 3,
        BIG_CHUNK + BIG_CHUNK // 2,
        BIG_CHUNK + BIG_CHUNK // 2 + 1,
        5 * MIB + 7,
    ],
)
def test_every_piece_is_masked_with_the_frame_key_at_its_offset(size: int) -> None:
    # Pieces start at multiples of PIECE: each is masked with the key as it is.
    # Sizes around the "short last piece" rule, and one not a multiple of 4.
    payloads: List[bytes] = [os.urandom(size), b"tail"]
    for write in ("send", "sendmsg"):
        buf = WriteBuffer(frames.MaskKeys())
        buf.add_messages([Item(p) for p in payloads])
        out = bytearray()
        while buf:
            if write == "send":
                data = bytes(buf.pending())
            else:
                data = b"".join(buf.pending_chunks(3, 100_000))
            out += data
            buf.advance(len(data))
        assert read_frames(bytes(out), 2) == [(frames.OP_BINARY, p) for p in payloads]
