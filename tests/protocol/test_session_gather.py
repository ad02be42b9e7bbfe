"""``Session.chunks_to_send``: the bytes of ``data_to_send`` as uncopied chunks, same accounting."""

from __future__ import annotations

import random
import struct
from typing import Any, Dict, List, Optional, Tuple

import pytest
from protocol.sessionkit import ClientFrames, FakeClock, Msg, data_msg, open_peer

from tether_sync.protocol import frames
from tether_sync.protocol.reliability import LARGE_MESSAGE
from tether_sync.protocol.session import Written


def big(msg_id: str, size: int) -> Msg:
    return data_msg("x" * size, msg_id=msg_id)


def batches() -> List[List[Msg]]:
    """Small and large messages (past LARGE_MESSAGE: a ping barrier without acks)."""
    return [
        [data_msg(1, msg_id="s1"), big("b1", LARGE_MESSAGE), data_msg(2, msg_id="s2")],
        [big("b2", 300_000), big("b3", LARGE_MESSAGE + 50_000)],
        [data_msg(3, msg_id="s3")],
    ]


def drain(
    gather: bool, seed: int, hello_ok: Optional[Dict[str, Any]]
) -> Tuple[bytes, List[Tuple[List[Any], int]], List[List[Msg]], int]:
    """Send the batches, each written out in random partial writes.

    Returns the bytes written, each Written event's messages with the bytes
    written when it came out, the batches, and the messages awaiting an ack.
    """
    rng = random.Random(seed)
    peer = open_peer(FakeClock(), hello_ok=hello_ok)  # same seed: the same mask keys
    session = peer.session
    wire = bytearray()
    written: List[Tuple[List[Any], int]] = []
    sent = batches()
    for batch in sent:
        session.send(batch)
        while True:
            if gather:
                chunks = session.chunks_to_send(rng.choice([2, 3, 64]), 1 << 20)
                data = b"".join(chunks)
            else:
                data = bytes(session.data_to_send())
            if not data:
                break
            n = rng.randint(1, len(data))
            wire += data[:n]
            session.sent(n)
            for event in session.events():
                if isinstance(event, Written):
                    written.append((list(event.items), len(wire)))
    return bytes(wire), written, sent, session.unacked


def data_frame_ends(wire: bytes) -> Dict[str, int]:
    """Each data message's id and the offset on ``wire`` where its frame ends."""
    ends: Dict[str, int] = {}
    pos = 0
    while pos < len(wire):
        n = wire[pos + 1] & 0x7F
        at = pos + 2
        if n == 126:
            (n,) = struct.unpack("!H", wire[at : at + 2])
            at += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", wire[at : at + 8])
            at += 8
        end = at + 4 + n
        (frame,) = ClientFrames().feed(wire[pos:end])
        if frame.opcode == frames.OP_TEXT and frame.json.get("type") == "data":
            ends[frame.json["id"]] = end
        pos = end
    return ends


@pytest.mark.parametrize("hello_ok", [None, {"features": []}], ids=["acks", "barrier"])
@pytest.mark.parametrize("seed", range(4))
def test_gathered_writes_put_the_same_bytes_out_and_report_each_message_once_when_written(
    seed: int, hello_ok: Optional[Dict[str, Any]]
) -> None:
    plain, _, _, _ = drain(False, seed, hello_ok)
    wire, written, sent, unacked = drain(True, seed, hello_ok)
    assert wire == plain  # same keys, same frames: byte for byte what send() would write
    messages = [m for batch in sent for m in batch]
    reported = [m for items, _ in written for m in items]
    if hello_ok is None:  # acks: every message written, each awaiting its ack
        assert reported == [] and unacked == len(messages)
    else:  # no acks: the small ones are done when written; a ping barrier holds the large
        assert [m.id for m in reported] == ["s1", "s2", "s3"]
    ends = data_frame_ends(wire)
    assert set(ends) == {m.id for m in messages}
    for items, at in written:
        for m in items:
            assert ends[m.id] <= at  # reported only once its last byte was written
