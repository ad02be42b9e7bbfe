"""The hub's sans-I/O ``ServerProtocol``: frames in, events out (DESIGN §3, §5 rules 1-2, 7)."""

from __future__ import annotations

import json
from typing import Any, List

from tether_sync.server.hub import (
    Auth,
    Deliver,
    Hello,
    Send,
    ServerProtocol,
    Subscribe,
    Unsubscribe,
)


def _sent(events: List[Any]) -> List[Any]:
    return [json.loads(e.text) for e in events if isinstance(e, Send)]


def test_hello_as_first_frame_grants_the_intersection_in_the_clients_order() -> None:
    proto = ServerProtocol()
    events = proto.receive('{"type":"tether:hello","session":"s","features":["resume","x","ack"]}')
    assert events == [Hello("s")]
    assert json.loads(proto.hello_ok(7).text) == {
        "type": "tether:hello-ok",
        "session": "s",
        "features": ["resume", "ack"],
        "acked": 7,
    }
    assert proto.ack_on and proto.resume_on


def test_a_hello_that_is_not_first_or_has_a_bad_session_gets_an_error() -> None:
    late = ServerProtocol()
    late.receive('{"type":"tether:ping"}')
    assert _sent(late.receive('{"type":"tether:hello","session":"s","id":"h"}')) == [
        {"type": "tether:error", "error": "hello must be the first frame", "id": "h"}
    ]
    bad = ServerProtocol()
    assert _sent(bad.receive(json.dumps({"type": "tether:hello", "session": "x" * 65}))) == [
        {"type": "tether:error", "error": "hello needs a session id of 1 to 64 characters"}
    ]
    assert late.session is None and bad.session is None


def test_seq_counts_only_on_an_ack_connection() -> None:
    plain = ServerProtocol()
    [event] = plain.receive('{"channel":"c","type":"data","payload":1,"seq":3}')
    assert isinstance(event, Deliver) and event.message.seq is None  # rule 7
    acked = ServerProtocol()
    acked.receive('{"type":"tether:hello","session":"s","features":["ack"]}')
    acked.hello_ok(0)
    for raw, seq in (('"seq":3', 3), ('"seq":true', None), ('"seq":2.0', None), ('"seq":0', None)):
        [event] = acked.receive('{"channel":"c","type":"data","payload":1,' + raw + "}")
        assert isinstance(event, Deliver) and event.message.seq == seq


def test_subscribe_answers_only_on_resume_connections() -> None:
    proto = ServerProtocol()
    assert proto.receive('{"channel":"n","type":"subscribe","epoch":"e","offset":2}') == [
        Subscribe("n", "e", 2, False)
    ]
    assert proto.receive('{"channel":"n","type":"unsubscribe"}') == [Unsubscribe("n")]
    assert proto.receive('{"channel":5,"type":"subscribe"}') == []


def test_with_auth_required_data_waits_for_an_accepted_token() -> None:
    now = [1000.0]
    proto = ServerProtocol(require_auth=True, now=lambda: now[0])
    assert _sent(proto.receive('{"channel":"c","type":"data","payload":1,"id":"d1"}')) == [
        {"type": "tether:error", "error": "auth required", "id": "d1"}
    ]
    assert proto.receive('{"type":"tether:auth","token":"t"}') == [Auth("t")]
    assert json.loads(proto.auth_result(1010.0).text) == {"type": "tether:auth-ok", "ok": True}
    assert isinstance(proto.receive('{"channel":"c","type":"data"}')[0], Deliver)
    now[0] = 1011.0  # the token expired
    assert _sent(proto.receive('{"channel":"c","type":"data"}'))[0]["type"] == "tether:error"
    assert json.loads(proto.auth_result(False).text)["ok"] is False


def test_what_is_not_a_known_message_is_ignored() -> None:
    proto = ServerProtocol()
    for raw in ("not json", "null", "[1]", "{}", '{"type":"bogus"}', '{"channel":"c","type":"x"}'):
        assert proto.receive(raw) == []
    assert _sent(proto.receive('{"type":"tether:ping","ts":"abc"}')) == [
        {"type": "tether:pong", "ts": "abc"}
    ]
