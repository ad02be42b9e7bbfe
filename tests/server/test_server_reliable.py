"""The bundled server's reliable-sessions extension (DESIGN §5), scripted on the raw wire."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List, Optional

import pytest
import websocket

from tether_sync.server import TetherServer, mint_token
from tether_sync.server import bundled as server_bundled

NO_REPLY_WINDOW = 0.15  # how long "no reply" is watched for (3x the ack deadline)


class FakeClock:
    """A monotonic clock the test moves by hand (session expiry, history age)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hello(client: Any, sid: str, features: Any = ("ack", "resume"), **extra: Any) -> Any:
    message: Dict[str, Any] = {"type": "tether:hello", "session": sid, **extra}
    if features is not None:
        message["features"] = list(features)
    client.send_json(message)
    return client.recv_json()


def data(seq: Optional[int], payload: Any, channel: str = "c", **extra: Any) -> Dict[str, Any]:
    message: Dict[str, Any] = {"channel": channel, "type": "data", "payload": payload, **extra}
    message.setdefault("id", f"m-{payload}")
    if seq is not None:
        message["seq"] = seq
    return message


def collect_until_ack(client: Any, seq: int, timeout: float = 5.0) -> List[Any]:
    """Everything received up to and including the first ack covering ``seq``."""
    seen: List[Any] = []
    while True:
        message = client.recv_json(timeout)
        seen.append(message)
        if message.get("type") == "tether:ack" and message["seq"] >= seq:
            return seen


def assert_silent(client: Any, window: float = NO_REPLY_WINDOW) -> None:
    """Nothing at all arrives within ``window`` (an ack would, within 50 ms)."""
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.recv_text(timeout=window)


# Negotiation (rules 1-2)


@pytest.mark.parametrize(
    ("asked", "granted"),
    [
        (["ack", "resume"], ["ack", "resume"]),
        (["resume", "ack"], ["resume", "ack"]),
        (["ack"], ["ack"]),
        (["resume"], ["resume"]),
        (["ack", "compress", 3, "ack"], ["ack"]),
        ([], []),
        (None, []),  # no features key at all
        ("ack", []),  # not a list
    ],
)
def test_hello_ok_grants_the_intersection(tether_server, connect, asked, granted):
    client = connect(tether_server.url)
    assert hello(client, "s-1", asked) == {
        "type": "tether:hello-ok",
        "session": "s-1",
        "features": granted,
        "acked": 0,
    }
    conn = tether_server.connections[0]
    assert conn.session == "s-1"
    assert conn.features == frozenset(granted)


def test_hello_ok_comes_before_any_later_frame_is_answered(tether_server, connect):
    client = connect(tether_server.url)
    client.send_json({"type": "tether:hello", "session": "s", "features": ["ack"]})
    client.send_json({"type": "tether:ping", "ts": 1})
    assert client.recv_json()["type"] == "tether:hello-ok"
    assert client.recv_json() == {"type": "tether:pong", "ts": 1}


@pytest.mark.parametrize("session", ["", "x" * 65, 42, None, ["s"]])
def test_hello_with_a_bad_session_is_refused_and_changes_nothing(tether_server, connect, session):
    client = connect(tether_server.url)
    client.send_json({"type": "tether:hello", "session": session, "features": ["ack"], "id": "h"})
    error = client.recv_json()
    assert error["type"] == "tether:error" and error["id"] == "h"
    # Not a session: seq is ignored (echo twice, no ack), and a hello is no longer first.
    client.send_json(data(1, "a"))
    client.send_json(data(1, "a"))
    assert client.barrier() == [data(None, "a", id="m-a")] * 2
    assert tether_server.connections[0].session is None
    assert hello(client, "late")["type"] == "tether:error"
    assert tether_server.sessions == {}


def test_session_of_64_characters_is_accepted(tether_server, connect):
    client = connect(tether_server.url)
    assert hello(client, "x" * 64)["type"] == "tether:hello-ok"


