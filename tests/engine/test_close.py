"""close() across the engine's states: it returns by its deadline and joins its threads.

``close(timeout)`` drains the queue (across reconnects) until the deadline, then
closes with 1000; whatever is left fails with ``ClientClosed`` and ``close()``
returns False. On the fake clock the deadline passes only when the test moves
time: before that, close() is still draining; after it, close() returns.
"""

from __future__ import annotations

import threading
from typing import List, Tuple

import pytest
from engine.rig import WAIT, Closing, Driven, Rig

from tether_sync import ClientClosed, Delivery, Reconnect
from tether_sync.engine import commands as cmd
from tether_sync.protocol import frames
from tether_sync.state import State

pytestmark = pytest.mark.timeout(30)


def test_close_while_connecting_aborts_the_attempt_and_returns_at_once(rig: Rig) -> None:
    d = rig.client(connect_timeout=30.0)
    d.client.connect()
    hanging = rig.dialing.next()  # a connect that never answers
    # Nothing queued: nothing to wait for, not even the fake clock.
    assert d.client.close(timeout=2.0) is True
    assert hanging.aborted
    assert d.client.state is State.CLOSED
    assert d.live_threads() == []
    rig.clock.advance(3600)
    assert rig.dialing.count == 1  # no attempt after close()


def test_close_while_connecting_lets_the_attempt_deliver_what_was_queued(rig: Rig) -> None:
    d = rig.client(connect_timeout=30.0)
    d.client.connect()
    attempt = rig.dialing.next()
    deliveries = [d.client.send(f"m{i}") for i in range(3)]
    closing = d.close_in_background(10.0)
    d.wait_handled(cmd.Close)
    assert not closing.done.is_set()  # draining: the attempt may still make it
    server = attempt.accept()
    assert server.read_text(3) == ["m0", "m1", "m2"]
    (close,) = server.read_frames()
    assert close.close_code == 1000
    server.close_with(1000)
    assert closing.wait() is True
    assert all(x.done() and x.exception() is None for x in deliveries)
    assert d.live_threads() == []


def test_close_while_connecting_with_queued_data_ends_at_its_deadline(rig: Rig) -> None:
    d = rig.client(connect_timeout=30.0)
    d.client.connect()
    hanging = rig.dialing.next()
    delivery = d.client.send("stuck")
    closing = d.close_in_background(10.0)  # drains until 9 s (1 s kept for the joins)
    d.wait_handled(cmd.Close)
    rig.clock.advance(8.999)
    d.sync()
    assert not closing.done.is_set()
    assert not hanging.ended.is_set()
    rig.clock.advance(0.001)
    assert closing.wait() is False  # a message was not sent
    with pytest.raises(ClientClosed, match="message not sent"):
        delivery.result(timeout=0)
    assert hanging.aborted
    assert d.live_threads() == []


def test_close_while_open_drains_the_queue_then_closes_with_1000(rig: Rig) -> None:
    d = rig.client()
    server = rig.connect(d)
    deliveries = [d.client.send("x" * 1000) for _ in range(50)]
    closing = d.close_in_background(5.0)
    got = server.read_frames(51)
    assert [f.opcode for f in got] == [frames.OP_TEXT] * 50 + [frames.OP_CLOSE]
    assert got[-1].close_code == 1000
    server.close_with(1000)
    assert closing.wait() is True
    assert all(x.done() and x.exception() is None for x in deliveries)
    close = d.events.wait_for("close")
    assert (close.code, close.was_clean) == (1000, True)
    assert d.live_threads() == []


def test_close_while_open_gives_a_silent_peer_one_second_of_grace(rig: Rig) -> None:
    d = rig.client()
    server = rig.connect(d)
    closing = d.close_in_background(5.0)
    (close,) = server.read_frames()
    assert close.close_code == 1000
    rig.clock.advance(0.999)
    d.sync()
    assert not closing.done.is_set()
    rig.clock.advance(0.001)
    assert closing.wait() is True  # nothing was lost: only the peer's answer
    assert d.events.wait_for("close").was_clean is False
    assert d.live_threads() == []


def test_close_while_open_with_a_peer_that_reads_nothing_ends_at_its_deadline(
    rig: Rig,
) -> None:
    # About 4 MB queued; the peer reads none of it: the kernel and the session fill up.
    d = rig.client()
    rig.connect(d)
    deliveries = [d.client.send("y" * 60_000) for _ in range(64)]
    closing = d.close_in_background(10.0)
    d.wait_handled(cmd.Close)
    rig.clock.advance(8.999)
    d.sync()
    assert not closing.done.is_set()
    rig.clock.advance(0.001)
    assert closing.wait() is False
    failed = [x for x in deliveries if x.exception() is not None]
    assert failed and all(isinstance(x.exception(), ClientClosed) for x in failed)
    assert d.client.stats().sent + len(failed) == 64
    assert d.client.state is State.CLOSED
    assert d.live_threads() == []


