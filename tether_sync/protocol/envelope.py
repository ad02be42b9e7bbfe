"""The Tether wire codec (DESIGN §3): envelopes to text and back.

Pure: no I/O, no threads. ``decode`` never raises; whatever it does not know
comes back as :class:`Unknown`, so a strange frame never kills a connection.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Union

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
#: Parses one frame's JSON text (the session's hot path calls it, then :func:`classify`).
loads = json.loads
#: What :data:`loads` raises for text that is no JSON: JSONDecodeError and
#: UnicodeDecodeError are ValueErrors; absurdly deep nesting exhausts the
#: recursion limit of json's C decoder.
DECODE_ERRORS = (ValueError, RecursionError)


def encode_json(value: Any) -> str:
    """Compact JSON text for any payload, as every encoding here makes it.

    Raises:
        TypeError, ValueError: not JSON-serialisable (NaN and infinities included).
    """
    return _encode(value)


_DATA_PREFIX: dict[str, str] = {}  # channel -> '{"channel":<json>,"type":"data","payload":'


def encode_data(channel: str, payload: Any, msg_id: str) -> str:
    """A data envelope, keys in the reference order channel, type, payload, id.

    The text is exactly what encoding the dict would give, built from pieces:
    the encoder is several times faster on the bare payload than on the
    four-key dict, and the channel's prefix is the same for every message.

    Raises:
        TypeError, ValueError: if the payload is not JSON-serialisable.
    """
    prefix = _DATA_PREFIX.get(channel)
    if prefix is None:
        if len(_DATA_PREFIX) >= 4096:
            _DATA_PREFIX.clear()  # bounded: many one-off channels must not grow it
        prefix = _DATA_PREFIX[channel] = (
            '{"channel":' + _encode(channel) + ',"type":"data","payload":'
        )
    return prefix + _encode(payload) + ',"id":' + _encode(msg_id) + "}"


def encode_subscription(channel: str, action: str, msg_id: str) -> str:
    """A ``subscribe`` or ``unsubscribe`` envelope."""
    return _encode({"channel": channel, "type": action, "id": msg_id})


def encode_auth(token: str) -> str:
    """``tether:auth``. The result contains the token: never log it."""
    return _encode({"type": "tether:auth", "token": token})


def encode_ping(ts: int) -> str:
    return _encode({"type": "tether:ping", "ts": ts})


def encode_pong(ts: Any) -> str:
    """The answer to a server's ``tether:ping``; ``ts`` is echoed as given."""
    if ts is None:
        return '{"type":"tether:pong"}'
    return _encode({"type": "tether:pong", "ts": ts})


class Data:
    """An inbound data envelope."""

    __slots__ = ("channel", "epoch", "id", "offset", "payload")

    def __init__(
        self, channel: Any, payload: Any, msg_id: Any, offset: Any = None, epoch: Any = None
    ) -> None:
        self.channel = channel
        self.payload = payload
        self.id = msg_id
        self.offset = offset  # DESIGN §5 resume: position in the channel's history
        self.epoch = epoch


class AuthOk:
    """``tether:auth-ok``; ``ok`` is True only for a literal JSON ``true``."""

    __slots__ = ("ok",)

    def __init__(self, ok: bool) -> None:
        self.ok = ok


class Ping:
    __slots__ = ("ts",)

    def __init__(self, ts: Any) -> None:
        self.ts = ts


class Pong:
    __slots__ = ("ts",)

    def __init__(self, ts: Any) -> None:
        self.ts = ts


class ServerErrorMsg:
    """``tether:error``: the server refused one of our messages."""

    __slots__ = ("error", "id")

    def __init__(self, error: str, msg_id: Optional[str]) -> None:
        self.error = error
        self.id = msg_id


class Unknown:
    """Anything else: non-JSON text, JSON that is no known message, control acks.

    ``value`` is the parsed JSON when it parsed, else the text unchanged.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


Inbound = Union[Data, AuthOk, Ping, Pong, ServerErrorMsg, Unknown]


def decode(text: Union[str, bytes]) -> Inbound:
    """Classify one inbound text (or JSON-carrying binary) frame. Never raises."""
    try:
        msg = loads(text)
    except DECODE_ERRORS:
        return Unknown(text)
    return classify(msg)


def classify(msg: Any) -> Inbound:
    """Classify one frame's parsed JSON (what :func:`decode` does after parsing)."""
    if type(msg) is not dict:
        return Unknown(msg)
    kind = msg.get("type")
    if kind == "data" and "channel" in msg:
        return Data(
            msg["channel"], msg.get("payload"), msg.get("id"), msg.get("offset"), msg.get("epoch")
        )
    if kind == "tether:pong":
        return Pong(msg.get("ts"))
    if kind == "tether:ping":
        return Ping(msg.get("ts"))
    if kind == "tether:auth-ok":
        return AuthOk(msg.get("ok") is True)
    if kind == "tether:error":
        err = msg.get("error")
        mid = msg.get("id")
        return ServerErrorMsg(str(err), mid if isinstance(mid, str) else None)
    return Unknown(msg)