def test_hello_after_the_first_frame_is_refused(tether_server, connect):
    client = connect(tether_server.url)
    client.send("not json")  # any frame counts as the first
    reply = hello(client, "s")
    assert reply["type"] == "tether:error" and "first" in reply["error"]
    assert tether_server.connections[0].session is None
    # A second hello after an accepted one is refused too, and keeps the first.
    other = connect(tether_server.url)
    assert hello(other, "s2")["type"] == "tether:hello-ok"
    assert hello(other, "s3")["type"] == "tether:error"
    assert tether_server.connections[1].session == "s2"


# Acks and dedupe (rules 5-7)


def test_ack_follows_within_50_ms_and_after_the_echo(tether_server, connect):
    client = connect(tether_server.url)
    hello(client, "s", ["ack"])
    for seq in (1, 2, 3):
        started = time.monotonic()
        client.send_json(data(seq, seq))
        assert client.recv_json() == data(None, seq)  # the echo, without seq
        assert client.recv_json() == {"type": "tether:ack", "seq": seq}
        assert time.monotonic() - started <= 0.05


def test_ack_goes_at_once_at_64_unacked(tether_server, connect, monkeypatch):
    # With the timer pushed far out, only the count can make an ack go.
    monkeypatch.setattr(server_bundled, "ACK_DELAY", 30.0)
    client = connect(tether_server.url)
    hello(client, "s", ["ack"])
    for seq in range(1, 64):
        client.send_json(data(seq, seq))
    seen = client.barrier()
    assert [m["payload"] for m in seen] == list(range(1, 64))  # 63: no ack yet
    client.send_json(data(64, 64))
    assert client.recv_json() == data(None, 64)
    assert client.recv_json() == {"type": "tether:ack", "seq": 64}


def test_acks_are_cumulative_over_a_burst(tether_server, connect):
    client = connect(tether_server.url)
    hello(client, "s", ["ack"])
    for seq in range(1, 301):
        client.send_json(data(seq, seq))
    seen = collect_until_ack(client, 300)
    acks = [m["seq"] for m in seen if m["type"] == "tether:ack"]
    assert acks == sorted(acks) and acks[-1] == 300
    assert len(acks) <= 300 // 64 + 5
    assert [m["payload"] for m in seen if m["type"] == "data"] == list(range(1, 301))


def test_resend_after_reconnect_is_acked_not_delivered(tether_server, connect):
    first = connect(tether_server.url)
    assert hello(first, "sid-r")["acked"] == 0
    for seq in range(1, 6):
        first.send_json(data(seq, seq))
    collect_until_ack(first, 5)
    first.ws.shutdown()  # an abrupt end, no close handshake

    second = connect(tether_server.url)
    assert hello(second, "sid-r")["acked"] == 5
    for seq in range(1, 9):  # resend 1..5, then new 6..8
        second.send_json(data(seq, seq))
    seen = collect_until_ack(second, 8)
    assert [m["payload"] for m in seen if m["type"] == "data"] == [6, 7, 8]
    assert tether_server.data_payloads() == list(range(1, 9))
    assert tether_server.duplicates_dropped == 5
    assert len(tether_server.data_payloads(include_duplicates=True)) == 13
    assert tether_server.session_acked("sid-r") == 8
    dupes = [r for r in tether_server.received(type="data") if r.duplicate]
    assert [r.seq for r in dupes] == [1, 2, 3, 4, 5]
    assert {r.session for r in dupes} == {"sid-r"}


def test_gaps_are_allowed_and_lower_seqs_are_duplicates(tether_server, connect):
    client = connect(tether_server.url)
    hello(client, "s", ["ack"])
    for seq in (10, 12, 11, 12, 13):
        client.send_json(data(seq, seq))
    seen = collect_until_ack(client, 13)
    assert [m["payload"] for m in seen if m["type"] == "data"] == [10, 12, 13]
    assert tether_server.duplicates_dropped == 2


def test_ack_on_one_connection_carries_the_session_wide_highest(tether_server, connect):
    old, new = connect(tether_server.url), connect(tether_server.url)
    hello(old, "shared", ["ack"])
    hello(new, "shared", ["ack"])
    old.send_json(data(7, "old"))
    collect_until_ack(old, 7)
    new.send_json(data(3, "dup"))
    assert new.recv_json() == {"type": "tether:ack", "seq": 7}


