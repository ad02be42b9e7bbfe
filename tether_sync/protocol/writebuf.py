"""The write buffer of one connection: framed bytes waiting for the socket.

Pure bookkeeping, no I/O: the loop asks for :meth:`WriteBuffer.pending` bytes
and hands them to ``sock.send()`` (or for :meth:`WriteBuffer.pending_chunks`,
for one ``sock.sendmsg()``), and reports how many the kernel took with
:meth:`WriteBuffer.advance`, which returns the messages now fully written. What
was framed but not fully written when the link drops comes back from
:meth:`WriteBuffer.reset` for the loop to queue again.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Deque, List, Optional, Protocol, Sequence, Set, Tuple, Union

from . import frames


class Item(Protocol):
    """What the write buffer and the session need of a message (a ``Delivery``)."""

    @property
    def id(self) -> str:
        """The message id."""

    _op: int
    _data: bytes
    _seq: int


Delivery = Item

COALESCE_BYTES = 256 * 1024  # at most this many bytes are joined for one send()
# A chunk this big is written as it is, never joined with others (a copy of it
# would cost more than the send() it saves). Messages this big, uncompressed,
# are queued as two chunks, header and masked payload: the payload is not
# copied into a frame object.
BIG_CHUNK = 64 * 1024

Chunk = Union[bytes, memoryview]
_DATA_OPS = (frames.OP_TEXT, frames.OP_BINARY)  # what permessage-deflate may compress


def _encode(opcode: int, payload: bytes, key: bytes, codec: frames.Deflate) -> bytes:
    """One frame through the codec: RSV1 set if it compressed (data frames only)."""
    if opcode not in _DATA_OPS:
        return frames.encode_frame(opcode, payload, key)
    data, rsv1 = codec.encode(payload)
    return frames.encode_frame(opcode, data, key, True, rsv1)


class WriteBuffer:
    """Frames waiting for the kernel, with the messages they carry.

    Args:
        keys: Where mask keys come from (drawn in bulk).
        deflate: With permessage-deflate negotiated (RFC 7692), the connection's
            codec: text and binary frames of at least ``deflate.threshold`` bytes
            are compressed as they are framed. Frames are framed in wire order,
            so the compressor's context follows the order the peer inflates in.
    """

    def __init__(self, keys: frames.MaskKeys, deflate: Optional[frames.Deflate] = None) -> None:
        self._keys = keys
        self._deflate = deflate
        # Whole frames, batches of them, or the tail of a big frame (a memoryview).
        self._chunks: Deque[Chunk] = deque()
        self._offset = 0  # bytes of _chunks[0] already written
        self.size = 0  # unwritten bytes
        self._framed = 0  # bytes ever appended on this connection
        self._written = 0  # bytes the kernel ever accepted on this connection
        self._in_flight: Deque[Tuple[int, Delivery]] = deque()  # (end offset, message)
        self._forgotten: Set[int] = set()  # ids of messages no longer ours to report

    def __bool__(self) -> bool:
        return self.size > 0

    @property
    def in_flight(self) -> int:
        """Messages framed here and not yet fully written."""
        return len(self._in_flight)

    def add_control(self, opcode: int, payload: bytes) -> None:
        """Append one frame that carries no message (control frames, protocol text)."""
        if self._deflate is not None:
            frame = _encode(opcode, payload, self._keys.next(), self._deflate)
        else:
            frame = frames.encode_frame(opcode, payload, self._keys.next())
        self._chunks.append(frame)
        self.size += len(frame)
        self._framed += len(frame)

    def add_framed(self, batch: Sequence[Tuple[Delivery, bytes]], track: bool = True) -> None:
        """Frame ``(message, payload)`` pairs into one chunk; ``track``: report them written."""
        encode = frames.encode_frame
        next_key = self._keys.next
        codec = self._deflate
        parts: List[bytes] = []
        end = self._framed
        in_flight = self._in_flight
        for d, data in batch:
            if codec is not None and len(data) >= codec.threshold:
                frame = _encode(d._op, data, next_key(), codec)
            elif len(data) >= BIG_CHUNK:
                end = self._add_big(parts, d._op, data, next_key(), end)
                if track:
                    in_flight.append((end, d))
                continue
            else:
                frame = encode(d._op, data, next_key())
            parts.append(frame)
            end += len(frame)
            if track:
                in_flight.append((end, d))
        self._end_batch(parts, end)

    def forget(self, item: Delivery) -> None:
        """Never report ``item`` written nor return it from :meth:`reset` (it was refused)."""
        self._forgotten.add(id(item))

    def add_messages(self, batch: Sequence[Delivery]) -> None:
        """Frame ``batch`` into one chunk, so one ``send()`` writes them all."""
        encode = frames.encode_frame
        next_key = self._keys.next
        parts: List[bytes] = []
        end = self._framed
        in_flight = self._in_flight
        codec = self._deflate
        if codec is None:
            for d in batch:
                data = d._data
                if len(data) < BIG_CHUNK:
                    frame = encode(d._op, data, next_key())
                    parts.append(frame)
                    end += len(frame)
                else:
                    end = self._add_big(parts, d._op, data, next_key(), end)
                in_flight.append((end, d))
        else:
            # The same loop with the threshold test inline: a message below it
            # costs a len() and a comparison more (about 1-2 %, measured by
            # benchmarks/bench_compression.py).
            threshold = codec.threshold
            for d in batch:
                data = d._data
                if len(data) < threshold:
                    frame = encode(d._op, data, next_key())
                else:
                    frame = _encode(d._op, data, next_key(), codec)
                parts.append(frame)
                end += len(frame)
                in_flight.append((end, d))
        self._end_batch(parts, end)

    def _add_big(self, parts: List[bytes], op: int, data: bytes, key: bytes, end: int) -> int:
        """Queue a big frame, after ``parts`` (emptied).

        The header goes out in one ``send()`` with the payload's first
        ``BIG_CHUNK`` bytes (and the small frames before it): sent alone, the
        14-byte header cost a system call and a packet of its own per message,
        which made 64 KiB sends about half as fast as websockets'. The join
        copies at most ``BIG_CHUNK`` bytes; the rest of the payload is queued
        as a view, uncopied.
        """
        header = frames.encode_frame_header(op, len(data), key)
        masked = frames.mask_payload(data, key)
        parts.append(header)
        if len(masked) <= BIG_CHUNK + BIG_CHUNK // 2:  # a short tail is not worth a send
            parts.append(masked)
            self._chunks.append(b"".join(parts))
        else:
            view = memoryview(masked)
            parts.append(view[:BIG_CHUNK])  # type: ignore[arg-type]  # join takes buffers
            self._chunks.append(b"".join(parts))
            self._chunks.append(view[BIG_CHUNK:])
        parts.clear()
        return end + len(header) + len(data)

    def _end_batch(self, parts: List[bytes], end: int) -> None:
        """Queue the rest of a batch (``parts``, one chunk); ``end``: the batch's end offset."""
        if parts:
            self._chunks.append(parts[0] if len(parts) == 1 else b"".join(parts))
        self.size += end - self._framed
        self._framed = end

    def pending(self) -> memoryview:
        """The next bytes to write (empty when nothing waits).

        Small chunks queued one after the other (control frames between batches)
        are joined first, so the kernel gets them in one ``send()``.
        """
        chunks = self._chunks
        if not chunks:
            return memoryview(b"")
        if len(chunks) > 1 and len(chunks[0]) - self._offset < 65536:
            joined: List[Chunk] = [chunks.popleft()[self._offset :]]
            size = len(joined[0])
            while chunks and size < COALESCE_BYTES and len(chunks[0]) < BIG_CHUNK:
                size += len(chunks[0])
                joined.append(chunks.popleft())
            chunks.appendleft(b"".join(joined))
            self._offset = 0
        return memoryview(chunks[0])[self._offset :]

    def pending_chunks(self, max_chunks: int, max_bytes: int) -> List[memoryview]:
        """The next bytes to write as the queued chunks themselves, uncopied.

        For a gathering write (``socket.sendmsg()``): the unwritten rest of the
        first chunk, then whole chunks after it, at most ``max_chunks`` of them;
        no chunk is added once ``max_bytes`` are reached (the last one may
        cross it). Empty when nothing waits. Report what the kernel took with
        :meth:`advance`, which counts across chunk boundaries: a write that
        ends inside a chunk leaves its rest first in line.
        """
        chunks = self._chunks
        if not chunks:
            return []
        first = memoryview(chunks[0])[self._offset :]
        out = [first]
        size = len(first)
        if len(chunks) > 1 and size < max_bytes:
            for chunk in itertools.islice(chunks, 1, max_chunks):
                out.append(memoryview(chunk))
                size += len(chunk)
                if size >= max_bytes:
                    break
        return out

    def advance(self, n: int) -> List[Delivery]:
        """Record that the kernel took ``n`` bytes; return the messages now fully written."""
        self._written += n
        self.size -= n
        self._offset += n
        chunks = self._chunks
        while chunks and self._offset >= len(chunks[0]):
            self._offset -= len(chunks.popleft())
        in_flight = self._in_flight
        written = self._written
        done: List[Delivery] = []
        while in_flight and in_flight[0][0] <= written:
            done.append(in_flight.popleft()[1])
        if self._forgotten and done:
            done = [d for d in done if id(d) not in self._forgotten]
        return done

    def reset(self) -> List[Delivery]:
        """Forget everything (the link is gone); return the messages not fully written.

        A message whose frame the kernel took only in part was not delivered: it
        is returned too, to be sent again after the reconnect.
        """
        forgotten = self._forgotten
        unwritten = [d for _, d in self._in_flight if id(d) not in forgotten]
        forgotten.clear()
        self._in_flight.clear()
        self._chunks.clear()
        self._offset = self.size = self._framed = self._written = 0
        return unwritten
