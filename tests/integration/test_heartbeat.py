"""The heartbeat finds half-open connections within interval + timeout."""

from __future__ import annotations

import time
from typing import Callable

import pytest
from support.recorder import Recorder, wait_subscribed

from tether_sync import CloseEvent, TetherClient
from tether_sync.server import TetherServer

INTERVAL, TIMEOUT = 0.4, 0.3
# A wall-clock sanity bound only (a loaded machine must not fail the test): the exact
# deadlines are tests/protocol/test_session_timing.py's, on a fake clock.
SANITY = 5.0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("protocol", ["tether", "raw"])
def test_blackholed_server_is_detected_closed_with_4000_and_reconnected(
    protocol: str, tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(
        tether_server.url,
        protocol=protocol,
        heartbeat={"interval": INTERVAL, "timeout": TIMEOUT},
        connect_timeout=0.5,  # handshakes into the blackhole fail fast
    )
    closes = Recorder()
    opens = Recorder()
    client.on("close", closes)
    client.on("open", opens)
    client.connect(wait=True, timeout=5)
    assert opens.wait_count(1)
    started = time.monotonic()
    tether_server.blackhole(True)
    assert closes.wait_count(1, timeout=10)
    noticed = time.monotonic() - started
    close: CloseEvent = closes.snapshot()[0]
    assert (close.code, close.reason, close.was_clean) == (4000, "Heartbeat timeout", False)
    # Detected at all (a blackhole keeps TCP up: only the heartbeat notices), and not
    # absurdly late. Exactly at ping + timeout, then the 0.25 s close grace:
    # test_session_timing.py::test_a_silent_peer_is_closed_exactly_at_the_pong_deadline.
    assert noticed <= INTERVAL + TIMEOUT + SANITY, f"took {noticed:.3f}s"
    assert client.state in ("reconnecting", "connecting")
    tether_server.blackhole(False)
    assert opens.wait_count(2, timeout=15)
    assert client.state == "open"


@pytest.mark.timeout(30)
def test_live_server_keeps_the_link_and_reports_rtt(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url, heartbeat={"interval": 0.05, "timeout": 1.0})
    closes = Recorder()
    client.on("close", closes)
    client.connect(wait=True, timeout=5)
    assert tether_server.wait_for(lambda: len(tether_server.received(type="tether:ping")) >= 5, 10)
    assert closes.snapshot() == []
    rtt = client.stats().last_rtt
    # A pong later than the timeout is no round trip (and would have closed the link);
    # the exact rtt and ping schedule: test_session_timing.py::
    # test_an_answered_ping_schedules_the_next_one_interval_after_it.
    assert rtt is not None and 0 <= rtt < 1.0


@pytest.mark.timeout(30)
def test_inbound_traffic_counts_as_liveness(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    # Pongs are delayed past the timeout, but other frames keep arriving.
    client = make_client(tether_server.url, heartbeat={"interval": 0.1, "timeout": 0.2})
    closes = Recorder()
    got = Recorder()
    client.on("close", closes)
    client.subscribe("live", got)
    client.connect(wait=True, timeout=5)
    assert wait_subscribed(tether_server, "live")
    tether_server.set_latency(0.5)  # pongs (and echoes) come late...
    pings = len(tether_server.received(type="tether:ping"))
    for i in range(10):  # ten heartbeats, each answered late, each with traffic
        assert tether_server.wait_for(
            lambda n=pings + i + 1: len(tether_server.received(type="tether:ping")) >= n, 5
        )
        assert tether_server.broadcast("live", i) == 1  # broadcasts are not delayed
        assert got.wait_count(i + 1, timeout=5)
    assert closes.snapshot() == []
    assert client.state == "open"
