"""Several endpoints, replaceable retry policies and terminal close-code ranges, on real sockets."""

from __future__ import annotations

import random
import socket
from typing import Any, Callable, List, Optional, Tuple

import pytest
from support.listener import Listener
from support.recorder import Recorder

from tether_sync import (
    CloseEvent,
    ErrorEvent,
    OpenEvent,
    ReconnectingEvent,
    TetherClient,
    TetherError,
)
from tether_sync.server import TetherServer

FAST = {"base_delay": 0.01, "max_delay": 0.05}


class BoundsRng(random.Random):
    """A seeded RNG that records the bounds of every uniform() it is asked for."""

    def __init__(self) -> None:
        super().__init__(11)
        self.bounds: List[Tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return super().uniform(a, b)


class Slammer:
    """A TCP listener that accepts and at once closes: every handshake fails there.

    Each accept is logged, under its name, in a log shared by several slammers, so
    a test sees the order in which the client went round the endpoints.
    """

    def __init__(self, name: str, log: Recorder) -> None:
        self.name = name
        self._log = log
        self._listener = Listener(self._slam, name=f"slammer-{name}")
        self.url = self._listener.url

    def _slam(self, conn: socket.socket) -> None:
        self._log(self.name)
        conn.close()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def slammers() -> Any:
    made: List[Slammer] = []
    log = Recorder()

    def factory(name: str) -> Slammer:
        slammer = Slammer(name, log)
        made.append(slammer)
        return slammer

    factory.log = log  # type: ignore[attr-defined]
    yield factory
    for slammer in made:
        slammer.close()


def _stopped(make_server: Callable[..., TetherServer]) -> TetherServer:
    """A server that has a port and refuses connections there until started again."""
    server = make_server()
    server.stop()
    return server


# -- failover ---------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_opens_on_the_second_when_the_first_refuses_and_returns_to_the_first(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    first = _stopped(make_server)  # refuses: nothing listens on its port
    second = make_server()
    client = make_client([first.url, second.url], reconnect=FAST)
    opens = Recorder()
    client.on("open", opens)
    client.connect(wait=True, timeout=10)
    assert opens.wait_count(1)
    opened: OpenEvent = opens.snapshot()[0]
    assert (opened.url, opened.index) == (second.url, 1)
    assert client.stats().endpoint == second.url
    assert client.url == first.url  # the primary, whatever is current
    assert client.urls == (first.url, second.url)
    assert client.send("on the second").result(timeout=5) is None
    assert second.wait_for_data(1, timeout=5)

    first.start()  # same port as before
    second.stop()  # the link ends with 1001: next in turn is the first
    assert opens.wait_count(2, timeout=10)
    back: OpenEvent = opens.snapshot()[1]
    assert (back.url, back.index) == (first.url, 0)
    assert client.state == "open" and client.stats().endpoint == first.url
    client.send("on the first")
    assert first.wait_for_data(1, timeout=5)
    assert first.data_payloads() == ["on the first"]
    assert client.stats().reconnects == 1


@pytest.mark.timeout(30)
def test_a_total_outage_goes_round_robin_and_backs_off_per_rotation(
    slammers: Any, make_client: Callable[..., TetherClient]
) -> None:
    a, b, c = slammers("a"), slammers("b"), slammers("c")
    rng = BoundsRng()
    client = make_client(
        [a.url, b.url, c.url],
        reconnect={"base_delay": 0.01, "max_delay": 1.0, "max_attempts": 8},
        rng=rng,
    )
    attempts = Recorder()
    states = Recorder()
    client.on("reconnecting", attempts)
    client.on("state_change", lambda e: states(e.current))
    client.connect()
    assert states.wait_for(lambda s: "closed" in s, timeout=20)
    # The first connect and 8 attempts, each on the next endpoint in turn.
    assert slammers.log.snapshot() == ["a", "b", "c", "a", "b", "c", "a", "b", "c"]
    assert [e.attempt for e in attempts.snapshot()] == list(range(1, 9))
    rounds = [1, 1, 1, 2, 2, 2, 3, 3]  # ceil(attempt / 3)
    assert rng.bounds == [(0.0, min(1.0, 0.01 * 2**r)) for r in rounds]


# -- a replaceable retry policy ----------------------------------------------------


@pytest.mark.timeout(30)
def test_a_policy_returning_none_stops_retrying(
    dead_url: str, make_client: Callable[..., TetherClient]
) -> None:
    calls = Recorder()

    def policy(attempt: int, elapsed: float, reason: Optional[BaseException]) -> Optional[float]:
        calls((attempt, elapsed, reason))
        return 0.01 if attempt < 3 else None

    client = make_client(dead_url, reconnect={"policy": policy})
    attempts = Recorder()
    errors = Recorder()
    client.on("reconnecting", attempts)
    client.on("error", errors)
    with pytest.raises(TetherError, match="policy stopped retrying after 2 attempt"):
        client.connect(wait=True, timeout=10)
    assert client.state == "closed"
    assert attempts.wait_count(2)  # events reach handlers on the dispatcher, a bit later
    assert [e.attempt for e in attempts.snapshot()] == [1, 2]
    assert [e.delay for e in attempts.snapshot()] == [0.01, 0.01]
    seen = calls.snapshot()
    assert [a for a, _, _ in seen] == [1, 2, 3]
    elapsed = [e for _, e, _ in seen]
    assert elapsed[0] == 0.0 and elapsed == sorted(elapsed)
    assert all(isinstance(r, OSError) for _, _, r in seen)  # connection refused
    # Failed attempts are error events too; the last one says why the client ended.
    assert errors.wait_for(lambda es: bool(es) and "policy stopped" in str(es[-1].error))
    error: ErrorEvent = errors.snapshot()[-1]
    assert isinstance(error.error, TetherError)
    assert isinstance(error.error.__cause__, OSError)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("garbage", ["raises", float("nan"), -1.0, float("inf"), "soon"])
def test_a_misbehaving_policy_falls_back_to_the_default_and_the_client_lives(
    garbage: Any,
    dead_url: str,
    tether_server: TetherServer,
    make_client: Callable[..., TetherClient],
) -> None:
    def policy(attempt: int, elapsed: float, reason: Optional[BaseException]) -> Any:
        if garbage == "raises":
            raise RuntimeError("policy bug")
        return garbage

    rng = BoundsRng()
    client = make_client(
        [dead_url, tether_server.url],
        reconnect={"base_delay": 0.01, "max_delay": 0.05, "policy": policy},
        rng=rng,
    )
    errors = Recorder()
    attempts = Recorder()
    client.on("error", errors)
    client.on("reconnecting", attempts)
    client.connect(wait=True, timeout=10)  # the I/O thread carried on
    # Each failed attempt is an error event too; the policy's trouble is one more.
    assert errors.wait_for(lambda es: any("reconnect policy" in str(e.error) for e in es))
    error = next(e.error for e in errors.snapshot() if "reconnect policy" in str(e.error))
    assert isinstance(error, TetherError)
    assert "default delay" in str(error)
    if garbage == "raises":
        assert isinstance(error.__cause__, RuntimeError)
    assert attempts.wait_count(1)
    event: ReconnectingEvent = attempts.snapshot()[0]
    assert rng.bounds[0] == (0.0, 0.02) and 0.0 <= event.delay <= 0.02
    assert client.send("alive").result(timeout=5) is None
    assert client.stats().endpoint == tether_server.url


# -- terminal close codes as ranges -------------------------------------------------


@pytest.mark.timeout(30)
def test_a_code_in_a_terminal_range_ends_the_client(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(
        tether_server.url, reconnect={**FAST, "terminal_codes": [1008, range(4000, 4100)]}
    )
    states = Recorder()
    closes = Recorder()
    errors = Recorder()
    client.on("state_change", lambda e: states(e.current))
    client.on("close", closes)
    client.on("error", errors)
    client.connect(wait=True, timeout=5)
    assert tether_server.wait_for_connections(1)
    assert tether_server.connections[0].close(4001, "do not come back")
    assert states.wait_for(lambda s: "closed" in s)
    assert "reconnecting" not in states.snapshot()
    assert closes.wait_count(1)
    close: CloseEvent = closes.snapshot()[0]
    assert (close.code, close.reason) == (4001, "do not come back")
    assert errors.wait_for(lambda es: any("terminal code 4001" in str(e.error) for e in es))
    assert tether_server.total_connections == 1


@pytest.mark.timeout(30)
def test_a_code_outside_the_range_reconnects(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url, reconnect={**FAST, "terminal_codes": range(4000, 4100)})
    opens = Recorder()
    client.on("open", opens)
    client.connect(wait=True, timeout=5)
    assert tether_server.wait_for_connections(1)
    assert tether_server.connections[0].close(4100, "come back")
    assert opens.wait_count(2, timeout=10)
    assert client.state == "open"


@pytest.mark.timeout(30)
def test_the_clients_own_heartbeat_close_is_never_terminal(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    # 4000 is in Pusher's "don't reconnect" range, and also the code of the
    # client's own close when pongs stop: a dead link must still be reconnected.
    client = make_client(
        tether_server.url,
        reconnect={**FAST, "terminal_codes": range(4000, 4100)},
        heartbeat={"interval": 0.1, "timeout": 0.2},
        connect_timeout=0.5,
    )
    closes = Recorder()
    opens = Recorder()
    client.on("close", closes)
    client.on("open", opens)
    client.connect(wait=True, timeout=5)
    tether_server.blackhole(True)
    assert closes.wait_count(1, timeout=10)
    assert closes.snapshot()[0].code == 4000
    assert client.state in ("reconnecting", "connecting")
    tether_server.blackhole(False)
    assert opens.wait_count(2, timeout=15)