def test_data_without_seq_or_without_hello_is_plain_section_3(tether_server, connect):
    acking = connect(tether_server.url)
    hello(acking, "s", ["ack"])
    plain = connect(tether_server.url)
    for client in (acking, plain):
        for _ in range(2):
            client.send_json(data(None if client is acking else 1, "p"))
        assert [m["type"] for m in client.barrier()] == ["data", "data"]
        assert_silent(client)
    # seq true/1.5/"1"/0 is no seq either.
    for bad in (True, 1.5, "1", 0, -3):
        acking.send_json({"channel": "c", "type": "data", "payload": "x", "seq": bad})
    assert len(acking.barrier()) == 5
    assert_silent(acking)
    assert tether_server.duplicates_dropped == 0


def test_ack_without_resume_and_resume_without_ack(tether_server, connect):
    only_resume = connect(tether_server.url)
    hello(only_resume, "r", ["resume"])
    only_resume.send_json(data(1, "a"))
    only_resume.send_json(data(1, "a"))  # no ack feature: no dedupe
    assert len(only_resume.barrier()) == 2
    assert_silent(only_resume)
    only_resume.send_json({"channel": "n", "type": "subscribe", "id": "s"})
    assert only_resume.recv_json()["type"] == "tether:subscribed"

    only_ack = connect(tether_server.url)
    hello(only_ack, "a", ["ack"])
    only_ack.send_json({"channel": "n", "type": "subscribe", "id": "s"})
    assert only_ack.barrier() == []  # no tether:subscribed without resume
    tether_server.broadcast("n", 1)
    assert "offset" not in only_ack.recv_json()
    assert only_resume.recv_json()["offset"] == 1


def test_refused_data_does_not_raise_the_highest(make_server, connect):
    server = make_server(require_auth=True)
    client = connect(server.url)
    hello(client, "auth-s", ["ack"])
    client.send_json(data(1, "early"))
    assert client.recv_json() == {"type": "tether:error", "error": "auth required", "id": "m-early"}
    assert_silent(client)  # no ack for refused data
    assert server.session_acked("auth-s") == 0
    client.send_json({"type": "tether:auth", "token": mint_token(ttl=60)})
    assert client.recv_json() == {"type": "tether:auth-ok", "ok": True}
    client.send_json(data(1, "late"))  # the same seq, now accepted
    assert collect_until_ack(client, 1) == [data(None, "late"), {"type": "tether:ack", "seq": 1}]
    assert server.data_payloads() == ["late"]


def test_tunnelled_control_with_seq_runs_once_and_is_acked(tether_server, connect):
    client = connect(tether_server.url)
    hello(client, "t", ["ack"])
    control = {"type": "tether:control", "action": "flood", "count": 1}
    client.send_json({"channel": "c", "type": "data", "payload": control, "id": "t1", "seq": 1})
    seen = collect_until_ack(client, 1)
    assert seen[0] == {"type": "tether:control-ack", "action": "flood", "count": 1}
    assert seen[1]["channel"] == "flood"
    assert seen[-1] == {"type": "tether:ack", "seq": 1}
    client.send_json({"channel": "c", "type": "data", "payload": control, "id": "t1", "seq": 1})
    assert collect_until_ack(client, 1) == [{"type": "tether:ack", "seq": 1}]
    assert tether_server.duplicates_dropped == 1


