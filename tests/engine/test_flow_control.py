"""Flow control: senders blocked on a full queue are woken when the link drains.

``send()`` with the default ``overflow="block"`` waits for room; room appears
when the I/O thread has written messages out, which it does only while the
socket takes bytes and ``buffered_amount`` is under the high-water mark. The
peer here is a socketpair end that reads only when the test says so, so the
kernel really fills up and really drains.
"""

from __future__ import annotations

import sys
import threading
from typing import List, Optional

import pytest
from engine.rig import WAIT, Driven, Rig, ServerEnd

from tether_sync import Backpressure, ClientClosed, Delivery, Queue
from tether_sync.engine import commands as cmd

pytestmark = pytest.mark.timeout(30)

SIZE = 60_000  # bytes per message: below the size a ping barrier confirms


class Sender:
    """A user thread that sends ``count`` messages in order (blocking on a full queue)."""

    def __init__(self, d: Driven, count: int) -> None:
        self.deliveries: List[Delivery] = []
        self.error: Optional[BaseException] = None
        self.done = threading.Event()
        self._lock = threading.Condition()  # guards deliveries; notified on each send
        self._thread = threading.Thread(
            target=self._run, args=(d, count), name="test-sender", daemon=True
        )
        self._thread.start()

    def _run(self, d: Driven, count: int) -> None:
        try:
            for i in range(count):
                delivery = d.client.send(f"{i:05d}" + "s" * SIZE)
                with self._lock:
                    self.deliveries.append(delivery)
                    self._lock.notify_all()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self.deliveries)

    def wait_sent(self, n: int) -> None:
        """Wait until ``send()`` returned ``n`` times."""
        with self._lock:
            assert self._lock.wait_for(lambda: len(self.deliveries) >= n, WAIT), self.deliveries

    def join(self) -> None:
        assert self.done.wait(WAIT), f"the sender is still blocked after {self.sent} sends"
        self._thread.join(WAIT)


def numbers(server: ServerEnd, n: int) -> List[int]:
    return [int(text[:5]) for text in server.read_text(n)]


def test_a_sender_blocked_on_a_full_queue_is_woken_as_the_peer_reads(rig: Rig) -> None:
    # The high-water mark is far away: what stops the sender is the queue bound
    # (8 messages) once the kernel refuses more bytes.
    d = rig.client(queue=Queue(max_size=8), backpressure=Backpressure(high_water_mark=50_000_000))
    server = rig.connect(d)
    sender = Sender(d, 60)  # 3.6 MB: far more than the kernel and the queue hold
    sender.wait_sent(8)
    d.sync()
    assert not sender.done.is_set()
    # The peer reads: the socket turns writable, the loop writes, room appears.
    assert numbers(server, 60) == list(range(60))
    sender.join()
    assert sender.error is None
    for delivery in sender.deliveries:
        assert delivery.result(timeout=WAIT) is None
    d.events.wait_for("flushed", 60)
    flushed = [int(e.payload[:5]) for e in d.events.of("flushed")]
    assert flushed == list(range(60))  # resolved in the order they were sent
    assert d.client.stats().sent == 60


def test_a_sender_paused_at_the_high_water_mark_resumes_when_the_peer_catches_up(
    rig: Rig,
) -> None:
    # Above the mark with only the kernel holding bytes, no event says when they
    # leave: the loop looks again on a short timer (of the engine's clock).
    d = rig.client(queue=Queue(max_size=4), backpressure=Backpressure(high_water_mark=100_000))
    server = rig.connect(d)
    sender = Sender(d, 40)
    pressure = d.events.wait_for("backpressure")
    assert pressure.direction == "outbound" and pressure.depth >= 100_000
    d.sync()
    assert not sender.done.is_set()
    got: List[int] = []
    reader = threading.Thread(target=lambda: got.extend(numbers(server, 40)), daemon=True)
    reader.start()
    assert rig.advance_until(sender.done, 0.005)  # 5 ms of engine time per step
    sender.join()
    reader.join(WAIT)
    assert got == list(range(40))
    assert all(x.result(timeout=WAIT) is None for x in sender.deliveries)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel's unsent bytes are read on Linux only"
)
def test_flush_returns_once_the_peer_has_read_everything(rig: Rig) -> None:
    d = rig.client(backpressure=Backpressure(high_water_mark=50_000_000))
    server = rig.connect(d)
    for i in range(30):
        d.client.send(f"{i:05d}" + "f" * SIZE)
    result: List[bool] = []
    flushed = threading.Event()

    def flush() -> None:
        result.append(d.client.flush(timeout=WAIT))
        flushed.set()

    flushing = threading.Thread(target=flush)
    flushing.start()
    d.wait_handled(cmd.Flush)
    assert flushing.is_alive()  # the kernel still holds what the peer has not read
    assert numbers(server, 30) == list(range(30))
    assert rig.advance_until(flushed, 0.005)  # the kernel is re-read on a short timer
    flushing.join(WAIT)
    assert result == [True]
    assert d.client.buffered_amount == 0


def test_a_sender_blocked_while_connecting_is_woken_when_the_link_opens(rig: Rig) -> None:
    d = rig.client(queue=Queue(max_size=4), connect_timeout=30.0)
    d.client.connect()
    attempt = rig.dialing.next()
    sender = Sender(d, 10)
    sender.wait_sent(4)
    d.sync()
    assert sender.sent == 4 and not sender.done.is_set()  # the bound holds while down
    server = attempt.accept()
    assert numbers(server, 10) == list(range(10))
    sender.join()
    assert sender.error is None


def test_a_sender_blocked_on_a_full_queue_is_released_by_close(rig: Rig) -> None:
    d = rig.client(queue=Queue(max_size=4), connect_timeout=30.0)
    d.client.connect()
    rig.dialing.next()  # never answers
    sender = Sender(d, 10)
    sender.wait_sent(4)
    closing = d.close_in_background(5.0)
    sender.join()
    assert isinstance(sender.error, ClientClosed)
    d.wait_handled(cmd.Close)
    rig.clock.advance(4.0)  # the drain deadline: the four queued fail
    assert closing.wait() is False
    assert all(isinstance(x.exception(timeout=0), ClientClosed) for x in sender.deliveries)
    assert d.live_threads() == []


def test_a_slow_consumer_pauses_reading_and_loses_nothing(rig: Rig) -> None:
    # Inbound: a full "block" subscription holds the rest back and stops reading
    # the socket; each get() makes room and reading resumes. Nothing is dropped.
    d = rig.client(protocol="tether")
    d.client.connect()
    server = rig.dialing.next().accept()
    server.hello_ok()
    d.events.wait_for("open")
    sub = d.client.subscribe("ticks", buffer_size=2, overflow="block")
    assert server.read_json()["type"] == "subscribe"
    for i in range(50):
        server.send_json({"channel": "ticks", "type": "data", "payload": i})
    pressure = d.events.wait_for("backpressure", where=lambda e: e.direction == "inbound")
    assert pressure.channel == "ticks"
    d.sync()
    assert d.client.stats().inbound_depth["ticks"] == 2  # the rest waits unread
    assert [sub.get(timeout=WAIT) for _ in range(50)] == list(range(50))
    stats = d.client.stats()
    assert stats.dropped_inbound == 0 and stats.received == 50
    assert d.client.state.value == "open" and rig.dialing.count == 1
