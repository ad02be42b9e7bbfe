"""Tokens, tether:auth, and require_auth mode (reference bug S1 not copied)."""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest
from freezegun import freeze_time

from tether_sync.server import decode_token, is_token_valid, mint_token, token_expiry_ms

REFERENCE_TOKEN = "eyJzdWIiOiJkZW1vLXVzZXIiLCJleHAiOjE3OTU2NDI3NjM4MjR9"


def _b64(claims: object, *, urlsafe: bool = False, pad: bool = True) -> str:
    raw = json.dumps(claims, separators=(",", ":")).encode()
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return text if pad else text.rstrip("=")


# Tokens


def test_mint_token_matches_the_reference_bytes():
    assert mint_token("demo-user", ttl=0.0, now=1795642763.824) == REFERENCE_TOKEN
    assert decode_token(REFERENCE_TOKEN) == {"sub": "demo-user", "exp": 1795642763824}
    assert token_expiry_ms(REFERENCE_TOKEN) == 1795642763824


def test_mint_token_ttl_is_seconds():
    token = mint_token(sub="alice", ttl=10.0, now=1000.0)
    assert decode_token(token) == {"sub": "alice", "exp": 1010000}
    assert is_token_valid(token, now=1009.999)
    assert not is_token_valid(token, now=1010.0)


def test_decode_accepts_unpadded_and_urlsafe():
    # "?>" in the sub makes the standard and URL-safe alphabets differ.
    claims = {"sub": "a?>b", "exp": 1}
    for urlsafe in (False, True):
        for pad in (False, True):
            assert decode_token(_b64(claims, urlsafe=urlsafe, pad=pad)) == claims


@pytest.mark.parametrize(
    "token",
    [
        "not-base64!!",
        "",
        None,
        123,
        {},
        True,
        _b64({"exp": 99999999999999}),  # no sub (S3)
        _b64({"sub": 5, "exp": 99999999999999}),
        _b64({"sub": "x"}),
        _b64({"sub": "x", "exp": "99999999999999"}),
        _b64({"sub": "x", "exp": True}),
        _b64([1, 2]),
        base64.b64encode(b'{"sub":"x","exp":Infinity}').decode(),
        base64.b64encode(b"\xff\xfe").decode(),
        base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode(),  # too deep to parse
        "a",
    ],
)
def test_decode_rejects_bad_tokens(token):
    assert decode_token(token) is None
    assert not is_token_valid(token)


def test_validity_follows_the_wall_clock():
    with freeze_time("2030-01-01 00:00:00") as frozen:
        token = mint_token(ttl=60.0)
        assert is_token_valid(token)
        frozen.tick(59.9)
        assert is_token_valid(token)
        frozen.tick(0.1)
        assert not is_token_valid(token)


# tether:auth


def _auth(client, token):
    client.send_json({"type": "tether:auth", "token": token})
    return client.recv_json()


def test_auth_reply_ok_true_or_false(tether_server, connect):
    client = connect(tether_server.url)
    assert _auth(client, mint_token()) == {"type": "tether:auth-ok", "ok": True}
    assert _auth(client, mint_token(ttl=-1.0)) == {"type": "tether:auth-ok", "ok": False}
    assert _auth(client, "not-base64!!") == {"type": "tether:auth-ok", "ok": False}
    assert _auth(client, 123) == {"type": "tether:auth-ok", "ok": False}
    client.send_json({"type": "tether:auth"})
    assert client.recv_json() == {"type": "tether:auth-ok", "ok": False}


def test_server_records_each_presented_token(tether_server, connect):
    client = connect(tether_server.url)
    first, second = mint_token(sub="a"), mint_token(sub="b", ttl=600)
    assert _auth(client, first)["ok"] is True
    conn = tether_server.connections[0]
    assert conn.token == first and conn.auth_sub == "a" and conn.authenticated
    assert _auth(client, second)["ok"] is True
    assert conn.tokens == [first, second]
    assert conn.token == second and conn.auth_sub == "b"
    assert conn.auth_expires_at == decode_token(second)["exp"]
    assert [r.message["token"] for r in tether_server.received(type="tether:auth")] == [
        first,
        second,
    ]
    assert first not in repr(conn)


def test_auth_is_advisory_without_require_auth(tether_server, connect):
    client = connect(tether_server.url)
    client.send_json({"channel": "c", "type": "data", "payload": 1, "id": "d1"})
    assert client.recv_json()["id"] == "d1"
    assert _auth(client, "bad")["ok"] is False
    client.send_json({"channel": "c", "type": "data", "payload": 2, "id": "d2"})
    assert client.recv_json()["id"] == "d2"


