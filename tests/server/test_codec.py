"""The server's JSON codec: encode_parsed() writes what encode() writes, faster."""

from __future__ import annotations

from typing import Any

import pytest

from tether_sync.server.codec import encode, encode_parsed, parse_json

VALUES = [
    {"channel": "c", "type": "data", "payload": "0123456789abcdef" * 4, "id": "m-1"},
    {"channel": "c", "type": "data", "payload": {"a": [1, 2.5, None, True, False, {}]}},
    {"payload": "é ü 日本", "id": 7},  # non-ASCII stays as is
    {"payload": "\ud800"},  # a lone surrogate: \u escapes
    {"payload": [1e400, {"x": float("-inf")}]},  # infinity: null, as JSON.stringify
    [1, "two", [3]],
    "text",
    10**30,
    1.0,
    None,
]


@pytest.mark.parametrize("value", VALUES)
def test_encode_parsed_writes_what_encode_writes(value: Any) -> None:
    assert encode_parsed(value) == encode(value)


def test_encode_parsed_of_a_parsed_frame_round_trips() -> None:
    text = '{"channel":"c","type":"data","payload":{"n":1,"s":"\\u00e9"},"id":"x"}'
    message, is_json = parse_json(text)
    assert is_json
    expected = '{"channel":"c","type":"data","payload":{"n":1,"s":"é"},"id":"x"}'
    assert encode_parsed(message) == expected
