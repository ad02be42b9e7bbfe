"""Tests of tether_sync.protocol.envelope: the Tether wire codec (DESIGN §3, TETHER-WIRE.md)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tether_sync.protocol import envelope
from tether_sync.protocol.envelope import (
    AuthOk,
    Data,
    Ping,
    Pong,
    ServerErrorMsg,
    Unknown,
    decode,
    encode_auth,
    encode_data,
    encode_ping,
    encode_pong,
    encode_subscription,
)

# -- encoding: byte-exact, as the reference server writes them ---------------------


def test_encode_data_exact_text_and_key_order() -> None:
    text = encode_data("chat", {"text": "hi", "n": 1}, "x")
    assert text == '{"channel":"chat","type":"data","payload":{"text":"hi","n":1},"id":"x"}'
    assert list(json.loads(text)) == ["channel", "type", "payload", "id"]


def test_encode_data_matches_the_reference_examples() -> None:
    assert (
        encode_data("default", "plain string", "5e325ff5")
        == '{"channel":"default","type":"data","payload":"plain string","id":"5e325ff5"}'
    )
    assert (
        encode_data("chat", {"q": 1}, "2b699095-6cf4-442d-8235-d6ca60fdbaa9")
        == '{"channel":"chat","type":"data","payload":{"q":1},'
        '"id":"2b699095-6cf4-442d-8235-d6ca60fdbaa9"}'
    )


@pytest.mark.parametrize(
    ("payload", "literal"),
    [
        (None, "null"),
        (True, "true"),
        (0, "0"),
        (1.5, "1.5"),
        ([1, "a", None], '[1,"a",null]'),
        ({}, "{}"),
        ("caf\u00e9 \u2603", '"caf\u00e9 \u2603"'),  # not \\u-escaped
        ('quote " and \\', '"quote \\" and \\\\"'),
    ],
)
def test_encode_data_payload_literals(payload: Any, literal: str) -> None:
    assert encode_data("c", payload, "i") == (
        '{"channel":"c","type":"data","payload":' + literal + ',"id":"i"}'
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"x": [math.nan]}])
def test_encode_data_refuses_non_finite_numbers(bad: Any) -> None:
    with pytest.raises(ValueError):
        encode_data("c", bad, "i")


@pytest.mark.parametrize("bad", [{1, 2}, object(), b"bytes", {"k": object()}])
def test_encode_data_refuses_non_json_payloads(bad: Any) -> None:
    with pytest.raises(TypeError):
        encode_data("c", bad, "i")


def test_encode_subscription_exact_text() -> None:
    assert (
        encode_subscription("chat", "subscribe", "s1")
        == '{"channel":"chat","type":"subscribe","id":"s1"}'
    )
    assert (
        encode_subscription("tmp", "unsubscribe", "u1")
        == '{"channel":"tmp","type":"unsubscribe","id":"u1"}'
    )


def test_encode_auth_exact_text() -> None:
    token = "eyJzdWIiOiJkZW1vLXVzZXIiLCJleHAiOjE3OTU2NDI3NjM4MjR9"
    assert encode_auth(token) == '{"type":"tether:auth","token":"' + token + '"}'


def test_encode_ping_and_pong_exact_text() -> None:
    assert encode_ping(1712345678901) == '{"type":"tether:ping","ts":1712345678901}'
    assert encode_pong(777) == '{"type":"tether:pong","ts":777}'
    assert encode_pong("abc") == '{"type":"tether:pong","ts":"abc"}'
    assert encode_pong(None) == '{"type":"tether:pong"}'


def test_encodings_decode_back() -> None:
    msg = decode(encode_data("chat", {"a": [1, 2]}, "id-1"))
    assert isinstance(msg, Data)
    assert (msg.channel, msg.payload, msg.id) == ("chat", {"a": [1, 2]}, "id-1")
    ping = decode(encode_ping(5))
    assert isinstance(ping, Ping) and ping.ts == 5
    pong = decode(encode_pong(6))
    assert isinstance(pong, Pong) and pong.ts == 6


# -- decoding -------------------------------------------------------------------


def test_decode_data() -> None:
    msg = decode('{"channel":"chat","type":"data","payload":{"text":"hi"},"id":"x"}')
    assert type(msg) is Data
    assert msg.channel == "chat" and msg.payload == {"text": "hi"} and msg.id == "x"


def test_decode_data_from_binary_frame() -> None:
    msg = decode(b'{"channel":"b","type":"data","payload":[1],"id":"y"}')
    assert type(msg) is Data
    assert (msg.channel, msg.payload, msg.id) == ("b", [1], "y")


def test_decode_data_without_payload_or_id() -> None:
    msg = decode('{"channel":"chat","type":"data"}')
    assert type(msg) is Data
    assert msg.payload is None and msg.id is None


def test_decode_data_with_null_channel_is_still_data() -> None:
    # The reference server echoes a null channel; "channel" in msg is the test.
    msg = decode('{"channel":null,"type":"data","payload":1,"id":"z"}')
    assert type(msg) is Data and msg.channel is None


def test_decode_data_without_channel_is_unknown() -> None:
    msg = decode('{"type":"data","payload":1}')
    assert type(msg) is Unknown
    assert msg.value == {"type": "data", "payload": 1}


def test_decode_ping_pong() -> None:
    ping = decode('{"type":"tether:ping","ts":777}')
    assert type(ping) is Ping and ping.ts == 777
    pong = decode('{"type":"tether:pong","ts":1712345678901}')
    assert type(pong) is Pong and pong.ts == 1712345678901
    bare = decode('{"type":"tether:pong"}')
    assert type(bare) is Pong and bare.ts is None
    text_ts = decode('{"type":"tether:pong","ts":"abc"}')
    assert type(text_ts) is Pong and text_ts.ts == "abc"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"type":"tether:auth-ok","ok":true}', True),
        ('{"type":"tether:auth-ok","ok":false}', False),
        ('{"type":"tether:auth-ok"}', False),
        ('{"type":"tether:auth-ok","ok":1}', False),
        ('{"type":"tether:auth-ok","ok":"true"}', False),
        ('{"type":"tether:auth-ok","ok":[true]}', False),
        ('{"type":"tether:auth-ok","ok":null}', False),
    ],
)
def test_decode_auth_ok_only_literal_true(text: str, ok: bool) -> None:
    msg = decode(text)
    assert type(msg) is AuthOk
    assert msg.ok is ok


def test_decode_server_error() -> None:
    msg = decode('{"type":"tether:error","error":"not authenticated","id":"m-1"}')
    assert type(msg) is ServerErrorMsg
    assert msg.error == "not authenticated" and msg.id == "m-1"
    no_id = decode('{"type":"tether:error","error":"nope"}')
    assert type(no_id) is ServerErrorMsg and no_id.id is None
    odd_id = decode('{"type":"tether:error","error":"nope","id":5}')
    assert type(odd_id) is ServerErrorMsg and odd_id.id is None
    assert isinstance(decode('{"type":"tether:error","error":7}').error, str)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text", ["not json", "", "{", '{"a":1', "\x00", "tether:ping", "{'type': 'data'}"]
)
def test_decode_non_json_is_unknown_with_the_text_unchanged(text: str) -> None:
    msg = decode(text)
    assert type(msg) is Unknown
    assert msg.value == text


def test_decode_invalid_utf8_binary_is_unknown() -> None:
    raw = b"\xff\xfe\xfa not utf-8"
    msg = decode(raw)
    assert type(msg) is Unknown and msg.value == raw


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("null", None),
        ("[1,2]", [1, 2]),
        ('"str"', "str"),
        ("42", 42),
        ("true", True),
    ],
)
def test_decode_non_object_is_unknown(text: str, value: Any) -> None:
    msg = decode(text)
    assert type(msg) is Unknown
    assert msg.value == value


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"type": "bogus"},
        {"type": "tether:control-ack", "action": "flood", "count": 500},
        {"type": "tether:control", "action": "force-close"},
        {"type": "tether:auth", "token": "t"},
        {"channel": "c", "type": "other"},
        {"channel": "c", "type": "subscribe", "id": "s"},
        {"type": None},
        {"type": ["data"], "channel": "c"},
        {"type": {"k": 1}},
        {"TYPE": "data", "channel": "c"},
    ],
)
def test_decode_unknown_objects_come_back_parsed(obj: Any) -> None:
    msg = decode(json.dumps(obj))
    assert type(msg) is Unknown
    assert msg.value == obj


def test_inbound_union_names_every_class() -> None:
    for cls in (Data, AuthOk, Ping, Pong, ServerErrorMsg, Unknown):
        assert cls in envelope.Inbound.__args__  # type: ignore[attr-defined]


def test_decode_never_raises_on_deeply_nested_json() -> None:
    for text in ("[" * 100_000, '{"type":"data","channel":"c","payload":' + "[" * 100_000):
        msg = decode(text)
        assert type(msg) is Unknown
