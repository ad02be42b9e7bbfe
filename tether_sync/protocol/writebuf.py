"""The write buffer of one connection: framed bytes waiting for the socket.

Pure bookkeeping, no I/O: the loop asks for :meth:`WriteBuffer.pending` bytes
and hands them to ``sock.send()`` (or for :meth:`WriteBuffer.pending_chunks`,
for one ``sock.sendmsg()``), and reports how many the kernel took with
:meth:`WriteBuffer.advance`, which returns the messages now fully written. What
was framed but not fully written when the link drops comes back from
:meth:`WriteBuffer.reset` for the loop to queue again.
"""

from __future__ import annotations

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
# would cost more than the send() it saves).
BIG_CHUNK = 64 * 1024
# The payload of an uncompressed message of at least BIG_CHUNK bytes is queued
# unmasked, in pieces of this size (the last one up to half as much again), and
# each piece is masked only when a write is about to hand it to the kernel (see
# _Unmasked): no masked copy of the whole payload is made, and the masked bytes
# alive at a time are about one write's worth, whatever the message's size.
# Each piece costs Python (queuing, masking, handing out, dropping): at 256 KiB a
# stream of 1 MiB messages ran about 2,800 bytecodes per message on the I/O
# thread, at 1 MiB about 2,000 (benchmarks/README.md, "Issue 22, session 21"),
# for the same peak memory (a gathering write hands out at most GATHER_BYTES,
# 1 MiB, of masked pieces: a 16 MiB send peaks near 2 MiB either way).
PIECE = 1024 * 1024

Chunk = Union[bytes, memoryview]
_DATA_OPS = (frames.OP_TEXT, frames.OP_BINARY)  # what permessage-deflate may compress


class _Unmasked:
    """A piece of a big payload, queued as it is and masked when it is handed out.

    Pieces start at multiples of ``PIECE`` (a multiple of 4) in their payload,
    so each is masked with the frame's key as it is.
    """

    __slots__ = ("data", "key")

    def __init__(self, data: memoryview, key: bytes) -> None:
        self.data = data
        self.key = key

    def __len__(self) -> int:
        return len(self.data)


Queued = Union[bytes, memoryview, _Unmasked]


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
        # Whole frames, batches of them, a big frame's header, the pieces of its
        # payload (unmasked until handed out).
        self._chunks: Deque[Queued] = deque()
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
        """Queue a big frame, after ``parts`` (emptied); nothing is copied or masked here.

        The small frames before it and the frame's header become one chunk; the
        payload follows in unmasked pieces of ``PIECE`` bytes (the last one up
        to half as much again), masked one by one as writes reach them.
        """
        header = frames.encode_frame_header(op, len(data), key)
        parts.append(header)
        chunks = self._chunks
        chunks.append(parts[0] if len(parts) == 1 else b"".join(parts))
        parts.clear()
        view = memoryview(data)
        n = len(view)
        at = 0
        while n - at > PIECE + PIECE // 2:
            chunks.append(_Unmasked(view[at : at + PIECE], key))
            at += PIECE
        chunks.append(_Unmasked(view[at:] if at else view, key))
        return end + len(header) + n

    def _ready(self, i: int) -> Chunk:
        """Chunk ``i``, masked first if it is a piece of a big payload."""
        chunk = self._chunks[i]
        if type(chunk) is _Unmasked:
            chunk = self._chunks[i] = frames.mask_payload(chunk.data, chunk.key)
        return chunk  # type: ignore[return-value]  # no _Unmasked left

    def _end_batch(self, parts: List[bytes], end: int) -> None:
        """Queue the rest of a batch (``parts``, one chunk); ``end``: the batch's end offset."""
        if parts:
            self._chunks.append(parts[0] if len(parts) == 1 else b"".join(parts))
        self.size += end - self._framed
        self._framed = end

    def pending(self) -> memoryview:
        """The next bytes to write (empty when nothing waits).

        Small chunks queued one after the other (control frames between batches)
        are joined first, so the kernel gets them in one ``send()``. A big
        frame's header goes with the start of its payload (a copy of at most
        ``BIG_CHUNK`` bytes, or all of a payload up to half as much again): sent
        alone, the 14-byte header cost a ``send()`` and a packet of its own per
        message, which made 64 KiB sends about half as fast as websockets'. The
        rest goes out as it is, uncopied.
        """
        chunks = self._chunks
        if not chunks:
            return memoryview(b"")
        first = chunks[0]
        if isinstance(first, _Unmasked):
            first = self._ready(0)
        if len(chunks) > 1 and len(first) - self._offset < BIG_CHUNK:
            joined: List[Chunk] = [memoryview(first)[self._offset :]]
            chunks.popleft()
            size = len(joined[0])
            while chunks and size < COALESCE_BYTES:
                chunk = chunks[0]
                if type(chunk) is _Unmasked:  # a big payload's piece: masked, joined last
                    piece = self._ready(0)
                    if len(piece) <= BIG_CHUNK + BIG_CHUNK // 2:  # a short tail: not worth a send
                        joined.append(piece)
                        chunks.popleft()
                    else:
                        view = memoryview(piece)
                        joined.append(view[:BIG_CHUNK])
                        chunks[0] = view[BIG_CHUNK:]
                    break
                if len(chunk) >= BIG_CHUNK:
                    break
                size += len(chunk)
                joined.append(chunks.popleft())  # type: ignore[arg-type]  # not _Unmasked
            first = b"".join(joined)
            chunks.appendleft(first)
            self._offset = 0
        return memoryview(first)[self._offset :]

    def pending_chunks(self, max_chunks: int, max_bytes: int) -> List[memoryview]:
        """The next bytes to write as the queued chunks themselves, uncopied.

        For a gathering write (``socket.sendmsg()``): the unwritten rest of the
        first chunk, then whole chunks after it, at most ``max_chunks`` of them;
        no chunk is added once ``max_bytes`` are reached (the last one may
        cross it), except small framed chunks (under ``BIG_CHUNK``: a barrier
        ping, the next big frame's header), which still go with it: left
        behind, each cost a write and a packet of its own (after about one 1
        MiB message in five). Pieces of a big payload are masked as they are
        added, so ``max_bytes`` also bounds the masked bytes made per write.
        Empty when nothing waits. Report what the kernel took with
        :meth:`advance`, which counts across chunk boundaries: a write that
        ends inside a chunk leaves its rest first in line.
        """
        chunks = self._chunks
        if not chunks:
            return []
        head = chunks[0]
        first = memoryview(self._ready(0) if isinstance(head, _Unmasked) else head)[self._offset :]
        out = [first]
        size = len(first)
        if len(chunks) > 1:
            for i in range(1, min(len(chunks), max_chunks)):
                queued = chunks[i]
                if isinstance(queued, _Unmasked):
                    if size >= max_bytes:
                        break
                    chunk = self._ready(i)
                elif size >= max_bytes and len(queued) >= BIG_CHUNK:
                    break
                else:
                    chunk = queued
                out.append(memoryview(chunk))
                size += len(chunk)
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
