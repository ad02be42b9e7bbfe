"""A durable ``send_many()`` offline under a drop policy, batches stored as rows (issue 22).

``test_send_many.py`` checks the per-message drop policy with 15 messages,
fewer than :data:`~tether_sync.durable.BATCH_ROWS`, so rows of ``messages``.
Here the batches are rows of ``batches``: the messages dropped inside one must
leave the file all the same (as ranges in ``gone``), and the next process must
get exactly the ones kept, in order.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tether_sync import Queue, QueueFull, TetherClient
from tether_sync.durable import BATCH_ROWS, DurableStore


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overflow", ["drop-newest", "drop-oldest"])
def test_messages_dropped_inside_a_batch_row_leave_the_file(
    tmp_path: Path, dead_url: str, overflow: str
) -> None:
    path = str(tmp_path / "outbox.sqlite")
    size, count = 25, 40
    assert count - size < BATCH_ROWS <= count
    client = TetherClient(dead_url, queue=Queue(path=path, max_size=size, overflow=overflow))
    try:
        first = client.send_many(list(range(count)), channel="drop")
        second = client.send_many(list(range(count, 2 * count)), channel="drop")
        deliveries = first + second
        failed = [n for n, d in enumerate(deliveries) if d.done() and d.exception(0) is not None]
        assert all(isinstance(deliveries[n].exception(0), QueueFull) for n in failed)
        assert client.queue_depth == size
        assert client.stats().dropped_outbound == 2 * count - size
    finally:
        client.close(timeout=5)
    want = list(range(size)) if overflow == "drop-newest" else list(range(2 * count - size, 80))
    assert [n for n in range(2 * count) if n not in failed] == want
    conn = sqlite3.connect(path)
    try:  # the kept ones are in rows of batches (the test's point)
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] >= 1
    finally:
        conn.close()
    store = DurableStore(path)
    try:
        kept = [json.loads(m.data)["payload"] for m in store.pending()]
    finally:
        store.close()
    assert kept == want