def test_session_expires_ttl_after_its_last_connection(make_server, connect):
    clock = FakeClock()
    server = make_server(session_ttl=10.0, clock=clock)
    first = connect(server.url)
    hello(first, "ttl", ["ack"])
    for seq in (1, 2, 3):
        first.send_json(data(seq, seq))
    collect_until_ack(first, 3)
    keeper = connect(server.url)
    hello(keeper, "ttl", ["ack"])
    first.close()
    clock.now += 1000  # a session with a live connection never expires
    assert server.session_acked("ttl") == 3
    keeper.close()
    assert server.wait_for(lambda: server.connection_count == 0)
    clock.now += 9.9
    again = connect(server.url)
    assert hello(again, "ttl", ["ack"])["acked"] == 3
    again.close()
    assert server.wait_for(lambda: server.connection_count == 0)
    clock.now += 10.0
    assert server.sessions == {}
    fresh = connect(server.url)
    assert hello(fresh, "ttl", ["ack"])["acked"] == 0
    fresh.send_json(data(1, "one again"))
    assert collect_until_ack(fresh, 1)[0]["payload"] == "one again"  # delivered anew


def test_sessions_survive_restart_until_reset(make_server, connect):
    server = make_server()
    client = connect(server.url)
    hello(client, "keep", ["ack"])
    client.send_json(data(4, "x"))
    collect_until_ack(client, 4)
    server.restart()
    assert hello(connect(server.url), "keep", ["ack"])["acked"] == 4
    server.reset_sessions()
    assert hello(connect(server.url), "keep", ["ack"])["acked"] == 0


# History and resume (rule 9)


def subscribe(client: Any, channel: str, **position: Any) -> Any:
    client.send_json({"channel": channel, "type": "subscribe", "id": f"sub-{channel}", **position})
    return client.recv_json()


def test_subscribe_without_position_reports_the_current_one(tether_server, connect):
    client = connect(tether_server.url)
    hello(client, "r", ["resume"])
    answer = subscribe(client, "news")
    assert answer == {
        "type": "tether:subscribed",
        "channel": "news",
        "recovered": False,
        "epoch": answer["epoch"],
        "offset": 0,
    }
    assert isinstance(answer["epoch"], str) and answer["epoch"]
    for n in (1, 2, 3):
        assert tether_server.broadcast("news", n) == 1
    got = [client.recv_json() for _ in range(3)]
    assert [(m["payload"], m["offset"], m["epoch"]) for m in got] == [
        (n, n, answer["epoch"]) for n in (1, 2, 3)
    ]
    assert got[0]["id"] == "bc-1" and got[0]["type"] == "data"
    assert tether_server.channel_position("news") == (answer["epoch"], 3)


def test_resubscribe_recovers_what_was_missed_in_order(tether_server, connect):
    for n in range(1, 101):
        tether_server.broadcast("feed", n)  # kept with nobody subscribed
    epoch, newest = tether_server.channel_position("feed")
    assert newest == 100
    client = connect(tether_server.url)
    hello(client, "r", ["resume"])
    answer = subscribe(client, "feed", epoch=epoch, offset=0)
    assert answer["recovered"] is True and answer["offset"] == 0 and answer["epoch"] == epoch
    replay = [client.recv_json() for _ in range(100)]
    assert [m["offset"] for m in replay] == list(range(1, 101))
    assert [m["payload"] for m in replay] == list(range(1, 101))
    tether_server.broadcast("feed", "live")
    assert client.recv_json()["offset"] == 101
    # Caught up: asking at the newest is recovered with nothing to replay.
    other = connect(tether_server.url)
    hello(other, "r2", ["resume"])
    assert subscribe(other, "feed", epoch=epoch, offset=101)["recovered"] is True
    assert other.barrier() == []


@pytest.mark.parametrize(
    "position",
    [
        {"epoch": "other-epoch", "offset": 3},
        {"offset": 3},  # an offset without an epoch counts as another epoch
        {"epoch": "CURRENT"},  # no offset
        {"epoch": "CURRENT", "offset": 1},  # behind the history's bound
        {"epoch": "CURRENT", "offset": 99},  # ahead of the newest
        {"epoch": "CURRENT", "offset": "3"},
    ],
)
def test_unrecoverable_resubscribe_reports_the_newest(make_server, connect, position):
    server = make_server(history_size=2)
    for n in range(1, 6):
        server.broadcast("c", n)
    epoch, _ = server.channel_position("c")
    if position.get("epoch") == "CURRENT":
        position["epoch"] = epoch
    client = connect(server.url)
    hello(client, "r", ["resume"])
    assert subscribe(client, "c", **position) == {
        "type": "tether:subscribed",
        "channel": "c",
        "recovered": False,
        "epoch": epoch,
        "offset": 5,
    }
    assert client.barrier() == []  # no replay
    # Within the bound (offset 3: 4 and 5 kept) it recovers.
    again = connect(server.url)
    hello(again, "r2", ["resume"])
    assert subscribe(again, "c", epoch=epoch, offset=3)["recovered"] is True
    assert [m["offset"] for m in again.barrier()] == [4, 5]


