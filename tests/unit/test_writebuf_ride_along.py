"""A big message's barrier ping leaves in the same gathering write as the message's end.

Without acks, each pass of big messages is followed by a small ping (the
"barrier", protocol/reliability.py). A gathering write stopped at its byte cap
(``GATHER_BYTES``, 1 MiB) right after a 1 MiB frame, so the ping, and the next
big frame's header, waited for a write of their own: a ``sendmsg()`` and a
packet of a few bytes, after about one 1 MiB message in five in
``benchmarks/bench_client.py``'s big rows. Small framed chunks now ride along
with the write that reaches the cap; big ones (pieces of a payload, which are
masked as they are handed out) still stop it.
"""

from __future__ import annotations

import os
from typing import List

from support.client_frames import Item, read_frames

from tether_sync.engine.transport import GATHER_BYTES, GATHER_CHUNKS
from tether_sync.protocol import frames
from tether_sync.protocol.writebuf import BIG_CHUNK, PIECE, WriteBuffer

MIB = 2**20


def stream_of(payloads: List[bytes]) -> WriteBuffer:
    """Each payload as its own pass, followed by a barrier ping (as the session frames them)."""
    buf = WriteBuffer(frames.MaskKeys())
    for i, payload in enumerate(payloads):
        buf.add_messages([Item(payload)])  # type: ignore[list-item]
        buf.add_control(frames.OP_PING, b"-%d" % (i + 1))
    return buf


def test_a_1_mib_message_and_its_ping_leave_in_one_write() -> None:
    payloads = [os.urandom(MIB) for _ in range(3)]
    buf = stream_of(payloads)
    first = buf.pending_chunks(GATHER_CHUNKS, GATHER_BYTES)
    sizes = [len(c) for c in first]
    # The whole first frame, its ping and the second frame's header; not the
    # second payload (nothing of it is masked yet).
    frame_len = 14 + MIB  # 2 + 8 length bytes + 4 key bytes
    assert sum(sizes) == frame_len + (6 + 2) + 14  # the ping: 2 header, 4 key, "-1"
    assert all(s < BIG_CHUNK for s in sizes[-2:])
    written = b"".join(first)
    buf.advance(len(written))
    rest = b""
    while buf:
        chunks = buf.pending_chunks(GATHER_CHUNKS, GATHER_BYTES)
        data = b"".join(chunks)
        buf.advance(len(data))
        rest += data
    got = read_frames(written + rest, 6)
    assert got == [
        (frames.OP_BINARY, payloads[0]),
        (frames.OP_PING, b"-1"),
        (frames.OP_BINARY, payloads[1]),
        (frames.OP_PING, b"-2"),
        (frames.OP_BINARY, payloads[2]),
        (frames.OP_PING, b"-3"),
    ]


def test_a_stream_of_1_mib_messages_takes_one_write_each_when_the_kernel_takes_all() -> None:
    n = 8
    buf = stream_of([os.urandom(MIB) for _ in range(n)])
    writes = 0
    while buf:
        chunks = buf.pending_chunks(GATHER_CHUNKS, GATHER_BYTES)
        buf.advance(sum(len(c) for c in chunks))
        writes += 1
    assert writes == n  # was 2 n: every ping went alone


def test_big_chunks_still_stop_a_write_at_its_byte_cap() -> None:
    buf = WriteBuffer(frames.MaskKeys())
    buf.add_messages([Item(os.urandom(3 * PIECE))])  # type: ignore[list-item]
    chunks = buf.pending_chunks(GATHER_CHUNKS, PIECE)
    # The frame's header and first piece, then nothing: the next piece is big
    # and would be masked for nothing if the kernel is full.
    assert sum(len(c) for c in chunks) == 14 + PIECE
