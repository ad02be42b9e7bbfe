"""Tokens: fetched on the helper thread, refreshed on the engine's clock, refused twice ends.

``get_token()`` is user code that may block (an HTTP request): it never runs on
the I/O thread. The refresh is due ``refresh_before`` seconds before the token
expires, on the clock the client was given.
"""

from __future__ import annotations

import threading
from typing import List

import pytest
from engine.rig import WAIT, Driven, Rig, ServerEnd
from websocket import WebSocketBadStatusException

from tether_sync import Auth, AuthError, ConnectTimeout, Reconnect
from tether_sync.state import State

pytestmark = pytest.mark.timeout(30)


class Tokens:
    """A token source that records where it ran."""

    def __init__(self) -> None:
        self.threads: List[str] = []
        self._lock = threading.Lock()  # guards threads

    def __call__(self) -> str:
        with self._lock:
            self.threads.append(threading.current_thread().name)
            return f"token-{len(self.threads)}"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.threads)


def open_with_auth(rig: Rig, tokens: Tokens, **options: object) -> tuple[Driven, ServerEnd]:
    auth = Auth(get_token=tokens, token_ttl=300.0, refresh_before=60.0)
    d = rig.client(protocol="tether", auth=auth, **options)
    d.client.connect()
    server = rig.dialing.next().accept()
    server.hello_ok()
    d.events.wait_for("open")
    return d, server


def test_the_token_is_fetched_off_the_io_thread_and_refreshed_before_it_expires(
    rig: Rig,
) -> None:
    tokens = Tokens()
    d, server = open_with_auth(rig, tokens)
    assert server.tokens == ["token-1"]
    assert d.client.stats().auth_refreshes == 1
    # Valid for 300 s (no exp in it): the refresh is due 60 s before that.
    rig.clock.advance(239.9)
    d.sync()
    assert tokens.calls == 1
    rig.clock.advance(0.1)
    refresh = server.read_json()
    assert refresh == {"type": "tether:auth", "token": "token-2"}
    server.send_json({"type": "tether:auth-ok", "ok": True})
    d.events.wait_for("auth_refreshed", 2)
    assert d.client.stats().auth_refreshes == 2
    assert "tether-io" not in tokens.threads
    assert d.client.state is State.OPEN and rig.dialing.count == 1


def test_refresh_auth_returns_once_the_server_accepted_the_new_token(rig: Rig) -> None:
    tokens = Tokens()
    d, server = open_with_auth(rig, tokens)
    done = threading.Event()
    refreshing = threading.Thread(
        target=lambda: (d.client.refresh_auth(timeout=WAIT), done.set()), daemon=True
    )
    refreshing.start()
    assert server.read_json() == {"type": "tether:auth", "token": "token-2"}
    d.sync()
    assert not done.is_set()  # not before the server's answer
    server.send_json({"type": "tether:auth-ok", "ok": True})
    assert done.wait(WAIT)
    refreshing.join(WAIT)


def test_a_token_refused_twice_ends_the_client_with_an_auth_error(rig: Rig) -> None:
    tokens = Tokens()
    auth = Auth(get_token=tokens, token_ttl=300.0)
    d = rig.client(protocol="tether", auth=auth, reconnect=Reconnect(base_delay=1.0))
    d.client.connect()
    server = rig.dialing.next().accept()
    server.hello_ok(auth_ok=False)
    # One fresh token on the same link, then final.
    assert server.read_json() == {"type": "tether:auth", "token": "token-2"}
    server.send_json({"type": "tether:auth-ok", "ok": False})
    _, close = server.read_until_close()
    assert (close.close_code, close.payload[2:]) == (1008, b"Auth refused")
    server.close_with(1008)
    d.events.wait_for("state_change", where=lambda e: e.current == "closed")
    errors = [e.error for e in d.events.of("error")]
    assert any(isinstance(e, AuthError) for e in errors), errors
    assert tokens.calls == 2
    assert rig.dialing.count == 1


def test_a_get_token_that_hangs_is_named_by_the_connect_timeout(rig: Rig) -> None:
    release = threading.Event()

    def get_token() -> str:
        release.wait(WAIT)
        return "late"

    auth = Auth(get_token=get_token, timeout=30.0)
    d = rig.client(
        protocol="tether", auth=auth, connect_timeout=5.0, reconnect=Reconnect(base_delay=1.0)
    )
    try:
        d.client.connect()
        server = rig.dialing.next().accept()
        assert server.read_json()["type"] == "tether:hello"
        server.send_json(
            {
                "type": "tether:hello-ok",
                "session": d.client.stats().session_id,
                "features": ["ack", "resume"],
                "acked": 0,
            }
        )
        d.sync()
        rig.clock.advance(5.0)
        retry = d.events.wait_for("reconnecting")
        assert isinstance(retry.cause, ConnectTimeout)
        assert "waiting for the token (get_token())" in str(retry.cause)
    finally:
        release.set()


def test_a_handshake_refused_with_401_twice_ends_the_client(rig: Rig) -> None:
    tokens = Tokens()
    auth = Auth(get_token=tokens)
    d = rig.client(protocol="tether", auth=auth, reconnect=Reconnect(base_delay=1.0))
    d.client.connect()
    rig.dialing.next().fail(WebSocketBadStatusException("Handshake status 401", 401))
    retry = d.events.wait_for("reconnecting")  # one more try, with a fresh token
    rig.clock.advance(retry.delay)
    rig.dialing.next().fail(WebSocketBadStatusException("Handshake status 401", 401))
    d.events.wait_for("state_change", where=lambda e: e.current == "closed")
    error = d.events.of("error")[-1].error
    assert isinstance(error, AuthError)
    assert "refused the handshake with HTTP 401, twice" in str(error)
    rig.clock.advance(3600)
    assert rig.dialing.count == 2