def test_history_is_bounded_by_age(make_server, connect):
    clock = FakeClock()
    server = make_server(history_max_age=10.0, clock=clock)
    server.broadcast("c", "old")
    clock.now += 6
    server.broadcast("c", "new")
    clock.now += 5  # "old" is 11 s old, "new" 5 s
    epoch, _ = server.channel_position("c")
    client = connect(server.url)
    hello(client, "r", ["resume"])
    assert subscribe(client, "c", epoch=epoch, offset=0)["recovered"] is False
    assert subscribe(client, "c", epoch=epoch, offset=1)["recovered"] is True
    assert [m["payload"] for m in client.barrier()] == ["new"]


def test_restart_starts_a_new_epoch(make_server, connect):
    server = make_server()
    for n in (1, 2, 3):
        server.broadcast("c", n)
    old_epoch, _ = server.channel_position("c")
    server.restart()
    client = connect(server.url)
    hello(client, "r", ["resume"])
    answer = subscribe(client, "c", epoch=old_epoch, offset=3)
    assert answer["recovered"] is False and answer["offset"] == 0
    assert answer["epoch"] != old_epoch
    server.broadcast("c", "after")
    assert client.recv_json()["offset"] == 1


def test_replay_comes_before_live_envelopes_under_concurrent_publishing(tether_server, connect):
    for n in range(1, 201):
        tether_server.broadcast("race", n)
    epoch, _ = tether_server.channel_position("race")
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            tether_server.broadcast("race", "live")

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        client = connect(tether_server.url)
        hello(client, "r", ["resume"])
        answer = subscribe(client, "race", epoch=epoch, offset=50)
        assert answer["recovered"] is True and answer["offset"] == 50
        offsets = [client.recv_json()["offset"] for _ in range(400)]
    finally:
        stop.set()
        publisher.join(5)
    assert offsets == list(range(51, 451))


def test_subscribe_on_a_plain_connection_gets_plain_envelopes(tether_server, connect):
    client = connect(tether_server.url)
    client.send_json({"channel": "c", "type": "subscribe", "id": "s", "epoch": "e", "offset": 1})
    assert client.barrier() == []
    tether_server.broadcast("c", {"n": 1})
    assert client.recv_text() == '{"channel":"c","type":"data","payload":{"n":1},"id":"bc-1"}'


# Broadcast channels (rule 8)


def test_broadcast_mode_fans_out_and_replaces_the_echo(make_server, connect):
    server = make_server(broadcast=True)
    alice, bob, carol = (connect(server.url) for _ in range(3))
    for name, client in (("a", alice), ("b", bob), ("c", carol)):
        hello(client, name, ["ack", "resume"])
    assert subscribe(alice, "chat")["offset"] == 0
    assert subscribe(bob, "chat")["offset"] == 0

    alice.send_json(data(1, "hi", channel="chat", id="a1"))
    copy = {"channel": "chat", "type": "data", "payload": "hi", "id": "a1"}
    seen = collect_until_ack(alice, 1)
    assert seen == [
        {**copy, "offset": 1, "epoch": seen[0]["epoch"]},
        {"type": "tether:ack", "seq": 1},
    ]
    assert bob.recv_json() == seen[0]
    assert carol.barrier() == []

    # carol is not subscribed: she gets the plain echo, the others the copy.
    carol.send_json(data(1, "yo", channel="chat", id="c1"))
    plain = {"channel": "chat", "type": "data", "payload": "yo", "id": "c1"}
    assert collect_until_ack(carol, 1) == [plain, {"type": "tether:ack", "seq": 1}]
    assert alice.recv_json()["offset"] == 2
    assert bob.recv_json()["offset"] == 2

    # A resend is acked, not published again.
    alice.send_json(data(1, "hi", channel="chat", id="a1"))
    assert collect_until_ack(alice, 1) == [{"type": "tether:ack", "seq": 1}]
    assert bob.barrier() == []
    assert server.data_payloads("chat") == ["hi", "yo"]


