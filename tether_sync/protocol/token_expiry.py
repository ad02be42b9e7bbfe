"""Token expiry, from the token itself when it says. Pure: time is passed in.

Two formats carry an expiry that tether_sync reads (without verifying anything:
the server does that):

* a JWT (``header.payload.signature``, base64url): ``exp`` in **seconds** since
  the epoch (RFC 7519 §4.1.4);
* a Tether demo token (one base64 blob of JSON ``{"sub", "exp"}``): ``exp`` in
  **milliseconds** since the epoch.

They are told apart by shape: three dot-separated parts make a JWT. As a safety
net, an ``exp`` above 10**11 is taken as milliseconds whatever the shape (10**11
seconds is the year 5138, 10**11 ms is 1973). Anything else, or a token without
a usable ``exp``, is assumed valid for ``token_ttl`` seconds from the fetch.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Optional

_MS_THRESHOLD = 1e11


def b64decode_lenient(text: str) -> Optional[bytes]:
    """Base64 as Node's ``Buffer.from(s, "base64")`` reads it, or None.

    Both alphabets (standard and URL-safe), with or without padding, whitespace
    ignored: the reference server accepts all of these, and so do we.
    """
    text = "".join(text.split()).replace("-", "+").replace("_", "/").rstrip("=")
    if not text or len(text) % 4 == 1:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _claims(raw: Optional[bytes]) -> Optional[dict[str, Any]]:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or absurdly deeply nested
        return None
    return value if isinstance(value, dict) else None


def token_expiry(token: str) -> Optional[float]:
    """The expiry the token carries, in wall-clock seconds since the epoch, or None."""
    if not isinstance(token, str):
        return None
    parts = token.split(".")
    if len(parts) == 3:
        claims = _claims(b64decode_lenient(parts[1]))
        in_ms = False
    else:
        claims = _claims(b64decode_lenient(token))
        in_ms = True
    if claims is None:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    if in_ms or exp > _MS_THRESHOLD:
        return exp / 1000.0
    return float(exp)


def expires_at(token: str, fetched_at: float, token_ttl: float) -> float:
    """When ``token`` expires: its own ``exp``, else ``fetched_at + token_ttl``."""
    exp = token_expiry(token)
    return exp if exp is not None else fetched_at + token_ttl


MIN_REFRESH_INTERVAL = 1.0
"""Seconds: no token is rotated sooner than this after the previous one, whatever
its expiry says (an already-expired token must not cause a fetch storm)."""


def refresh_at(expiry: float, refresh_before: float, now: float) -> float:
    """Wall-clock time at which to rotate: ``refresh_before`` ahead of expiry.

    For a token that lives shorter than ``refresh_before``, half-way through its
    remaining life; and never sooner than :data:`MIN_REFRESH_INTERVAL` from ``now``,
    so a short-lived or expired token is not rotated in a tight loop.
    """
    at = expiry - refresh_before
    if at <= now:
        at = now + max(0.0, expiry - now) / 2
    return max(at, now + MIN_REFRESH_INTERVAL)
