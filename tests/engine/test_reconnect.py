"""Reconnect and backoff decisions of the engine, on a fake clock.

Which delay follows which failure, how attempts are counted, which endpoint
each attempt goes to, and when the client gives up: a user sees all of it in
``reconnecting`` events, ``stats()`` and the state. Every delay here is exact:
the rig's rng draws the cap of each full-jitter delay.
"""

from __future__ import annotations

from typing import List

import pytest
from engine.rig import Rig
from protocol.sessionkit import server_frame

from tether_sync import ClientClosed, ConnectTimeout, Reconnect, TetherError
from tether_sync.protocol.session import HEARTBEAT_CLOSE_GRACE
from tether_sync.state import State

pytestmark = pytest.mark.timeout(30)


def refused() -> ConnectionRefusedError:
    return ConnectionRefusedError(111, "Connection refused")


def test_each_failed_attempt_waits_its_backoff_delay_and_no_less(rig: Rig) -> None:
    # base 1 s, cap 8 s: the caps of attempts 1, 2, 3, 4 are 2, 4, 8, 8 s.
    d = rig.client(reconnect=Reconnect(base_delay=1.0, max_delay=8.0))
    d.client.connect()
    rig.dialing.next().fail(refused())  # the first attempt (not a reconnection yet)
    for n, delay in enumerate([2.0, 4.0, 8.0, 8.0], start=1):
        event = d.events.wait_for("reconnecting", n)
        assert (event.attempt, event.delay) == (n, delay)
        assert isinstance(event.cause, ConnectionRefusedError)
        assert d.client.stats().next_delay == delay
        # A millisecond early: no attempt yet.
        rig.clock.advance(delay - 0.001)
        d.sync()
        assert rig.dialing.count == n
        assert d.client.state is State.RECONNECTING
        rig.clock.advance(0.001)
        attempt = rig.dialing.next()
        assert attempt.number == n + 1
        attempt.fail(refused())
    d.events.wait_for("reconnecting", 5)
    assert d.client.stats().connect_attempts == 5
    assert d.client.stats().connect_failures == 5
    # One cause, reported once per run (not once per attempt).
    assert len(d.events.of("error")) == 1


def test_attempts_rotate_over_the_endpoints_and_the_delay_grows_per_round(rig: Rig) -> None:
    urls = ["ws://a.test/ws", "ws://b.test/ws", "ws://c.test/ws"]
    d = rig.client(urls, reconnect=Reconnect(base_delay=1.0, max_delay=30.0))
    d.client.connect()
    seen: List[str] = []
    delays: List[float] = []
    for n in range(1, 8):
        attempt = rig.dialing.next()
        seen.append(attempt.url)
        attempt.fail(refused())
        event = d.events.wait_for("reconnecting", n)
        delays.append(event.delay)
        rig.clock.advance(event.delay)
    assert seen == urls * 2 + urls[:1]
    # Round ceil(n / 3): a dead primary costs one short delay before the next endpoint.
    assert delays == [2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 8.0]
    # The endpoint the next attempt goes to, as the user sees it.
    assert d.client.stats().endpoint == "ws://b.test/ws"
    rig.dialing.next().accept()
    opened = d.events.wait_for("open")
    assert (opened.url, opened.index) == ("ws://b.test/ws", 1)
    assert d.client.reconnect_attempt == 0


def test_the_client_gives_up_after_max_attempts(rig: Rig) -> None:
    d = rig.client(reconnect=Reconnect(base_delay=1.0, max_attempts=2))
    d.client.connect()
    delivery = d.client.send("never sent")
    rig.dialing.next().fail(refused())
    for n in (1, 2):
        event = d.events.wait_for("reconnecting", n)
        rig.clock.advance(event.delay)
        rig.dialing.next().fail(refused())
    d.events.wait_for("state_change", where=lambda e: e.current == "closed")
    assert d.client.state is State.CLOSED
    error = d.events.of("error")[-1].error
    assert isinstance(error, TetherError)
    assert "gave up after 2 reconnection attempt(s)" in str(error)
    assert rig.dialing.count == 3  # the first attempt and two reconnections
    with pytest.raises(ClientClosed):
        delivery.result(timeout=0)
    # No timer is left to start another attempt.
    rig.clock.advance(3600)
    assert rig.dialing.count == 3


def test_a_connect_that_never_answers_times_out_naming_its_stage_then_retries(
    rig: Rig,
) -> None:
    d = rig.client(connect_timeout=5.0, reconnect=Reconnect(base_delay=1.0))
    d.client.connect()
    hanging = rig.dialing.next()  # never answered
    rig.clock.advance(4.999)
    d.sync()
    assert not hanging.ended.is_set()
    rig.clock.advance(0.001)
    event = d.events.wait_for("reconnecting")
    assert isinstance(event.cause, ConnectTimeout)
    assert "waiting for the TCP connect" in str(event.cause)
    # The connector was aborted (its blocking call ended), not left running.
    assert hanging.ended.wait(10) and hanging.aborted
    rig.clock.advance(event.delay)
    rig.dialing.next().accept()
    d.events.wait_for("open")


def test_a_link_that_lived_min_uptime_starts_the_backoff_over(rig: Rig) -> None:
    d = rig.client(reconnect=Reconnect(base_delay=1.0, max_delay=30.0, min_uptime=2.0))
    d.client.connect()
    for n in (1, 2):  # two failed attempts: the run is at attempt 2
        rig.dialing.next().fail(refused())
        rig.clock.advance(d.events.wait_for("reconnecting", n).delay)
    server = rig.dialing.next().accept()
    d.events.wait_for("open")
    rig.clock.advance(2.0)
    server.drop()
    event = d.events.wait_for("reconnecting", 3)
    assert (event.attempt, event.delay) == (1, 2.0)


