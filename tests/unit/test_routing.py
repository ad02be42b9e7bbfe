"""Router: inbound payloads to subscription buffers and the message stream, in order."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from tether_sync.engine.routing import Router
from tether_sync.events import MessageEvent
from tether_sync.protocol.session import Received
from tether_sync.stats import Counters
from tether_sync.subscription import InboundBuffer


def drain(buf: InboundBuffer) -> List[Any]:
    return [buf.get(timeout=0) for _ in range(len(buf))]


def router(stream: bool = False) -> Tuple[Router, Counters]:
    counters = Counters()
    r = Router(counters, lambda event: None, lambda name: False)
    if stream:
        r.message_buffer = InboundBuffer(100, "drop-oldest")
    return r, counters


def test_interleaved_channels_keep_each_buffers_order() -> None:
    r, counters = router(stream=True)
    a1, a2, b = (InboundBuffer(100, "block") for _ in range(3))
    r.subscribe("a", a1)
    r.subscribe("a", a2)
    r.subscribe("b", b)
    items: List[Tuple[Optional[str], Any]] = [
        ("a", 1),
        ("a", 2),
        ("b", 3),
        (None, "raw"),
        ("nobody", 4),
        ("a", 5),
        ("b", 6),
        ("b", 7),
    ]
    # Two reads' worth in one batch, and the second run continues the first's channel.
    r.deliver_many(items[:5])
    r.deliver_many(items[5:])
    r.flush()
    assert drain(a1) == drain(a2) == [1, 2, 5]
    assert drain(b) == [3, 6, 7]
    assert r.message_buffer is not None
    assert drain(r.message_buffer) == [MessageEvent(c, p) for c, p in items]
    assert counters.received == len(items)


def test_a_full_block_buffer_holds_everything_after_it_in_order_until_resumed() -> None:
    # Reading stops while anything is held, so what came after the refused item
    # waits behind it, whichever buffer it is for.
    r, _ = router()
    small, big = InboundBuffer(2, "block"), InboundBuffer(100, "block")
    r.subscribe("s", small)
    r.subscribe("g", big)
    r.deliver_many([("s", 1), ("g", 2), ("s", 3), ("s", 4), ("g", 5)])
    r.flush()
    assert r.holding
    assert drain(small) == [1, 3]
    assert drain(big) == []
    r.deliver_many([("g", 6), ("s", 7), ("s", 8), ("s", 9)])
    r.flush()
    assert r.resume() is False  # small takes 4 and 7, then refuses 8
    assert drain(big) == [2, 5, 6]
    assert drain(small) == [4, 7]
    assert r.resume() is True
    assert drain(small) == [8, 9]
    assert not r.holding


def test_a_received_event_is_collected_until_the_read_is_flushed() -> None:
    # The loop's table hands the session's Received events here; they reach the
    # buffers in one batch per read, when the loop flushes after the read.
    r, counters = router()
    buf = InboundBuffer(100, "block")
    r.subscribe("a", buf)
    r.received(Received([("a", 1), ("a", 2)]))
    r.received(Received([("a", 3)]))
    assert len(buf) == 0 and counters.received == 3
    r.flush()
    assert drain(buf) == [1, 2, 3]
