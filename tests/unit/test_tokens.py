"""Token expiry (tether_sync.protocol.token_expiry): JWT ``exp`` (s), Tether tokens (ms)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Dict

import pytest
from freezegun import freeze_time

from tether_sync.protocol.token_expiry import (
    MIN_REFRESH_INTERVAL,
    expires_at,
    refresh_at,
    token_expiry,
)

NOW = "2030-01-01T00:00:00Z"
NOW_S = 1893456000.0  # NOW as seconds since the epoch


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def jwt(claims: Dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{b64url(b'not-a-real-signature')}"


def tether_token(claims: Dict[str, Any]) -> str:
    """The reference demo token: standard, padded base64 of the JSON claims."""
    return base64.b64encode(json.dumps(claims).encode()).decode()


def test_now_constant_matches_freezegun() -> None:
    with freeze_time(NOW):
        assert time.time() == NOW_S


# -- JWT: exp in seconds -----------------------------------------------------------


def test_jwt_exp_in_seconds() -> None:
    assert token_expiry(jwt({"sub": "u", "exp": 1893459600})) == 1893459600.0


def test_jwt_float_exp() -> None:
    assert token_expiry(jwt({"exp": 1893459600.5})) == 1893459600.5


def test_jwt_exp_above_1e11_is_taken_as_milliseconds() -> None:
    assert token_expiry(jwt({"exp": 1893459600123})) == pytest.approx(1893459600.123)
    # Right at the threshold it is still seconds.
    assert token_expiry(jwt({"exp": 100_000_000_000})) == 1e11


def test_jwt_with_padding_and_whitespace_still_parses() -> None:
    header, payload, sig = jwt({"exp": 1893459600}).split(".")
    padded = payload + "=" * (-len(payload) % 4)
    assert token_expiry(f"{header}.{padded}.{sig}") == 1893459600.0
    assert token_expiry(f"{header}.{payload}.{sig}\n") == 1893459600.0


def test_jwt_with_real_world_shape() -> None:
    # A jwt.io-style sample, {"sub": "1234567890", "exp": 1516239022}; the signature is
    # not checked (the server does that).
    token = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwiZXhwIjoxNTE2MjM5MDIyfQ."
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
    assert token_expiry(token) == 1516239022.0


# -- Tether demo token: base64 JSON, exp in milliseconds ------------------------------


def test_tether_token_exp_in_milliseconds() -> None:
    # The literal token from TETHER-WIRE.md: {"sub":"demo-user","exp":1795642763824}.
    assert token_expiry("eyJzdWIiOiJkZW1vLXVzZXIiLCJleHAiOjE3OTU2NDI3NjM4MjR9") == (
        pytest.approx(1795642763.824)
    )
    assert token_expiry(tether_token({"sub": "u", "exp": 1893459600000})) == 1893459600.0


def test_tether_token_unpadded() -> None:
    token = tether_token({"sub": "demo", "exp": 1893459600000})
    assert token.endswith("="), "pick claims whose encoding is padded"
    assert token_expiry(token.rstrip("=")) == 1893459600.0


def test_tether_token_urlsafe_alphabet() -> None:
    # Find claims whose standard base64 uses '+' or '/', then send the urlsafe form.
    for n in range(1000):
        claims = {"sub": "\u00ff" * (n % 7) + "?>" * (n % 5), "exp": 1893459600000 + n}
        raw = json.dumps(claims).encode()
        standard = base64.b64encode(raw).decode()
        if "+" in standard or "/" in standard:
            break
    else:  # pragma: no cover
        pytest.fail("no claims found that use + or /")
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    assert urlsafe != standard
    assert token_expiry(standard) == claims["exp"] / 1000
    assert token_expiry(urlsafe) == claims["exp"] / 1000
    assert token_expiry(urlsafe.rstrip("=")) == claims["exp"] / 1000


def test_tether_token_small_exp_is_still_milliseconds() -> None:
    # The format says ms: an exp that looks like seconds is a 1970 expiry.
    assert token_expiry(tether_token({"sub": "u", "exp": 1893459600})) == pytest.approx(1893459.6)


# -- garbage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "   ",
        "not-base64!!",
        "opaque-session-token",
        "a.b.c",
        "a.b",
        "a.b.c.d.e",
        "....",
        "=",
        "A",
        "\u00e9\u00e9\u00e9\u00e9",
        base64.b64encode(b"not json at all").decode(),
        base64.b64encode(b"[1, 2, 3]").decode(),
        base64.b64encode(b'"exp"').decode(),
        base64.b64encode(b"\xff\xfe\x00garbage").decode(),
        tether_token({"sub": "u"}),
        tether_token({"sub": "u", "exp": None}),
        tether_token({"sub": "u", "exp": "1893459600000"}),
        tether_token({"sub": "u", "exp": True}),
        tether_token({"sub": "u", "exp": [1]}),
        base64.b64encode(b'{"exp": NaN}').decode(),
        base64.b64encode(b'{"exp": Infinity}').decode(),
        jwt({"sub": "u"}),
        jwt({"exp": "soon"}),
        jwt({"exp": False}),
        "header." + b64url(b"not json") + ".sig",
        "header." + b64url(b"[1]") + ".sig",
    ],
)
def test_garbage_gives_none(token: str) -> None:
    assert token_expiry(token) is None


@pytest.mark.parametrize("token", [None, 123, b"eyJleHAiOjF9", {"exp": 1}])
def test_non_string_gives_none(token: Any) -> None:
    assert token_expiry(token) is None


def test_deeply_nested_claims_give_none() -> None:
    nested = b"[" * 100_000
    assert token_expiry(base64.b64encode(nested).decode()) is None
    assert token_expiry(f"h.{b64url(nested)}.s") is None


# -- expires_at / refresh_at (wall time) ------------------------------------------------


def test_expires_at_uses_the_token_exp_when_present() -> None:
    with freeze_time(NOW):
        token = jwt({"exp": int(time.time()) + 3600})
        assert expires_at(token, time.time(), 300.0) == NOW_S + 3600
        ms_token = tether_token({"sub": "u", "exp": int(time.time() * 1000) + 90_000})
        assert expires_at(ms_token, time.time(), 300.0) == NOW_S + 90


def test_expires_at_falls_back_to_ttl() -> None:
    with freeze_time(NOW):
        assert expires_at("opaque-token", time.time(), 300.0) == NOW_S + 300
        assert expires_at(jwt({"sub": "no-exp"}), time.time(), 12.5) == NOW_S + 12.5


def test_refresh_at_is_refresh_before_ahead_of_expiry() -> None:
    with freeze_time(NOW):
        exp = token_expiry(jwt({"exp": int(time.time()) + 3600}))
        assert exp is not None
        assert refresh_at(exp, 60.0, time.time()) == NOW_S + 3600 - 60


def test_refresh_at_short_lived_token_refreshes_half_way() -> None:
    with freeze_time(NOW):
        now = time.time()
        # 30 s left but refresh_before is 60 s: refresh at half the remaining life.
        assert refresh_at(now + 30, 60.0, now) == now + 15
        # Exactly refresh_before left: the refresh point is now, so half-way too.
        assert refresh_at(now + 60, 60.0, now) == now + 30


def test_min_refresh_interval_is_one_second() -> None:
    assert MIN_REFRESH_INTERVAL == 1.0


def test_refresh_at_expired_token_waits_the_minimum_interval() -> None:
    with freeze_time(NOW):
        now = time.time()
        # Already expired: no tight loop of rotations, the floor applies.
        assert refresh_at(now - 100, 60.0, now) == now + MIN_REFRESH_INTERVAL
        assert refresh_at(now, 0.0, now) == now + MIN_REFRESH_INTERVAL


def test_refresh_at_half_way_is_floored_at_the_minimum_interval() -> None:
    with freeze_time(NOW):
        now = time.time()
        # 1.5 s left: half-way would be 0.75 s from now, below the 1 s floor.
        assert refresh_at(now + 1.5, 60.0, now) == now + MIN_REFRESH_INTERVAL
        # 3 s left: half-way (1.5 s) is above the floor and wins.
        assert refresh_at(now + 3.0, 60.0, now) == now + 1.5


def test_refresh_at_moves_with_frozen_time() -> None:
    with freeze_time(NOW) as frozen:
        exp = time.time() + 100
        assert refresh_at(exp, 10.0, time.time()) == exp - 10
        frozen.tick(95)
        now = time.time()
        assert now == NOW_S + 95
        assert refresh_at(exp, 10.0, now) == now + 2.5
        frozen.tick(10)
        now = time.time()
        assert now > exp
        assert refresh_at(exp, 10.0, now) == now + MIN_REFRESH_INTERVAL


def test_refresh_at_with_zero_refresh_before_is_the_expiry() -> None:
    with freeze_time(NOW):
        now = time.time()
        assert refresh_at(now + 10, 0.0, now) == now + 10
