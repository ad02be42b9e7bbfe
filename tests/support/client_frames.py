"""Messages for a ``WriteBuffer`` and an independent reader of the frames it writes."""

from __future__ import annotations

import io
from typing import Any, List, Tuple

from websocket._abnf import frame_buffer

from tether_sync.protocol import frames


class Item:
    """What the write buffer reads of a queued message (a Delivery's slots)."""

    __slots__ = ("_data", "_op", "_seq", "id")

    def __init__(self, data: bytes, op: int = frames.OP_BINARY) -> None:
        self.id = "x"
        self._op = op
        self._data = data
        self._seq = 0


def read_frames(data: bytes, count: int) -> List[Tuple[int, Any]]:
    """``(opcode, unmasked payload)`` of the ``count`` client frames ``data`` holds.

    Read by websocket-client (an independent parser); no byte may be left over.
    """
    stream = io.BytesIO(data)
    reader = frame_buffer(stream.read, False)
    out = []
    for _ in range(count):
        frame = reader.recv_frame()
        out.append((frame.opcode, frame.data))
    assert stream.read() == b""
    return out
