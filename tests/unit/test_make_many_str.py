"""``send_many()``'s str payloads skip the JSON encoder's wrapper: same bytes (issue 22)."""

from __future__ import annotations

from typing import Any, List

import pytest

from tether_sync import TetherClient
from tether_sync.protocol.envelope import encode_data


class Text(str):
    """A str subclass: it takes the encoder's general path."""


STRINGS: List[Any] = [
    "",
    "plain",
    "\x00\x01\x1f\x7f\t\n\r\b\f",
    '"\\/',
    "é ✓ 通道 \u2028\u2029 😀",
    "null",
    Text("sub"),
]


def test_str_payloads_encode_exactly_as_encode_data() -> None:
    client = TetherClient("ws://127.0.0.1:9/")
    try:
        ids: List[str] = []
        made = client._make_many(STRINGS, "ch", ids)
        assert [d._data for d in made] == [
            encode_data("ch", p, i).encode() for p, i in zip(STRINGS, ids)
        ]
    finally:
        client.close(timeout=1)


def test_a_lone_surrogate_fails_as_send_would() -> None:
    client = TetherClient("ws://127.0.0.1:9/")
    try:
        with pytest.raises(UnicodeEncodeError):
            encode_data("ch", "\ud800", "x").encode()
        with pytest.raises(UnicodeEncodeError):
            client._make_many(["ok", "\ud800"], "ch", None)
    finally:
        client.close(timeout=1)
