"""Reliable sessions (DESIGN §5) end to end: resume, acks, resends, and the fallback.

Against the bundled server: a subscriber cut off while its channel moves on gets
what it missed from the history (or a ``recovery`` event past the history's
bound); a Delivery is done only on the server's ack; unacked messages are resent
once after a reset; and against a server without the extension the client
behaves as before.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List

import pytest
from support.recorder import Recorder, eventually, wait_subscribed

from tether_sync import TetherClient
from tether_sync.events import RecoveryEvent  # not exported by tether_sync (yet)
from tether_sync.protocol.session import CLOSE_GRACE
from tether_sync.server import TetherServer

pytestmark = pytest.mark.timeout(30)

CHANNEL = "news"


def _subscribe_records(server: TetherServer, conn_id: int) -> List[Any]:
    return [r.message for r in server.received(conn_id, type="subscribe")]


def _new_connection(server: TetherServer, old_id: int) -> Any:
    assert server.wait_for(
        lambda: any(c.id != old_id and CHANNEL in c.subscriptions for c in server.connections),
        10,
    ), "the client did not come back and resubscribe"
    return next(c for c in server.connections if c.id != old_id)


# ---------------------------------------------------------------- resume


def _cut_off_while_published(
    server: TetherServer, make_client: Callable[..., TetherClient], count: int
) -> tuple[TetherClient, Any, Recorder, Any]:
    """A subscriber that saw one envelope, then misses ``count`` while blackholed, then is reset.

    Returns the client, its blocking subscription, its recovery events, and the
    server connection it had before the cut.
    """
    client = make_client(server.url)
    recoveries = Recorder()
    client.on("recovery", recoveries)
    inbox = client.subscribe(CHANNEL)
    client.connect(wait=True, timeout=5)
    assert wait_subscribed(server, CHANNEL)
    assert client.stats().extensions == ("ack", "resume")
    assert server.broadcast(CHANNEL, "before") == 1
    assert inbox.get(timeout=5) == "before"
    first = server.connections[0]
    # Cut off: the server neither reads nor writes the connection; what it
    # publishes now skips the subscriber and stays in the channel's history.
    server.blackhole(True)
    for n in range(count):
        assert server.broadcast(CHANNEL, n) == 0
    assert server.channel_position(CHANNEL)[1] == count + 1
    # Then the connection is reset: the client reconnects and resubscribes.
    server.blackhole(False, drop=True)
    return client, inbox, recoveries, first


def test_cut_off_subscriber_recovers_all_100_in_order(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(port=0)
    client, inbox, recoveries, first = _cut_off_while_published(server, make_client, 100)
    epoch, _ = server.channel_position(CHANNEL)
    assert [inbox.get(timeout=5) for _ in range(100)] == list(range(100))
    second = _new_connection(server, first.id)
    # It asked to resume after the one it had seen, and the server could (recovered true).
    (subscribe,) = _subscribe_records(server, second.id)
    assert (subscribe["epoch"], subscribe["offset"]) == (epoch, 1)
    # Live ones follow the replay, with nothing twice; no recovery event.
    assert server.broadcast(CHANNEL, "after") == 1
    assert inbox.get(timeout=5) == "after"
    assert recoveries.snapshot() == []
    assert client.stats().reconnects == 1


def test_cut_off_subscriber_recovers_what_a_broadcast_client_published(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(port=0, broadcast=True)
    subscriber = make_client(server.url)
    recoveries = Recorder()
    subscriber.on("recovery", recoveries)
    inbox = subscriber.subscribe(CHANNEL)
    subscriber.connect(wait=True, timeout=5)
    publisher = make_client(server.url)
    publisher.connect(wait=True, timeout=5)
    assert wait_subscribed(server, CHANNEL)
    assert publisher.send("before", channel=CHANNEL).result(timeout=5) is None
    assert inbox.get(timeout=5) == "before"
    (sub_conn,) = [c for c in server.connections if CHANNEL in c.subscriptions]
    # The subscriber's own connection only goes silent (the wire control acts on
    # the connection that sent it); the publisher's stays up.
    subscriber.send({"type": "tether:control", "action": "blackhole", "ms": 20000}, channel="ctl")
    assert server.wait_for(lambda: sub_conn.blackholed, 5)
    for n in range(100):
        publisher.send(n, channel=CHANNEL)
    assert publisher.flush(timeout=10) is True  # every one acked: accepted and published
    assert server.channel_position(CHANNEL)[1] == 101
    assert sub_conn.drop()
    assert [inbox.get(timeout=5) for _ in range(100)] == list(range(100))
    publisher.send("after", channel=CHANNEL)
    assert inbox.get(timeout=5) == "after"
    assert recoveries.snapshot() == []
    assert server.data_payloads(CHANNEL) == ["before", *range(100), "after"]


def test_past_the_history_bound_recovered_is_false_and_recovery_fires(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(port=0, history_size=10)
    _client, inbox, recoveries, _first = _cut_off_while_published(server, make_client, 100)
    assert recoveries.wait_count(1)
    (event,) = recoveries.snapshot()
    epoch, newest = server.channel_position(CHANNEL)
    assert isinstance(event, RecoveryEvent)
    assert event == RecoveryEvent(CHANNEL, False, epoch, newest)
    assert newest == 101
    # Nothing of the missed ones is replayed; live ones go on.
    assert server.broadcast(CHANNEL, "after") == 1
    assert inbox.get(timeout=5) == "after"
    assert recoveries.snapshot() == [event]


# ---------------------------------------------------------------- acks and resends


def test_a_delivery_is_done_only_on_the_servers_ack(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(port=0)
    client = make_client(server.url)
    client.connect(wait=True, timeout=5)
    server.set_latency(0.3)  # acks (like every reply) leave 0.3 s late
    delivery = client.send("late ack", channel="x")
    assert server.wait_for_data(1)
    # The server has it, its ack is not out yet: not done.
    assert not delivery.done()
    assert client.stats().unacked == 1
    assert delivery.result(timeout=5) is None
    stats = client.stats()
    assert (stats.unacked, stats.acked) == (0, 1)


def test_close_while_acks_are_pending_is_prompt_and_clean(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    # close() right after a burst of 1,000 (default options): it waits for the acks,
    # then the close handshake.
    # The close frame was framed after the iteration's write once the last ack came,
    # and sat unwritten until the 1 s close grace ran out: every such close() took
    # a second and ended unclean (1000, was_clean False), the server saw 1006.
    server = make_server(port=0)
    for round_ in range(3):
        client = make_client(server.url)
        closes = Recorder()
        client.on("close", closes)
        client.connect(wait=True, timeout=5)
        for k in range(1000):
            client.send(k, channel="x")
        began = time.monotonic()
        assert client.close(timeout=10)
        took = time.monotonic() - began
        assert client.stats().acked == 1000
        [event] = closes.snapshot()
        assert (event.code, event.was_clean) == (1000, True), round_
        # Generous: the bug cost the whole grace (1 s) every time.
        assert took < CLOSE_GRACE * 0.9, took
        conn = server.all_connections[-1]
        assert eventually(lambda c=conn: c.close_code is not None)
        assert conn.close_code == 1000


def test_unread_messages_are_resent_after_a_reset_and_delivered_once(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(port=0)
    client = make_client(server.url)
    client.connect(wait=True, timeout=5)
    for n in range(50):
        client.send(n, channel="x")
    assert client.flush(timeout=5) is True
    # The server stops reading: the next 50 sit in kernel buffers, unacked,
    # and the reset throws them away on the server's side.
    server.pause_reading(True)
    deliveries = [client.send(n, channel="x") for n in range(50, 100)]
    assert eventually(lambda: client.stats().unacked == 50)
    assert not any(d.done() for d in deliveries)
    server.drop_all()
    server.pause_reading(False)
    assert client.flush(timeout=10) is True
    assert all(d.done() and d.exception() is None for d in deliveries)
    assert server.data_payloads("x") == list(range(100))
    stats = client.stats()
    assert stats.resent == 50
    assert stats.acked == 100


def test_accepted_but_unacked_messages_are_resolved_by_hello_ok_not_resent(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(port=0)
    client = make_client(server.url)
    client.connect(wait=True, timeout=5)
    sid = client.stats().session_id
    server.set_latency(2.0)  # the acks would leave 2 s late
    deliveries = [client.send(n, channel="x") for n in range(100)]
    assert server.wait_for_data(100)
    assert server.session_acked(sid) == 100
    assert not any(d.done() for d in deliveries)
    server.drop_all()  # the acks waiting on the latency timer die with the connection
    server.set_latency(0)
    assert client.flush(timeout=10) is True
    assert all(d.exception() is None for d in deliveries)
    assert server.data_payloads("x") == list(range(100))
    assert server.duplicates_dropped == 0
    assert client.stats().resent == 0


# ---------------------------------------------------------------- without the extension


def test_without_the_extension_the_client_behaves_as_before(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(port=0, extensions=False)
    client = make_client(server.url)
    echoes = client.subscribe("echo")
    client.connect(wait=True, timeout=5)
    assert wait_subscribed(server, "echo")
    assert client.stats().extensions == ()
    # Echo.
    assert client.send({"hello": 1}, channel="echo").result(timeout=5) is None
    assert echoes.get(timeout=5) == {"hello": 1}
    # A Delivery is done once the kernel took the frame, not on an ack: with the
    # server's replies 0.5 s late it is done long before any reply could come.
    server.set_latency(0.5)
    assert client.send("quick", channel="echo").result(timeout=0.4) is None
    assert echoes.get(timeout=5) == "quick"
    server.set_latency(0)
    # Replay order after a reconnect: queued while down, sent in order after.
    server.stop()
    for n in range(30):
        client.send(n, channel="echo")
    server.start()
    assert client.flush(timeout=10) is True
    assert [echoes.get(timeout=5) for _ in range(30)] == list(range(30))
    assert server.data_payloads("echo") == [{"hello": 1}, "quick", *range(30)]
    # The hello went out (ignored), and the wire after it is plain §3: no seq.
    assert server.received(type="tether:hello")
    data = server.received(type="data")
    assert data and all("seq" not in r.message for r in data)
    stats = client.stats()
    assert (stats.extensions, stats.acked, stats.unacked, stats.resent) == ((), 0, 0, 0)
    assert client.close(timeout=5) is True


def test_recovery_event_is_exported_like_the_other_events() -> None:
    import tether_sync

    assert "RecoveryEvent" in tether_sync.__all__
    assert tether_sync.RecoveryEvent is RecoveryEvent
