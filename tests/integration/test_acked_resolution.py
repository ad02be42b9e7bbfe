"""Acknowledged messages resolved in batches, against the bundled server (DESIGN §5).

Issue 22 made the I/O thread resolve a whole ack's messages in one pass
(``delivery.set_results``) when nobody listens to ``flushed``; with a listener
it resolves them one by one, each followed by its event. Either way a user must
see the same thing: every ``Delivery`` done, its callbacks run once on the
dispatcher (never on the I/O thread), every counter exact, and with a listener
one ``flushed`` event per message, in order. Threads wait on Conditions and
Events with timeouts; nothing sleeps.
"""

from __future__ import annotations

import threading
from typing import Any, List, Tuple

import pytest

from tether_sync import TetherClient
from tether_sync.delivery import Delivery

pytestmark = pytest.mark.timeout(60)

N = 600  # more than one ack's worth, fewer than the queue's default bound
WAIT = 20.0


class Calls:
    """Done-callbacks as they run: (payload, thread name), counted under a Condition."""

    def __init__(self) -> None:
        self._cond = threading.Condition()  # guards seen; notified on each call
        self.seen: List[Tuple[Any, str]] = []

    def __call__(self, d: Delivery) -> None:
        with self._cond:
            self.seen.append((d.payload, threading.current_thread().name))
            self._cond.notify_all()

    def wait(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.seen) >= count, WAIT)


@pytest.mark.parametrize("listen", [False, True], ids=["no-listener", "flushed-listener"])
def test_acked_messages_resolve_with_callbacks_off_the_io_thread_and_exact_counters(
    tether_server: Any, listen: bool
) -> None:
    client = TetherClient(tether_server.url)
    flushed: List[str] = []
    all_flushed = threading.Event()

    def on_flushed(event: Any) -> None:
        flushed.append(event.id)
        if len(flushed) == N:
            all_flushed.set()

    if listen:
        client.on("flushed", on_flushed)
    calls = Calls()
    try:
        client.connect(wait=True, timeout=10)
        assert "ack" in client.stats().extensions  # deliveries wait for the server's acks
        deliveries = [client.send(i, channel="batch") for i in range(N)]
        for d in deliveries:
            d.add_done_callback(calls)
        assert deliveries[-1].result(timeout=WAIT) is None
        assert all(d.done() and d.exception(0) is None for d in deliveries)
        assert calls.wait(N), f"{len(calls.seen)} of {N} callbacks ran"
        assert sorted(p for p, _ in calls.seen) == list(range(N))  # each once
        io_thread = client._loop.thread
        assert io_thread is not None
        assert io_thread.name not in {name for _, name in calls.seen}
        stats = client.stats()
        assert (stats.sent, stats.flushed, stats.acked, stats.unacked) == (N, N, N, 0)
        if listen:
            assert all_flushed.wait(WAIT)
            assert flushed == [d.id for d in deliveries]
    finally:
        assert client.close(timeout=10)
