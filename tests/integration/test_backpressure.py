"""Backpressure both ways, on real signals from the kernel and the consumer."""

from __future__ import annotations

import threading
from typing import Any, Callable, List

import pytest
from support.recorder import Recorder, eventually, wait_subscribed

from tether_sync import QueueFull, TetherClient
from tether_sync.server import TetherServer

FLOOD = {"type": "tether:control", "action": "flood", "count": 500}


@pytest.mark.timeout(60)
def test_server_that_stops_reading_pauses_draining_then_gets_everything_in_order(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    hwm = 256 * 1024
    client = make_client(
        tether_server.url,
        queue={"max_size": 2000, "overflow": "reject"},
        backpressure={"high_water_mark": hwm},
    )
    pressure = Recorder()
    client.on("backpressure", pressure)
    client.connect(wait=True, timeout=5)
    tether_server.pause_reading(True)
    blob = "x" * 1000
    accepted: List[int] = []
    peak = 0
    # Send until the queue refuses: the kernel buffers on both sides fill, the
    # client stops draining at the mark, and the queue's own bound takes over.
    for n in range(200_000):
        try:
            # While open, a full queue makes send() wait for room: a short
            # timeout turns "no room" into QueueFull.
            client.send({"n": n, "blob": blob}, channel="bp", timeout=0.5)
        except QueueFull:
            break
        accepted.append(n)
        peak = max(peak, client.buffered_amount)
    else:
        pytest.fail("the queue never filled: draining did not pause")
    assert pressure.wait_count(1)
    outbound = [e for e in pressure.snapshot() if e.direction == "outbound"]
    # Once per episode: an episode ends only below half the mark, so a buffer
    # hovering at the mark while the peer's window closes reports once or twice.
    assert 1 <= len(outbound) <= 3
    assert all(e.depth >= hwm for e in outbound)
    # Stuck at the mark: draining stays paused while the queue holds the rest
    # (the peer's kernel may still have taken a little since the sender stopped).
    assert eventually(lambda: client.buffered_amount >= hwm and client.queue_depth > 1000)
    # What the client holds is bounded: the queue plus at most one write batch
    # above the mark (the kernel part is capped by TCP_NOTSENT_LOWAT).
    assert client.buffered_amount < hwm + 512 * 1024
    assert peak < hwm + 512 * 1024
    tether_server.pause_reading(False)
    assert client.flush(timeout=30)
    assert tether_server.wait_for_data(len(accepted), timeout=30, channel="bp")
    assert [p["n"] for p in tether_server.data_payloads("bp")] == accepted


def _flood(
    server: TetherServer, make_client: Callable[..., TetherClient], overflow: str
) -> tuple[TetherClient, Any, Recorder]:
    """Flood 500 messages into a queue subscription that nobody reads yet."""
    client = make_client(
        server.url, backpressure={"inbound_buffer_size": 100, "inbound_overflow": overflow}
    )
    pressure = Recorder()
    client.on("backpressure", pressure)
    sub = client.subscribe("flood")
    client.connect(wait=True, timeout=5)
    client.send(FLOOD, channel="ctl")
    return client, sub, pressure


def _drain(sub: Any, count: int) -> List[int]:
    return [sub.get(timeout=5)["index"] for _ in range(count)]


def _dropped(pressure: Recorder) -> int:
    return sum(e.dropped for e in pressure.snapshot() if e.direction == "inbound")


def _two_floods(
    server: TetherServer, make_client: Callable[..., TetherClient], overflow: str
) -> tuple[TetherClient, List[int], Recorder]:
    """Two floods of 500 into a 100-slot subscription that nobody reads meanwhile.

    The bound measures how far the consumer lags, not what one read carried: a
    flood that arrives in one read is kept whole, and what the consumer had not
    taken when the next one arrives is what the policy drops. Returns the
    indices kept, in the order the consumer gets them.
    """
    client, sub, pressure = _flood(server, make_client, overflow)
    assert eventually(lambda: client.stats().received >= 501, timeout=10)
    client.send(FLOOD, channel="ctl")
    assert eventually(lambda: client.stats().received >= 1002, timeout=10)
    kept: List[int] = []
    while True:
        try:
            kept.append(sub.get(timeout=0.2)["index"])
        except TimeoutError:
            break
    assert client.stats().dropped_inbound == 1000 - len(kept) == _dropped(pressure)
    assert 400 <= client.stats().dropped_inbound < 1000
    events = [e for e in pressure.snapshot() if e.direction == "inbound"]
    assert events and all(e.channel == "flood" and e.dropped >= 1 for e in events)
    return client, kept, pressure


@pytest.mark.timeout(60)
def test_flood_drop_oldest_keeps_the_newest(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    _, kept, _ = _two_floods(tether_server, make_client, "drop-oldest")
    # The newest survive: the tail of the second flood, in order.
    assert kept == list(range(500 - len(kept), 500))


@pytest.mark.timeout(60)
def test_flood_sample_oldest_drops_two_at_a_time(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    _, kept, pressure = _two_floods(tether_server, make_client, "sample-oldest")
    assert kept == list(range(500 - len(kept), 500))
    events = [e for e in pressure.snapshot() if e.direction == "inbound"]
    assert all(e.dropped >= 2 and e.dropped % 2 == 0 for e in events)


@pytest.mark.timeout(60)
def test_flood_drop_newest_keeps_the_oldest(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    _, kept, _ = _two_floods(tether_server, make_client, "drop-newest")
    # The oldest survive: the head of the first flood, in order.
    assert kept == list(range(len(kept)))


@pytest.mark.timeout(60)
def test_flood_block_drops_nothing_and_keeps_order(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client, sub, pressure = _flood(tether_server, make_client, "block")
    # The buffer refuses the 101st message: the I/O thread stops reading.
    assert pressure.wait_for(lambda items: any(e.direction == "inbound" for e in items))
    assert client.stats().inbound_depth["flood"] == 100
    assert client.state == "open"
    assert _drain(sub, 500) == list(range(500))
    assert client.stats().dropped_inbound == 0
    assert all(e.dropped == 0 for e in pressure.snapshot())
    echo = client.subscribe("after")  # the link stayed usable
    client.send("ok", channel="after")
    assert echo.get(timeout=5) == "ok"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overflow", ["block", "drop-oldest"])
def test_flood_into_a_slow_callback(
    overflow: str, tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(
        tether_server.url,
        backpressure={"inbound_buffer_size": 100, "inbound_overflow": overflow},
    )
    gate = threading.Event()
    delivered = Recorder()

    def slow(payload: Any) -> None:
        gate.wait(20)  # far slower than the link until the flood has hit the bound
        delivered(payload["index"])

    client.subscribe("flood", slow)
    client.connect(wait=True, timeout=5)
    client.send(FLOOD, channel="ctl")
    # The dispatcher is held by the callback, so watch the client's own numbers.
    if overflow == "block":
        # Full (100), or 99 if the callback took its first item after the buffer
        # filled. (What the last read already took from the socket is held, in
        # order, by the loop; the socket itself is no longer read.)
        assert eventually(lambda: client.stats().inbound_depth.get("flood", 0) >= 99)
    else:
        assert eventually(lambda: client.stats().received >= 501)  # ack + 500
    gate.set()
    if overflow == "block":
        assert delivered.wait_count(500, timeout=30)
        assert delivered.snapshot() == list(range(500))
        assert client.stats().dropped_inbound == 0
    else:
        assert eventually(lambda: len(delivered.snapshot()) + client.stats().dropped_inbound == 500)
        got = delivered.snapshot()
        assert got == sorted(got) and got[-100:] == list(range(400, 500))
        assert client.stats().dropped_inbound == 500 - len(got) > 0


@pytest.mark.timeout(60)
def test_block_pushes_back_on_the_server_through_tcp(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(
        tether_server.url,
        backpressure={"inbound_buffer_size": 4, "inbound_overflow": "block"},
        max_message_size=2**20,
    )
    sub = client.subscribe("big")
    client.connect(wait=True, timeout=5)
    assert wait_subscribed(tether_server, "big")
    blob = "x" * 200_000
    for i in range(100):  # 20 MB: far more than the socket buffers on both sides
        assert tether_server.broadcast("big", {"i": i, "blob": blob}) == 1
    conn = tether_server.connections[0]
    # The client stopped reading: for a whole second the server cannot get rid
    # of what it wrote (a reading client takes 20 MB in a few milliseconds).
    assert not tether_server.wait_for(lambda: conn.buffered_amount < 5_000_000, 1.0)
    assert [sub.get(timeout=10)["i"] for _ in range(100)] == list(range(100))
    assert client.stats().dropped_inbound == 0
    assert tether_server.wait_for(lambda: conn.buffered_amount == 0, 10)