def test_close_while_reconnecting_cancels_the_next_attempt(rig: Rig) -> None:
    d = rig.client(reconnect=Reconnect(base_delay=4.0, max_delay=8.0))
    d.client.connect()
    rig.dialing.next().fail(ConnectionRefusedError(111, "refused"))
    d.events.wait_for("reconnecting")
    assert d.client.close(timeout=2.0) is True
    assert d.client.state is State.CLOSED
    rig.clock.advance(3600)
    assert rig.dialing.count == 1
    assert d.live_threads() == []


def test_a_link_lost_while_close_drains_is_retried_within_the_deadline(rig: Rig) -> None:
    # The drain goes on across reconnects: a retry planned while close() drains
    # waits at most half the time left (here 4.5 s, not the backoff's 60 s).
    d = rig.client(reconnect=Reconnect(base_delay=30.0, max_delay=60.0))
    server = rig.connect(d)
    # About 4 MB, more than the kernel takes (each below the size confirmed by a ping).
    deliveries = [d.client.send("z" * 60_000) for _ in range(64)]
    closing = d.close_in_background(10.0)
    d.wait_handled(cmd.Close)
    server.drop()
    retry = d.events.wait_for("reconnecting")
    assert retry.delay == 4.5
    rig.clock.advance(4.5)
    server = rig.dialing.next().accept()
    texts, close = server.read_until_close()
    assert close.close_code == 1000
    assert {f.opcode for f in texts} == {frames.OP_TEXT}
    server.close_with(1000)
    assert closing.wait() is True
    # What the lost link had not written went out on the next one.
    assert all(x.done() and x.exception() is None for x in deliveries)
    assert d.client.stats().sent == 64
    assert 0 < len(texts) < 64
    assert d.live_threads() == []


def _close_while_a_message_waits_out_a_60_s_backoff(rig: Rig) -> Tuple[Driven, Delivery, Closing]:
    """A client whose link dropped (next retry in 60 s), one message queued, close(10) called."""
    d = rig.client(reconnect=Reconnect(base_delay=30.0, max_delay=60.0))
    server = rig.connect(d)
    server.drop()
    assert d.events.wait_for("reconnecting").delay == 60.0
    delivery = d.client.send("after the outage")
    closing = d.close_in_background(10.0)
    d.wait_handled(cmd.Close)
    return d, delivery, closing


def test_close_during_a_long_backoff_with_queued_data_returns_by_its_deadline(
    rig: Rig,
) -> None:
    d, delivery, closing = _close_while_a_message_waits_out_a_60_s_backoff(rig)
    rig.clock.advance(8.999)  # the retry, brought to 5 s, dials a server that never answers
    d.sync()
    assert not closing.done.is_set()
    rig.clock.advance(0.001)
    assert closing.wait() is False
    with pytest.raises(ClientClosed):
        delivery.result(timeout=0)
    assert d.live_threads() == []


def test_a_retry_pending_when_close_starts_draining_is_brought_within_the_deadline(
    rig: Rig,
) -> None:
    d, delivery, closing = _close_while_a_message_waits_out_a_60_s_backoff(rig)
    rig.clock.advance(4.5)  # half the drain time, as for a retry planned while draining
    d.sync()
    assert d.client.state is State.CONNECTING, "no attempt for the queued message in time"
    server = rig.dialing.next().accept()
    texts, close = server.read_until_close()
    assert [f.payload for f in texts] == [b"after the outage"] and close.close_code == 1000
    server.close_with(1000)
    assert closing.wait() is True
    assert delivery.exception(timeout=0) is None


def test_close_again_and_close_of_a_client_never_connected_return_at_once(rig: Rig) -> None:
    d = rig.client()
    assert d.client.close(timeout=0.5) is True
    assert d.client.close(timeout=0.5) is True
    assert rig.dialing.count == 0
    e = rig.client()
    rig.connect(e)
    closing = e.close_in_background(5.0)
    rig.dialing.started[0].server.close_with(1000)  # type: ignore[union-attr]
    assert closing.wait() is True
    assert e.client.close(timeout=0.5) is True
    assert e.live_threads() == []


def test_close_from_a_handler_returns_at_once_and_a_closer_thread_finishes(rig: Rig) -> None:
    d = rig.client()
    server = rig.connect(d)
    results: List[bool] = []
    returned = threading.Event()

    def handler(event: object) -> None:
        results.append(d.client.close(timeout=5.0))
        returned.set()

    d.client.on("message", handler)
    server.send_text("bye")
    _, close = server.read_until_close()
    assert close.close_code == 1000
    assert returned.wait(WAIT)
    assert results == [False]  # it cannot wait for its own dispatcher thread
    server.close_with(1000)
    d.events.wait_for("state_change", where=lambda e: e.current == "closed")
    closers = [t for t in threading.enumerate() if t.name == "tether-close"]
    for closer in closers:
        closer.join(WAIT)
    assert not any(t.is_alive() for t in closers)
    assert d.live_threads() == []
