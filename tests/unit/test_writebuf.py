"""The write buffer without compression: what it hands the socket (pure, no sockets)."""

from __future__ import annotations

import io
import os
from typing import Any, List, Tuple

import pytest
from websocket._abnf import frame_buffer

from tether_sync.protocol import frames
from tether_sync.protocol.writebuf import BIG_CHUNK, WriteBuffer


class Item:
    __slots__ = ("_data", "_op", "_seq", "id")

    def __init__(self, data: bytes, op: int = frames.OP_BINARY) -> None:
        self.id = "x"
        self._op = op
        self._data = data
        self._seq = 0


def read_frames(data: bytes, count: int) -> List[Tuple[int, Any]]:
    """``(opcode, unmasked payload)`` of ``count`` client frames, read by websocket-client."""
    reader = frame_buffer(io.BytesIO(data).read, False)
    out = []
    for _ in range(count):
        frame = reader.recv_frame()
        out.append((frame.opcode, frame.data))
    return out


def frame_len(n: int) -> int:
    return 2 + 4 + (0 if n < 126 else 2 if n < 65536 else 8) + n


def drain(buf: WriteBuffer, step: int) -> Tuple[bytes, List[List[Any]], List[Tuple[int, int]]]:
    """Write everything, at most ``step`` bytes a time: bytes, messages done per write, writes."""
    out = bytearray()
    done: List[List[Any]] = []
    writes: List[Tuple[int, int]] = []
    while buf:
        chunk = buf.pending()
        n = min(step, len(chunk))
        writes.append((len(out), n))
        out += chunk[:n]
        done.append(buf.advance(n))
    return bytes(out), done, writes


@pytest.mark.parametrize("step", [1_000_000, 65536, 7777])
def test_big_messages_among_small_ones_go_out_whole_and_in_order(step: int) -> None:
    payloads = [b"a" * 10, os.urandom(BIG_CHUNK), b"b" * 20, os.urandom(3 * BIG_CHUNK + 5), b"c"]
    items = [Item(p) for p in payloads]
    buf = WriteBuffer(frames.MaskKeys())
    buf.add_messages(items[:3])
    buf.add_control(frames.OP_PING, b"ping")
    buf.add_framed([(items[3], payloads[3]), (items[4], payloads[4])])
    size = buf.size
    data, done, writes = drain(buf, step)
    assert len(data) == size and buf.size == 0
    assert read_frames(data, 6) == [
        (frames.OP_BINARY, payloads[0]),
        (frames.OP_BINARY, payloads[1]),
        (frames.OP_BINARY, payloads[2]),
        (frames.OP_PING, b"ping"),
        (frames.OP_BINARY, payloads[3]),
        (frames.OP_BINARY, payloads[4]),
    ]
    # Each message is reported written once, by the write that took its last byte.
    assert [d for batch in done for d in batch] == items
    ends, total = [], 0
    for i, p in enumerate(payloads):
        total += frame_len(len(p))
        if i == 2:
            total += frame_len(4)  # the ping
        ends.append(total)
    taken = 0
    for batch, (_, n) in zip(done, writes):
        for item in batch:
            assert taken < ends[items.index(item)] <= taken + n
        taken += n


def test_a_big_frame_starts_in_one_write_with_its_header_and_the_rest_is_not_copied() -> None:
    # The header alone cost a send() and a packet per message (64 KiB sends ran at
    # half websockets' speed): it goes with the small frame before it and the first
    # BIG_CHUNK bytes of the payload; the rest stays one uncopied view.
    payload = os.urandom(4 * BIG_CHUNK)
    buf = WriteBuffer(frames.MaskKeys())
    buf.add_messages([Item(b"small"), Item(payload), Item(b"after")])
    first = buf.pending()
    assert BIG_CHUNK < len(first) < BIG_CHUNK + 64  # small frame, header, payload's start
    buf.advance(len(first))
    body = buf.pending()
    assert len(body) == len(payload) - BIG_CHUNK  # the rest of the payload, one buffer
    assert body.obj is buf.pending().obj  # no copy made per call
    buf.advance(len(body))
    got = read_frames(bytes(first) + bytes(body) + bytes(buf.pending()), 3)
    assert got == [(2, b"small"), (2, payload), (2, b"after")]


def test_a_64_kib_frame_is_one_write() -> None:
    payload = os.urandom(BIG_CHUNK)
    buf = WriteBuffer(frames.MaskKeys())
    buf.add_messages([Item(payload)])
    first = buf.pending()
    assert len(first) == frame_len(len(payload))
    assert buf.advance(len(first)) != []
    assert not buf


def test_reset_returns_a_big_message_written_in_part() -> None:
    items = [Item(b"x"), Item(os.urandom(2 * BIG_CHUNK))]
    buf = WriteBuffer(frames.MaskKeys())
    buf.add_messages(items)
    first = buf.pending()
    assert buf.advance(len(first)) == [items[0]]
    assert buf.advance(100) == []
    assert buf.reset() == [items[1]]
    assert buf.size == 0 and not buf.pending()
