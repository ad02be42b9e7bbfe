"""The engine outlives a misbehaving retry policy, and reports a final auth refusal once."""

from __future__ import annotations

import threading
from typing import Callable, List, Optional

import pytest
from support.recorder import Recorder

from tether_sync import (
    Auth,
    AuthError,
    ErrorEvent,
    OpenEvent,
    ReconnectingEvent,
    TetherClient,
    TetherError,
)
from tether_sync.server import TetherServer, mint_token

BASE = 0.05  # base_delay: the default full jitter's first delay lies in [0, 2 * BASE]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("exc", [SystemExit(2), RuntimeError("policy bug")], ids=["exit", "bug"])
def test_a_policy_that_raises_is_reported_and_the_default_delay_used(
    exc: BaseException,
    dead_url: str,
    make_server: Callable[..., TetherServer],
    make_client: Callable[..., TetherClient],
) -> None:
    calls: List[int] = []

    def policy(attempt: int, elapsed: float, reason: Optional[BaseException]) -> float:
        calls.append(attempt)
        raise exc

    server = make_server()
    client = make_client(
        [dead_url, server.url],
        reconnect={"base_delay": BASE, "max_delay": 1.0, "policy": policy},
    )
    errors, retries, opens = Recorder(), Recorder(), Recorder()
    client.on("error", errors)
    client.on("reconnecting", retries)
    client.on("open", opens)
    client.connect()

    assert opens.wait_count(1)  # the I/O loop lived on and tried the next endpoint
    opened: OpenEvent = opens.snapshot()[0]
    assert opened.index == 1
    assert calls == [1]
    retry: ReconnectingEvent = retries.snapshot()[0]
    assert 0.0 <= retry.delay <= 2 * BASE  # the default full jitter of attempt 1
    problems = [e.error for e in errors.snapshot() if "reconnect policy raised" in str(e.error)]
    assert len(problems) == 1
    assert isinstance(problems[0], TetherError) and problems[0].__cause__ is exc
    assert f"raised {type(exc).__name__}" in str(problems[0])
    io = [t for t in threading.enumerate() if t.name == "tether-io"]
    assert io and all(t.is_alive() for t in io)
    assert client.send("still here").result(timeout=5) is None
    assert server.wait_for_data(1, timeout=5)


@pytest.mark.timeout(30)
def test_a_final_auth_refusal_is_one_error_event(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(require_auth=True)
    # Already expired: the server says ok:false to the token and to a fresh one.
    client = make_client(server.url, auth=Auth(lambda: mint_token("late", ttl=-60.0)))
    errors = Recorder()
    client.on("error", errors)
    closed = threading.Event()
    client.on("state_change", lambda e: closed.set() if e.current == "closed" else None)
    with pytest.raises(AuthError, match="refused"):
        client.connect(wait=True, timeout=10)
    assert closed.wait(10)
    client.close(timeout=3)  # the dispatcher has handed over every event by now
    events: List[ErrorEvent] = errors.snapshot()
    refusals = [e.error for e in events if isinstance(e.error, AuthError)]
    assert len(refusals) == 1, [repr(e) for e in refusals]
    assert "refused the token, and a fresh token too" in str(refusals[0])