def test_require_auth_refuses_data_and_subscribe_until_authenticated(make_server, connect):
    server = make_server(require_auth=True)
    client = connect(server.url)
    client.send_json({"channel": "c", "type": "data", "payload": 1, "id": "d1"})
    assert client.recv_text() == '{"type":"tether:error","error":"auth required","id":"d1"}'
    client.send_json({"channel": "c", "type": "data", "payload": 1})
    assert client.recv_json() == {"type": "tether:error", "error": "auth required"}
    client.send_json({"channel": "c", "type": "subscribe", "id": "s1"})
    assert client.recv_json() == {"type": "tether:error", "error": "auth required", "id": "s1"}
    conn = server.connections[0]
    assert conn.subscriptions == frozenset()
    # Pings, controls and auth work without a token.
    client.send_json({"type": "tether:ping", "ts": 1})
    assert client.recv_json() == {"type": "tether:pong", "ts": 1}
    client.send_json({"type": "tether:control", "action": "flood", "count": 1})
    assert client.recv_json()["type"] == "tether:control-ack"
    assert client.recv_json()["id"] == "flood-0"
    assert _auth(client, "garbage")["ok"] is False
    client.send_json({"channel": "c", "type": "data", "payload": 2, "id": "d2"})
    assert client.recv_json()["type"] == "tether:error"

    assert _auth(client, mint_token())["ok"] is True
    client.send_json({"channel": "c", "type": "data", "payload": 3, "id": "d3"})
    assert client.recv_json() == {"channel": "c", "type": "data", "payload": 3, "id": "d3"}
    client.send_json({"channel": "c", "type": "subscribe", "id": "s2"})
    assert client.barrier() == []
    assert conn.subscriptions == {"c"}

    assert server.data_payloads() == [3]
    assert server.data_payloads(include_refused=True) == [1, 1, 2, 3]
    assert [r.refused for r in server.received(type="data")] == [True, True, True, False]


def test_require_auth_lets_auth_then_data_sent_back_to_back_through(make_server, connect):
    server = make_server(require_auth=True)
    client = connect(server.url)
    client.send_json({"type": "tether:auth", "token": mint_token()})
    client.send_json({"channel": "c", "type": "data", "payload": 1, "id": "d1"})
    assert client.recv_json() == {"type": "tether:auth-ok", "ok": True}
    assert client.recv_json()["id"] == "d1"


def test_token_expiring_mid_session_refuses_next_data(make_server, connect):
    server = make_server(require_auth=True)
    client = connect(server.url)
    # real_asyncio keeps the server loop's monotonic clock real; only wall time moves.
    with freeze_time("2030-01-01 00:00:00", tick=True, real_asyncio=True) as frozen:
        assert _auth(client, mint_token(ttl=60.0))["ok"] is True
        client.send_json({"channel": "c", "type": "data", "payload": 1, "id": "d1"})
        assert client.recv_json()["id"] == "d1"
        conn = server.connections[0]
        assert conn.authenticated

        frozen.tick(61.0)
        assert not conn.authenticated
        client.send_json({"channel": "c", "type": "data", "payload": 2, "id": "d2"})
        assert client.recv_json() == {"type": "tether:error", "error": "auth required", "id": "d2"}

        # Presenting an expired token keeps (makes) the connection unauthenticated.
        expired = mint_token(ttl=-1.0)
        assert _auth(client, expired)["ok"] is False
        assert conn.token == expired and conn.auth_sub is None
        # A fresh token fixes it, and the server sees the new token.
        fresh = mint_token(ttl=60.0)
        assert _auth(client, fresh)["ok"] is True
        assert conn.token == fresh
        client.send_json({"channel": "c", "type": "data", "payload": 3, "id": "d3"})
        assert client.recv_json()["id"] == "d3"


def test_failed_reauth_drops_a_still_valid_session(make_server, connect):
    server = make_server(require_auth=True)
    client = connect(server.url)
    assert _auth(client, mint_token())["ok"] is True
    assert _auth(client, mint_token(now=time.time() - 1000))["ok"] is False
    client.send_json({"channel": "c", "type": "data", "payload": 1, "id": "d1"})
    assert client.recv_json()["type"] == "tether:error"


def test_tokens_never_reach_the_log(make_server, connect, caplog):
    caplog.set_level(logging.DEBUG)
    server = make_server(require_auth=True)
    client = connect(server.url)
    good, bad = mint_token(sub="log-test"), mint_token(ttl=-5)
    assert _auth(client, good)["ok"] is True
    assert _auth(client, bad)["ok"] is False
    client.send_json({"channel": "c", "type": "data", "payload": good})
    client.barrier()
    client.close()
    assert server.wait_for(lambda: server.connection_count == 0)
    assert "auth ok" in caplog.text  # the server does log auth outcomes...
    assert good not in caplog.text and bad not in caplog.text  # ...never the token
