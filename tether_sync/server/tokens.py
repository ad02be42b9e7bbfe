"""Tether demo tokens: base64 of a JSON object ``{"sub": <str>, "exp": <ms since epoch>}``.

The reference server decodes tokens with Node's ``Buffer.from(token, "base64")``,
which also accepts unpadded and URL-safe input, so :func:`decode_token` does too.
Wall-clock time is read through :func:`time.time` at every check (never cached),
so tests can move it with freezegun.
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any, Dict, Optional

from ..protocol.token_expiry import b64decode_lenient

__all__ = ["decode_token", "is_token_valid", "mint_token", "now_ms", "token_expiry_ms"]


def now_ms() -> float:
    """Return the wall-clock time in milliseconds since the epoch, as token ``exp`` uses."""
    return time.time() * 1000.0


def mint_token(sub: str = "demo-user", ttl: float = 300.0, now: Optional[float] = None) -> str:
    """Mint a Tether demo token.

    Args:
        sub: The subject, stored as the ``sub`` claim.
        ttl: Lifetime in seconds from ``now``; negative values mint an expired token.
        now: Issue time in seconds since the epoch; defaults to :func:`time.time`.

    Returns:
        Standard (padded) base64 of the compact JSON claims, the same bytes the
        reference server's ``mock-auth`` produces.
    """
    issued = time.time() if now is None else now
    claims = {"sub": sub, "exp": round((issued + ttl) * 1000.0)}
    raw = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


def _reject_constant(name: str) -> Any:
    # JSON.parse refuses NaN/Infinity; accepting them would let a token live forever.
    raise ValueError(f"non-standard JSON constant {name}")


def decode_token(token: object) -> Optional[Dict[str, Any]]:
    """Decode a Tether demo token without checking its expiry.

    Args:
        token: Anything a client sent as ``token``.

    Returns:
        The claims dict when ``token`` is a string holding base64 of a JSON object
        with a string ``sub`` and a finite numeric ``exp``; ``None`` otherwise
        (bad base64, not JSON, missing or mistyped claims).
    """
    if not isinstance(token, str) or not token:
        return None
    raw = b64decode_lenient(token)
    if raw is None:
        return None
    try:
        claims = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError too
        # RecursionError: deeply nested JSON, which a hostile token can be.
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
        return None
    exp = claims.get("exp")
    # bool is an int subclass; ``true`` is not a timestamp.
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    return claims


def token_expiry_ms(token: object) -> Optional[float]:
    """Return the token's ``exp`` (ms since epoch), or ``None`` if it does not decode."""
    claims = decode_token(token)
    return None if claims is None else float(claims["exp"])


def is_token_valid(token: object, now: Optional[float] = None) -> bool:
    """Tell whether ``token`` decodes and has not expired.

    Args:
        token: The token to check.
        now: Time in seconds since the epoch; defaults to :func:`time.time`.

    Returns:
        ``True`` iff the token decodes and ``exp`` lies strictly after ``now``.
    """
    exp = token_expiry_ms(token)
    current = now_ms() if now is None else now * 1000.0
    return exp is not None and exp > current
