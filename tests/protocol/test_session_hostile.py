"""Crash values in every field of every inbound message type, in every phase.

NaN, infinities, 1e999 (valid JSON that parses as infinity), lone surrogates,
huge integers, deep nesting and wrong types: the session never raises, and a
server ping is always answered with a pong that is valid UTF-8 and strict JSON.
The link stays usable, unless the value is a lie DESIGN §5 rule 12 forbids (an
ack, ``hello-ok``, ``subscribed`` or envelope position it can check): then the
link fails with 1002 and a ``ProtocolError``, and nothing is acked by it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import pytest
from protocol.sessionkit import FakeClock, Peer, data_msg, open_peer, pong_for, server_frame

from tether_sync.exceptions import ProtocolError
from tether_sync.protocol import frames
from tether_sync.protocol.session import Acked, Closed, Phase, Position, Problem

HOSTILE = {
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "1e999": "1e999",
    "-1e999": "-1e999",
    "1e-999": "1e-999",
    "float-overflow-digits": "1" + "0" * 400 + ".0",
    "lone-high-surrogate": '"\\ud800"',
    "lone-low-surrogates": '"\\udfff\\ud800"',
    "nul": '"\\u0000"',
    "digits-5000": "1" * 5000,  # past int_max_str_digits: not even JSON to Python
    "digits-4000": "7" * 4000,  # parses, a huge int
    "10**5000-ish": "-" + "9" * 5000,
    "2**64": str(2**64),
    "-1": "-1",
    "0": "0",
    "-0": "-0",
    "1.5": "1.5",
    "true": "true",
    "false": "false",
    "null": "null",
    "empty-string": '""',
    "string": '"x"',
    "long-string": '"' + "y" * 100_000 + '"',
    "list": "[1,2]",
    "empty-list": "[]",
    "dict": '{"a":1}',
    "empty-dict": "{}",
    "nested-900": "[" * 900 + "]" * 900,
    "nested-dict-900": '{"a":' * 900 + "1" + "}" * 900,
    "nested-100000": "[" * 100_000 + "]" * 100_000,  # RecursionError in json
    "features-with-nan": '["ack", NaN]',
    "features-nested": '[["ack"],{"resume":1}]',
    "type-name": '"tether:ping"',
    "list-of-surrogates": '["\\ud800"]',
}

MESSAGES: Dict[str, Dict[str, Any]] = {
    "tether:ping": {"ts": 1},
    "tether:pong": {"ts": 1},
    "tether:auth-ok": {"ok": True},
    "tether:error": {"error": "no", "id": "m-target"},
    "data": {"channel": "chat", "payload": 1, "id": "x", "offset": 5, "epoch": "e"},
    "tether:hello-ok": {"session": "sid-1", "features": ["ack", "resume"], "acked": 0},
    "tether:ack": {"seq": 1},
    "tether:subscribed": {"channel": "chat", "recovered": False, "epoch": "e", "offset": 3},
    "tether:control-ack": {"action": "flood"},
}

CASES = [(kind, field) for kind, fields in MESSAGES.items() for field in ("type", *fields, "extra")]


def build(kind: str, field: str, raw: str) -> bytes:
    """The message with ``field`` set to the raw JSON text ``raw`` (``extra``: a new key)."""
    parts = ['"type":' + (raw if field == "type" else json.dumps(kind))]
    for key, value in MESSAGES[kind].items():
        parts.append(json.dumps(key) + ":" + (raw if key == field else json.dumps(value)))
    if field == "extra":
        parts.append('"extra":' + raw)
    return ("{" + ",".join(parts) + "}").encode()


def strict_json(payload: bytes) -> Any:
    def no_constant(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(payload.decode("utf-8"), parse_constant=no_constant)


def setup(clock: FakeClock, phase: str) -> Peer:
    """A link in ``phase``, with something to ack, refuse and resume."""
    if phase == "open":
        peer = open_peer(clock, heartbeat=(1.0, 1.0), subscriptions=["chat"])
        peer.session.send([data_msg("q", msg_id="m-target"), data_msg("r")])
        peer.pump()
        peer.session.continuity.positions["chat"] = Position("e", 2)
        peer.session.subscribe("chat", "again")  # asks to resume
        peer.pump()
        return peer
    if phase == "hello":
        return Peer(clock, heartbeat=(1.0, 1.0)).start()
    peer = Peer(clock, auth=True, heartbeat=(1.0, 1.0)).start()
    peer.session.token_ready("tok", None, clock.now)
    peer.pump()
    return peer


def _parsed(raw: str) -> Tuple[bool, Any]:
    try:
        return True, json.loads(raw)
    except (ValueError, RecursionError):
        return False, None


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64


def is_lie(kind: str, field: str, raw: str, phase: str) -> bool:
    """Whether rule 12 makes this message a violation in ``phase`` (see :func:`setup`).

    Acks count once ``ack`` is granted (open; two messages numbered), ``hello-ok``
    while it decides the extension (hello, auth), envelope positions once
    ``resume`` is granted (open), ``subscribed`` always.
    """
    ok, value = _parsed(raw)
    if field in ("type", "extra") or not ok:
        return False  # another message type, or no JSON at all: no §5 claim
    msg = {**MESSAGES[kind], field: value}
    if kind == "tether:ack":
        return phase == "open" and not (_is_int(msg["seq"]) and 0 <= msg["seq"] <= 2)
    if kind == "tether:hello-ok":
        features = msg["features"]
        valid = (
            msg["session"] == "sid-1"  # the session the hello named (rule 12)
            and type(features) is list
            and all(isinstance(f, str) for f in features)
            and _is_int(msg["acked"])
            and msg["acked"] == 0
        )
        return phase != "open" and not valid
    if kind == "tether:subscribed":
        return not (
            isinstance(msg["channel"], str)
            and type(msg["recovered"]) is bool
            and _is_id(msg["epoch"])
            and _is_int(msg["offset"])
            and msg["offset"] >= 0
        )
    if kind == "data":
        if phase != "open" or msg["offset"] is None:
            return False
        epoch_ok = msg["epoch"] is None or _is_id(msg["epoch"])
        return not (_is_int(msg["offset"]) and msg["offset"] >= 1 and epoch_ok)
    return False


def check_failed_for_the_lie(peer: Peer) -> None:
    """Rule 12: close 1002, one ProtocolError, nothing resolved, no pong after it."""
    assert peer.session.phase in (Phase.CLOSING, Phase.CLOSED), peer.log
    assert [f.close_code for f in peer.close_frames()] == [1002], peer.log
    problems = [e.error for e in peer.of(Problem)]
    assert len(problems) == 1 and isinstance(problems[0], ProtocolError), peer.log
    assert problems[0].close_code == 1002
    assert peer.of(Acked) == []


def check_alive_and_pongs(peer: Peer) -> None:
    for frame in peer.frames:
        if frame.opcode == frames.OP_TEXT:
            strict_json(frame.payload)
    if peer.session.phase in (Phase.CLOSING, Phase.CLOSED):
        # Only auth (two refusals) or a rule 12 lie may end the link; never a crash.
        codes = [f.close_code for f in peer.close_frames()]
        assert codes in ([1008], [1002]), peer.log
        if codes == [1002]:
            assert any(isinstance(p.error, ProtocolError) for p in peer.of(Problem)), peer.log
        assert all(c.code == codes[0] for c in peer.of(Closed))
        return
    peer.take()
    peer.feed(server_frame(frames.OP_TEXT, b'{"type":"tether:ping","ts":7}'))
    pongs = [f for f in peer.take() if f.opcode == frames.OP_TEXT]
    assert [strict_json(f.payload) for f in pongs] == [{"type": "tether:pong", "ts": 7}]


@pytest.mark.parametrize("phase", ["hello", "auth", "open"])
@pytest.mark.parametrize("kind, field", CASES, ids=[f"{k}.{f}" for k, f in CASES])
def test_crash_values_in_every_field_never_raise(
    clock: FakeClock, phase: str, kind: str, field: str
) -> None:
    for name, raw in HOSTILE.items():
        peer = setup(clock, phase)
        body = build(kind, field, raw)
        frame = server_frame(frames.OP_TEXT, body)
        try:
            peer.feed(frame)
            if phase == "open":
                # Also as binary (JSON-carrying binary frames are decoded too), and bytewise.
                peer.feed(server_frame(frames.OP_BINARY, body))
                if len(frame) < 200:
                    peer.feed(*(frame[i : i + 1] for i in range(len(frame))))
            peer.advance(0.5, answer=None)
            if is_lie(kind, field, raw, phase):
                check_failed_for_the_lie(peer)
            else:
                check_alive_and_pongs(peer)
                assert not peer.of(Problem) or kind == "tether:error", peer.log
        except AssertionError:
            raise
        except Exception as exc:  # pragma: no cover - the failure message
            raise AssertionError(f"{kind}.{field} = {name} in {phase}: {exc!r}") from exc


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_ping_with_any_ts_gets_a_strict_json_pong(clock: FakeClock, name: str) -> None:
    peer = open_peer(clock)
    peer.take()
    raw = HOSTILE[name]
    peer.feed(server_frame(frames.OP_TEXT, ('{"type":"tether:ping","ts":' + raw + "}").encode()))
    out = [f for f in peer.take() if f.opcode == frames.OP_TEXT]
    if name in ("digits-5000", "10**5000-ish", "nested-100000"):
        # Not JSON to Python's parser at all: the text goes to the message stream.
        assert out == []
        return
    (pong,) = out
    msg = strict_json(pong.payload)
    assert msg["type"] == "tether:pong"
    expected = json.loads(raw)
    try:
        json.dumps(expected, allow_nan=False)
        representable = expected is not None
    except ValueError:
        representable = False  # NaN or an infinity, maybe nested: no JSON can carry it
    if representable:
        assert msg["ts"] == expected
    else:
        assert "ts" not in msg


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"",
        b"[]",
        b"null",
        b"NaN",
        b"1e999",
        b'"\\ud800"',
        b"{" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        "\u20ac\U0001f600".encode(),
    ],
)
def test_text_that_is_no_tether_message_goes_to_the_message_stream(
    clock: FakeClock, payload: bytes
) -> None:
    from tether_sync.protocol.session import Received

    peer = open_peer(clock)
    peer.feed(server_frame(frames.OP_TEXT, payload))
    events: List[Any] = peer.of(Received)
    assert len(events) == 1 and [c for c, _ in events[0].items] == [None]
    assert peer.session.is_open


@pytest.mark.parametrize("phase", ["hello", "auth", "open"])
def test_random_garbage_json_never_raises(clock: FakeClock, phase: str) -> None:
    import random

    rnd = random.Random(phase)
    keys = ["type", "ts", "ok", "id", "error", "channel", "payload", "offset", "epoch", "seq"]
    keys += ["features", "acked", "session", "recovered"]
    types = [*MESSAGES, "subscribe", "tether:hello", "tether:auth"]
    values = list(HOSTILE.values())
    values = [v for v in values if len(v) < 10_000]
    for _ in range(100):
        peer = setup(clock, phase)
        for _ in range(5):
            fields = {k: rnd.choice(values) for k in rnd.sample(keys, rnd.randint(0, 6))}
            if rnd.random() < 0.8:
                fields["type"] = json.dumps(rnd.choice(types))
            body = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"
            peer.feed(server_frame(frames.OP_TEXT, body.encode()))
        peer.advance(rnd.random() * 3, answer=pong_for)
        check_alive_and_pongs(peer)