def test_a_link_dropped_at_once_keeps_counting_the_attempts(rig: Rig) -> None:
    # A server that accepts and drops every connection is still backed off.
    d = rig.client(reconnect=Reconnect(base_delay=1.0, max_delay=30.0, min_uptime=2.0))
    d.client.connect()
    for n in (1, 2):
        rig.dialing.next().fail(refused())
        rig.clock.advance(d.events.wait_for("reconnecting", n).delay)
    server = rig.dialing.next().accept()
    d.events.wait_for("open")
    rig.clock.advance(1.999)
    server.drop()
    event = d.events.wait_for("reconnecting", 3)
    assert (event.attempt, event.delay) == (3, 8.0)
    assert d.client.stats().reconnects == 0  # opened once: no reconnect yet


def test_a_terminal_close_code_from_the_server_ends_the_client(rig: Rig) -> None:
    d = rig.client(reconnect=Reconnect(terminal_codes=[4001]))
    server = rig.connect(d)
    server.close_with(4001, "go away")
    d.events.wait_for("state_change", where=lambda e: e.current == "closed")
    close = d.events.of("close")[-1]
    assert (close.code, close.reason, close.was_clean) == (4001, "go away", True)
    assert "terminal code 4001" in str(d.events.of("error")[-1].error)
    assert not d.events.of("reconnecting")
    rig.clock.advance(3600)
    assert rig.dialing.count == 1


def test_a_reconnect_policy_decides_the_delay_and_can_stop(rig: Rig) -> None:
    asked: List[tuple] = []

    def policy(attempt: int, elapsed: float, reason: object) -> object:
        asked.append((attempt, elapsed, type(reason).__name__))
        return None if attempt == 3 else 0.5 * attempt

    d = rig.client(reconnect=Reconnect(policy=policy))
    d.client.connect()
    for n in (1, 2):
        rig.dialing.next().fail(refused())
        event = d.events.wait_for("reconnecting", n)
        assert event.delay == 0.5 * n
        rig.clock.advance(event.delay)
    rig.dialing.next().fail(refused())
    d.events.wait_for("state_change", where=lambda e: e.current == "closed")
    # elapsed counts from the run's first failure, on the engine's clock.
    assert asked == [
        (1, 0.0, "ConnectionRefusedError"),
        (2, 0.5, "ConnectionRefusedError"),
        (3, 1.5, "ConnectionRefusedError"),
    ]
    assert "stopped retrying after 2 attempt(s)" in str(d.events.of("error")[-1].error)


def test_a_server_that_never_says_hello_ok_times_out_naming_it(rig: Rig) -> None:
    d = rig.client(protocol="tether", connect_timeout=5.0, reconnect=Reconnect(base_delay=1.0))
    d.client.connect()
    server = rig.dialing.next().accept()  # the handshake is done; the hello is not answered
    assert server.read_json()["type"] == "tether:hello"
    rig.clock.advance(4.999)
    d.sync()
    assert d.client.state is State.CONNECTING
    rig.clock.advance(0.001)
    retry = d.events.wait_for("reconnecting")
    assert isinstance(retry.cause, ConnectTimeout)
    assert "waiting for hello-ok" in str(retry.cause)
    assert server.read_until_eof()  # the ping; then the link is dropped, no close frame
    assert d.client.stats().connect_failures == 1


def test_a_peer_that_stops_answering_pings_is_left_after_the_heartbeat_timeout(
    rig: Rig,
) -> None:
    d = rig.client(
        heartbeat={"interval": 10.0, "timeout": 5.0}, reconnect=Reconnect(base_delay=1.0)
    )
    server = rig.connect(d)
    rig.clock.advance(10.0)
    (ping,) = server.read_frames()
    assert ping.opcode == 0x9  # a WebSocket ping (protocol raw)
    server.send(server_frame(0xA, ping.payload))  # answered: the link lives on
    d.sync()  # read at once, on the engine's clock
    assert d.client.stats().last_rtt == 0.0
    rig.clock.advance(10.0)
    (ping,) = server.read_frames()  # the next one goes unanswered
    rig.clock.advance(4.999)
    d.sync()
    assert d.client.state is State.OPEN
    rig.clock.advance(0.001)
    _, close_frame = server.read_until_close()  # the client gives up on the link: 4000
    assert close_frame.close_code == 4000
    rig.clock.advance(HEARTBEAT_CLOSE_GRACE)  # no answer to the close either
    retry = d.events.wait_for("reconnecting")
    close = d.events.of("close")[0]
    assert close.code == 4000 and not close.was_clean
    assert retry.attempt == 1


def test_a_lost_link_fails_over_to_the_next_endpoint(rig: Rig) -> None:
    urls = ["ws://primary.test/ws", "ws://secondary.test/ws"]
    d = rig.client(urls, reconnect=Reconnect(base_delay=1.0, min_uptime=2.0))
    server = rig.connect(d)
    assert rig.dialing.started[0].url == urls[0]
    rig.clock.advance(2.0)  # a link that lived: the backoff starts over
    server.drop()
    retry = d.events.wait_for("reconnecting")
    assert (retry.attempt, retry.delay) == (1, 2.0)
    assert d.client.stats().endpoint == urls[1]
    rig.clock.advance(retry.delay)
    attempt = rig.dialing.next()
    assert attempt.url == urls[1]
    attempt.accept()
    opened = d.events.wait_for("open", 2)
    assert (opened.url, opened.index) == (urls[1], 1)