def test_broadcast_copy_keeps_order_with_the_senders_replies(make_server, connect):
    server = make_server(broadcast=True)
    client = connect(server.url)
    client.send_json({"channel": "chat", "type": "subscribe", "id": "s"})
    for n in range(20):
        client.send_json(data(None, n, channel="chat"))
    # Plain connection: the copies carry no offset, and all come before the pong.
    assert client.barrier() == [data(None, n, channel="chat") for n in range(20)]


def test_without_broadcast_mode_data_is_only_echoed(tether_server, connect):
    sender, listener = connect(tether_server.url), connect(tether_server.url)
    listener.send_json({"channel": "chat", "type": "subscribe", "id": "s"})
    sender.send_json({"channel": "chat", "type": "subscribe", "id": "s"})
    sender.send_json(data(None, "x", channel="chat"))
    assert sender.barrier() == [data(None, "x", channel="chat")]
    assert listener.barrier() == []


# The extension switched off


def test_no_extensions_ignores_hello_seq_and_positions(make_server, connect):
    server = make_server(extensions=False, broadcast=True)
    client = connect(server.url)
    client.send_json({"type": "tether:hello", "session": "s", "features": ["ack", "resume"]})
    assert client.barrier() == []  # ignored silently, like any unknown type
    assert server.received(type="tether:hello")  # but recorded
    client.send_json({"channel": "c", "type": "subscribe", "id": "s", "epoch": "e", "offset": 0})
    client.send_json(data(1, "a"))
    client.send_json(data(1, "a"))
    assert client.barrier() == [data(None, "a")] * 2  # published copies, no offset
    assert_silent(client)
    server.broadcast("c", 1)
    assert "offset" not in client.recv_json()
    assert server.duplicates_dropped == 0 and server.sessions == {}


# Numbers (issue 13)


def test_overflowing_numbers_are_answered_without_a_traceback(tether_server, connect, caplog):
    client = connect(tether_server.url)
    client.send('{"channel":"c","type":"data","payload":{"big":1e400,"neg":-1e400},"id":"n"}')
    assert (
        client.recv_text()
        == '{"channel":"c","type":"data","payload":{"big":null,"neg":null},"id":"n"}'
    )
    client.send('{"type":"tether:ping","ts":1e400}')
    assert client.recv_text() == '{"type":"tether:pong","ts":null}'
    client.send('{"channel":"c","type":"data","payload":[1,-2,0,10000000000000000000000,1.5]}')
    assert (
        client.recv_text()
        == '{"channel":"c","type":"data","payload":[1,-2,0,10000000000000000000000,1.5]}'
    )
    assert not [r for r in caplog.records if r.levelno >= 40]  # nothing at ERROR


# Options


def test_compression_is_off_by_default_and_deflate_on_request(make_server):
    from websockets.sync.client import connect as ws_connect

    plain, deflating = make_server(), make_server(compression="deflate")
    with ws_connect(plain.url, compression="deflate") as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
    with ws_connect(deflating.url, compression="deflate") as ws:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        blob = {"channel": "c", "type": "data", "payload": "z" * 100_000}
        ws.send(json.dumps(blob))
        assert json.loads(ws.recv(timeout=5)) == blob


@pytest.mark.parametrize(
    "bad",
    [
        {"compression": "gzip"},
        {"session_ttl": -1},
        {"session_ttl": float("inf")},
        {"history_size": -1},
        {"history_size": 1.5},
        {"history_max_age": 0},
    ],
)
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TetherServer(**bad)
