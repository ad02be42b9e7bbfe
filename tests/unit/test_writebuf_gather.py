"""The write buffer's chunks for a gathering write (``sendmsg``): no copy, exact accounting."""

from __future__ import annotations

import os
import random
import socket
from typing import Any, List, Tuple

import pytest
from support.client_frames import Item, read_frames

from tether_sync.protocol import frames
from tether_sync.protocol.writebuf import BIG_CHUNK, WriteBuffer


def frame_len(n: int) -> int:
    return 2 + 4 + (0 if n < 126 else 2 if n < 65536 else 8) + n


def filled(payloads: List[bytes]) -> Tuple[WriteBuffer, List[Item]]:
    """A buffer holding small and big frames, a control frame and a second batch."""
    items = [Item(p) for p in payloads]
    buf = WriteBuffer(frames.MaskKeys())
    half = len(items) // 2
    buf.add_messages(items[:half])
    buf.add_control(frames.OP_PING, b"ping")
    buf.add_framed([(d, d._data) for d in items[half:]])
    return buf, items


PAYLOADS = [
    b"a" * 10,
    os.urandom(BIG_CHUNK),
    b"b" * 20,
    os.urandom(BIG_CHUNK + BIG_CHUNK // 2 + 1),  # queued as two chunks
    os.urandom(3 * BIG_CHUNK + 5),
    b"c",
    os.urandom(2**20),
    b"d" * 300,
]


def expected_frames(payloads: List[bytes]) -> List[Tuple[int, bytes]]:
    half = len(payloads) // 2
    out = [(frames.OP_BINARY, p) for p in payloads]
    return [*out[:half], (frames.OP_PING, b"ping"), *out[half:]]


def test_the_chunks_are_the_queued_buffers_uncopied_and_hold_every_byte_in_order() -> None:
    buf, _ = filled(PAYLOADS)
    size = buf.size
    chunks = buf.pending_chunks(64, 2**30)
    assert len(chunks) > 4  # batches, the ping, and big payloads' tails, each its own
    assert all(isinstance(c, memoryview) for c in chunks)
    assert sum(len(c) for c in chunks) == size
    # Not copies: asking again hands out views of the same objects.
    again = buf.pending_chunks(64, 2**30)
    assert [c.obj for c in again] == [c.obj for c in chunks]
    data = b"".join(chunks)
    assert read_frames(data, len(PAYLOADS) + 1) == expected_frames(PAYLOADS)


def test_the_count_and_byte_caps_bound_one_gathering_write() -> None:
    buf, _ = filled(PAYLOADS)
    everything = buf.pending_chunks(64, 2**30)
    assert len(buf.pending_chunks(3, 2**30)) == 3
    assert len(buf.pending_chunks(1, 2**30)) == 1
    # No big chunk is added once max_bytes are offered (the last one may cross
    # it); small framed ones (a ping, a header) still go with the write.
    capped = buf.pending_chunks(64, BIG_CHUNK)
    sizes = [len(c) for c in capped]
    crossed = next(i for i in range(len(sizes)) if sum(sizes[: i + 1]) >= BIG_CHUNK)
    assert all(s < BIG_CHUNK for s in sizes[crossed + 1 :])
    assert len(everything) == len(capped) or len(everything[len(capped)]) >= BIG_CHUNK
    assert [c.obj for c in capped] == [c.obj for c in everything[: len(capped)]]
    empty = WriteBuffer(frames.MaskKeys())
    assert empty.pending_chunks(64, 2**20) == []


@pytest.mark.parametrize("seed", range(8))
def test_partial_writes_consume_exactly_what_the_kernel_took_across_chunks(seed: int) -> None:
    # A kernel that takes a random amount of each gathering write: within a
    # chunk, exactly at a boundary, across several. Every byte goes out once,
    # in order, and each message is reported written once, by the write that
    # took its last byte.
    rng = random.Random(seed)
    buf, items = filled(PAYLOADS)
    size = buf.size
    out = bytearray()
    reported: List[Tuple[Any, int, int]] = []  # (message, bytes before the write, n)
    while buf:
        chunks = buf.pending_chunks(rng.choice([1, 2, 3, 64]), rng.choice([1, 70_000, 2**21]))
        offered = b"".join(chunks)
        ends = [0]
        for c in chunks:
            ends.append(ends[-1] + len(c))
        n = rng.choice([rng.randint(1, len(offered)), rng.choice(ends[1:]), len(offered)])
        before = len(out)
        out += offered[:n]
        size_before = buf.size
        for d in buf.advance(n):
            reported.append((d, before, n))
        assert buf.size == size_before - n
    assert len(out) == size
    assert read_frames(bytes(out), len(PAYLOADS) + 1) == expected_frames(PAYLOADS)
    assert [d for d, _, _ in reported] == items
    end, frame_ends = 0, []
    for i, p in enumerate(PAYLOADS):
        if i == len(PAYLOADS) // 2:
            end += frame_len(4)  # the ping between the two batches
        end += frame_len(len(p))
        frame_ends.append(end)
    for (_, before, n), frame_end in zip(reported, frame_ends):
        assert before < frame_end <= before + n


def test_pending_and_pending_chunks_can_take_turns() -> None:
    # The loop may write with send() and with sendmsg() on one buffer (one
    # write path per link, but the buffer does not care): same bytes, in order.
    buf, items = filled(PAYLOADS)
    out = bytearray()
    done: List[Any] = []
    turn = 0
    while buf:
        if turn % 2:
            data = bytes(buf.pending())
        else:
            data = b"".join(buf.pending_chunks(4, 2**20))
        n = max(1, len(data) * 2 // 3) if turn % 3 else len(data)
        out += data[:n]
        done += buf.advance(n)
        turn += 1
    assert read_frames(bytes(out), len(PAYLOADS) + 1) == expected_frames(PAYLOADS)
    assert done == items


def test_reset_after_a_partial_gathering_write_returns_the_message_cut_in_two() -> None:
    items = [Item(b"x"), Item(os.urandom(2 * BIG_CHUNK)), Item(b"y")]
    buf = WriteBuffer(frames.MaskKeys())
    buf.add_messages(items)
    chunks = buf.pending_chunks(64, 2**20)
    n = len(chunks[0]) + 10  # ends inside the big payload's tail
    assert buf.advance(n) == [items[0]]
    assert buf.reset() == items[1:]
    assert buf.pending_chunks(64, 2**20) == []


def test_a_real_socket_takes_a_gathering_write_in_part_and_the_rest_follows() -> None:
    # socket.sendmsg() on a small kernel buffer: it takes part of the chunks,
    # the buffer hands out the rest, and the peer reads every frame intact.
    buf, items = filled(PAYLOADS)
    size = buf.size
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        a.setblocking(False)
        b.settimeout(10)
        got = bytearray()
        partial = 0
        done: List[Any] = []
        while buf:
            chunks = buf.pending_chunks(64, 2**20)
            try:
                n = a.sendmsg(chunks)
            except BlockingIOError:
                n = 0
            partial += n < sum(len(c) for c in chunks)
            done += buf.advance(n)
            got += b.recv(1 << 20)  # blocks until the writer's bytes are there
        while len(got) < size:
            got += b.recv(1 << 20)
    finally:
        a.close()
        b.close()
    assert partial > 0
    assert read_frames(bytes(got), len(PAYLOADS) + 1) == expected_frames(PAYLOADS)
    assert done == items
