"""The write buffer and the session with permessage-deflate negotiated (pure, no sockets)."""

from __future__ import annotations

import random
import struct
import zlib
from typing import List, Tuple

from tether_sync.protocol import frames
from tether_sync.protocol.deflate import DeflateParams, PerMessageDeflate
from tether_sync.protocol.session import Closed, Continuity, Received, Session, SessionConfig
from tether_sync.protocol.writebuf import WriteBuffer

PARAMS = DeflateParams(client_max_window_bits=12)


class Item:
    __slots__ = ("_data", "_op", "_seq", "id")

    def __init__(self, data: bytes, op: int = frames.OP_TEXT) -> None:
        self.id = "x"
        self._op = op
        self._data = data
        self._seq = 0


def keys() -> frames.MaskKeys:
    return frames.MaskKeys(urandom=lambda n: (bytes(range(256)) * (n // 256 + 1))[:n])


def client_frames(data: bytes) -> List[Tuple[int, bool, bytes]]:
    """``(opcode, rsv1, unmasked payload)`` of each masked client frame in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            (n,), pos = struct.unpack("!H", data[pos : pos + 2]), pos + 2
        elif n == 127:
            (n,), pos = struct.unpack("!Q", data[pos : pos + 8]), pos + 8
        key, pos = data[pos : pos + 4], pos + 4
        out.append((b0 & 0x0F, bool(b0 & 0x40), frames.mask_payload(data[pos : pos + n], key)))
        pos += n
    return out


def inflate(payloads: List[bytes]) -> List[bytes]:
    """What a peer inflates, one context across messages (context takeover)."""
    d = zlib.decompressobj(-12)
    return [d.decompress(p + b"\x00\x00\xff\xff") for p in payloads]


def test_below_the_threshold_the_bytes_are_those_of_no_compression() -> None:
    small = [Item(b'{"n": %d}' % i) for i in range(50)] + [Item(b"x" * 1023, frames.OP_BINARY)]
    plain, deflating = WriteBuffer(keys()), WriteBuffer(keys(), PerMessageDeflate(PARAMS))
    plain.add_messages(small)
    deflating.add_messages(small)
    assert bytes(deflating.pending()) == bytes(plain.pending())


def test_large_messages_are_compressed_with_context_takeover_in_order() -> None:
    rng = random.Random(7)
    words = b" ".join(bytes(rng.choices(b"abcdefghijklmnop", k=6)) for _ in range(300))
    big = [b'{"row": %d, "text": "%s"}' % (i, words) for i in range(5)]  # ~2 KiB each
    buf = WriteBuffer(keys(), PerMessageDeflate(PARAMS))
    buf.add_messages([Item(big[0]), Item(b"tiny")])
    buf.add_framed([(Item(b"ignored"), big[1])])
    buf.add_control(frames.OP_PING, b"p" * 100)  # control frames: never compressed
    buf.add_control(frames.OP_TEXT, big[2])  # protocol text is a data frame too
    buf.add_messages([Item(m) for m in big[3:]])
    got = client_frames(bytes(buf.pending()))
    assert [(op, rsv1) for op, rsv1, _ in got] == [
        (frames.OP_TEXT, True),
        (frames.OP_TEXT, False),
        (frames.OP_TEXT, True),
        (frames.OP_PING, False),
        (frames.OP_TEXT, True),
        (frames.OP_TEXT, True),
        (frames.OP_TEXT, True),
    ]
    assert got[1][2] == b"tiny" and got[3][2] == b"p" * 100
    compressed = [p for _, rsv1, p in got if rsv1]
    assert inflate(compressed) == big
    # With takeover, the repeats cost a fraction of the first.
    assert all(len(p) < len(compressed[0]) // 4 for p in compressed[1:])
    assert buf.advance(buf.size)  # the tracked messages are reported written


def test_session_inflates_and_refuses_a_bomb_with_1009() -> None:
    session = Session(
        SessionConfig(protocol="raw", heartbeat=None, max_message_size=1 << 20, deflate=PARAMS),
        Continuity("s"),
        0.0,
    )
    session.start(0.0)
    session.events()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    hello = (c.compress(b"hello " * 500) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    bomb = (c.compress(bytes(8 << 20)) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(bomb) < 1 << 20  # the frame itself is within max_message_size
    session.receive_data(bytes((0xC1, 126)) + struct.pack("!H", len(hello)) + hello, 0.0)
    session.receive_data(bytes((0xC2, 127)) + struct.pack("!Q", len(bomb)) + bomb, 0.0)
    events = session.events()
    received = [item for e in events if isinstance(e, Received) for item in e.items]
    assert received == [("default", "hello " * 500)]
    (op, _, payload), *_ = client_frames(bytes(session.data_to_send()))
    assert op == frames.OP_CLOSE and frames.parse_close(payload)[0] == 1009
    session.receive_eof(0.0)
    closed = [e for e in session.events() if isinstance(e, Closed)]
    assert closed and closed[0].code == 1009
