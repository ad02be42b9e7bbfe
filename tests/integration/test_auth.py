"""Auth: rotation over the open socket, single flight, the auth gate, refusals, secrecy."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List

import pytest
from support.recorder import Recorder, eventually, wait_subscribed

from tether_sync import Auth, AuthError, ClientClosed, TetherClient
from tether_sync.server import TetherServer, mint_token


class Tokens:
    """A get_token() that mints demo tokens, counts calls and can be held up."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self.issued: List[str] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.issued)

    def __call__(self) -> str:
        self.entered.set()
        assert self.gate.wait(10), "test never released get_token()"
        token = mint_token(f"user-{len(self.issued)}", ttl=self.ttl)
        with self._lock:
            self.issued.append(token)
        return token


@pytest.fixture
def auth_server(make_server: Callable[..., TetherServer]) -> TetherServer:
    return make_server(require_auth=True)


@pytest.mark.timeout(30)
def test_rotation_before_expiry_goes_over_the_open_socket(
    auth_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    tokens = Tokens(ttl=3.0)
    client = make_client(auth_server.url, auth=Auth(tokens, refresh_before=2.0))
    refreshed = Recorder()
    closes = Recorder()
    client.on("auth_refreshed", refreshed)
    client.on("close", closes)
    client.connect(wait=True, timeout=5)
    # 3 s of life, rotated 2 s before expiry: about 1 s after connecting.
    assert refreshed.wait_count(2, timeout=5)
    conns = auth_server.all_connections
    assert len(conns) == 1, "rotation must not reconnect"
    assert conns[0].tokens == tokens.issued[:2]
    assert conns[0].tokens[0] != conns[0].tokens[1]
    assert closes.snapshot() == []
    expiries = [e.expires_at for e in refreshed.snapshot()[:2]]
    assert expiries[1] > expiries[0]
    # The new token is in force: data is accepted.
    echo = client.subscribe("after")
    client.send("still authorised", channel="after")
    assert echo.get(timeout=5) == "still authorised"
    assert client.stats().auth_refreshes >= 2


@pytest.mark.timeout(30)
def test_sixteen_threads_refreshing_cause_one_get_token_call(
    auth_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    tokens = Tokens()
    client = make_client(auth_server.url, auth=Auth(tokens))
    client.connect(wait=True, timeout=5)
    assert tokens.calls == 1
    tokens.gate.clear()  # the next get_token() is held until all 16 are waiting
    tokens.entered.clear()
    start = threading.Barrier(16)
    outcomes = Recorder()

    def refresh() -> None:
        start.wait(5)
        try:
            client.refresh_auth(timeout=10)
            outcomes("ok")
        except BaseException as exc:
            outcomes(exc)

    threads = [threading.Thread(target=refresh) for _ in range(16)]
    for th in threads:
        th.start()
    assert tokens.entered.wait(5)
    # All 16 share the rotation in flight (white-box: the round counts its waiters).
    assert eventually(
        lambda: client._refresh_round is not None and client._refresh_round.waiters == 16
    )
    tokens.gate.set()
    for th in threads:
        th.join(10)
    assert outcomes.snapshot() == ["ok"] * 16
    assert tokens.calls == 2  # one at connect, one for all 16 refreshers
    assert auth_server.all_connections[0].tokens == tokens.issued


@pytest.mark.timeout(30)
def test_queue_replay_waits_for_auth_ok(
    auth_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    auth_server.set_latency(0.3)  # auth-ok (and echoes) arrive 300 ms late
    client = make_client(auth_server.url, auth=Auth(Tokens()))
    news = client.subscribe("news")
    for i in range(10):
        client.send(i, channel="q")  # queued before connecting
    client.connect()
    assert auth_server.wait_for_data(10, timeout=10, channel="q")
    records = auth_server.received(auth_server.all_connections[0])
    kinds = [r.type for r in records]
    # DESIGN §5: the hello opens every connection, then auth, subscriptions, queue.
    assert kinds[:2] == ["tether:hello", "tether:auth"]
    first_data = kinds.index("data")
    assert kinds.index("subscribe") < first_data  # auth, subscriptions, queue
    # Nothing was sent before the server's (delayed) yes. A lower bound, which load cannot
    # break; exactly (auth-ok on the budget's last tick): tests/protocol/test_session_timing.py::
    # test_nothing_but_hello_and_auth_goes_out_before_auth_ok_however_late
    assert records[first_data].at - records[1].at >= 0.25
    assert not any(r.refused for r in records)
    assert auth_server.data_payloads("q") == list(range(10))
    assert news.active


@pytest.mark.timeout(30)
def test_slow_get_token_does_not_delay_pings_or_dispatch(
    auth_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    tokens = Tokens()
    client = make_client(
        auth_server.url, auth=Auth(tokens), heartbeat={"interval": 0.05, "timeout": 1.0}
    )
    got = Recorder()
    client.subscribe("live", got)
    client.connect(wait=True, timeout=5)
    assert wait_subscribed(auth_server, "live")
    tokens.gate.clear()  # get_token() now takes as long as the test says (≤ 10 s)
    tokens.entered.clear()
    refresher = threading.Thread(target=lambda: client.refresh_auth(timeout=10))
    refresher.start()
    assert tokens.entered.wait(5)
    pings = len(auth_server.received(type="tether:ping"))
    # While get_token() blocks: heartbeats keep going out...
    assert auth_server.wait_for(
        lambda: len(auth_server.received(type="tether:ping")) >= pings + 5, 5
    )
    # ...and inbound messages keep being dispatched.
    for i in range(5):
        assert auth_server.broadcast("live", i) == 1
    assert got.wait_count(5, timeout=5)
    assert refresher.is_alive()  # the rotation is still waiting for its token
    tokens.gate.set()
    refresher.join(10)
    assert not refresher.is_alive()
    assert client.state == "open"


@pytest.mark.timeout(30)
def test_server_refusing_every_token_ends_in_closed_with_auth_error(
    auth_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    tokens = Tokens(ttl=-60.0)  # already expired: the server says ok:false
    client = make_client(auth_server.url, auth=Auth(tokens))
    errors = Recorder()
    client.on("error", errors)
    with pytest.raises(AuthError, match="refused"):
        client.connect(wait=True, timeout=10)
    assert tokens.calls == 2  # the first token, then one fresh one: no storm
    assert client.state == "closed"
    assert errors.wait_for(lambda items: any(isinstance(e.error, AuthError) for e in items))
    with pytest.raises(ClientClosed):
        client.refresh_auth(timeout=1)


@pytest.mark.timeout(30)
def test_get_token_failure_is_reported_and_retried_while_the_link_stays_up(
    auth_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    calls: List[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("identity provider down")
        return mint_token(ttl=300)

    client = make_client(auth_server.url, auth=Auth(flaky))
    errors = Recorder()
    closes = Recorder()
    client.on("error", errors)
    client.on("close", closes)
    client.connect(wait=True, timeout=5)
    with pytest.raises(AuthError, match="ConnectionError") as failed:
        client.refresh_auth(timeout=5)
    # The user's own message stays on the chained cause (it could quote a token).
    assert str(failed.value.__cause__) == "identity provider down"
    assert errors.wait_count(1)
    assert isinstance(errors.snapshot()[0].error.__cause__, ConnectionError)
    assert client.state == "open" and closes.snapshot() == []
    client.refresh_auth(timeout=5)  # the next attempt works
    assert len(calls) == 3


@pytest.mark.timeout(30)
def test_tokens_never_appear_in_logs_reprs_errors_or_stats(
    auth_server: TetherServer,
    make_client: Callable[..., TetherClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = Tokens(ttl=2.0)
    client = make_client(auth_server.url, auth=Auth(tokens, refresh_before=1.5))
    events = Recorder()
    for name in ("open", "close", "auth_refreshed", "error", "state_change"):
        client.on(name, events)
    client.connect(wait=True, timeout=5)
    client.refresh_auth(timeout=5)
    auth_server.drop_all()  # reconnect: the cached token is reused or refetched
    assert eventually(lambda: client.state == "open" and len(auth_server.all_connections) == 2)
    bad_tokens = Tokens(ttl=-5)
    refusing = make_client(auth_server.url, auth=Auth(bad_tokens))
    with pytest.raises(AuthError) as refused:
        refusing.connect(wait=True, timeout=10)
    texts: List[Any] = [
        caplog.text,
        repr(client),
        repr(client.stats()),
        repr(client._config),
        str(refused.value),
        repr(refused.value),
        *(repr(e) for e in events.snapshot()),
    ]
    assert tokens.issued and bad_tokens.issued
    for secret in [*tokens.issued, *bad_tokens.issued]:
        for text in texts:
            assert secret not in text
