"""``send_many()`` (DESIGN §2): one batch, one lock, one commit when durable.

Default options unless a test says why; the server is a real ``tether-sync
serve`` subprocess whose ``--record`` file holds what its application accepted.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator, List

import pytest
from support.serve_process import ServeProcess

from tether_sync import Queue, QueueFull, TetherClient
from tether_sync.durable import DurableStore


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    proc = ServeProcess(record=tmp_path / "record.jsonl").start()
    try:
        yield proc
    finally:
        proc.stop()


def _payloads(server: ServeProcess, channel: str) -> List[object]:
    return [r["payload"] for r in server.records() if r["channel"] == channel]


@pytest.mark.timeout(120)
def test_batches_right_after_connect_arrive_in_order_and_resolve(server: ServeProcess) -> None:
    client = TetherClient(server.url)
    try:
        client.connect()  # no wait
        deliveries = []
        for first in range(0, 20_000, 2_500):  # batches bigger than the queue bound
            deliveries += client.send_many(range(first, first + 2_500), channel="many")
        assert len(deliveries) == 20_000
        assert client.close(timeout=60) is True
    finally:
        client.close(timeout=5)
    assert _payloads(server, "many") == list(range(20_000))
    assert all(d.done() and d.exception() is None for d in deliveries)


@pytest.mark.timeout(60)
def test_a_bad_payload_queues_nothing_of_its_batch(server: ServeProcess) -> None:
    client = TetherClient(server.url)
    try:
        client.connect(wait=True, timeout=10)
        with pytest.raises(TypeError):
            client.send_many([1, 2, object(), 4], channel="bad")
        assert client.queue_depth == 0
        client.send_many([5, 6], channel="bad")
        assert client.flush(timeout=10) is True
    finally:
        client.close(timeout=5)
    assert _payloads(server, "bad") == [5, 6]


@pytest.mark.timeout(60)
def test_no_room_within_timeout_fails_the_rest_and_keeps_the_first(dead_url: str) -> None:
    client = TetherClient(dead_url)  # defaults: 1,000 messages, block
    try:
        deliveries = client.send_many(range(1_500), timeout=0.3)
        assert client.queue_depth == 1_000
        assert not any(d.done() for d in deliveries[:1_000])
        assert all(isinstance(d.exception(0), QueueFull) for d in deliveries[1_000:])
        assert client.stats().dropped_outbound == 0
    finally:
        client.close(timeout=5)


@pytest.mark.timeout(60)
def test_concurrent_batches_keep_each_threads_order(server: ServeProcess) -> None:
    client = TetherClient(server.url)
    try:
        client.connect(wait=True, timeout=10)

        def produce(who: int) -> None:
            for batch in range(50):
                client.send_many([[who, batch, k] for k in range(20)], channel="mix")

        threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert client.flush(timeout=30) is True
    finally:
        client.close(timeout=5)
    got = _payloads(server, "mix")
    assert len(got) == 4 * 50 * 20
    for who in range(4):
        mine = [p[1:] for p in got if isinstance(p, list) and p[0] == who]
        assert mine == [[b, k] for b in range(50) for k in range(20)]


@pytest.mark.timeout(90)
def test_a_durable_batch_is_one_commit_and_survives_the_process(
    tmp_path: Path, server: ServeProcess
) -> None:
    path = str(tmp_path / "outbox.sqlite")
    url = server.url
    server.stop()  # down: the batch can only be stored
    first = TetherClient(url, queue={"path": path})
    try:
        store = first._store
        assert store is not None
        before = store.transactions
        deliveries = first.send_many([{"n": n} for n in range(500)], channel="durable")
        assert len(deliveries) == 500
        assert store.transactions - before == 1
    finally:
        first.close(timeout=1)  # not sent: it stays in the file
    server.start()
    second = TetherClient(url, queue={"path": path})
    try:
        second.connect()
        assert second.close(timeout=30) is True
    finally:
        second.close(timeout=5)
    assert _payloads(server, "durable") == [{"n": n} for n in range(500)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("overflow", ["drop-newest", "drop-oldest"])
def test_a_durable_batch_offline_keeps_the_drop_policy_per_message(
    tmp_path: Path, dead_url: str, overflow: str
) -> None:
    # The commit hook queues a batch under one lock where no policy has a say;
    # past the bound (not open, a drop policy) each message takes send()'s path.
    path = str(tmp_path / "outbox.sqlite")
    client = TetherClient(dead_url, queue=Queue(path=path, max_size=10, overflow=overflow))
    try:
        deliveries = client.send_many(list(range(15)), channel="drop")
        failed = [n for n, d in enumerate(deliveries) if d.done() and d.exception(0) is not None]
        assert failed == (list(range(10, 15)) if overflow == "drop-newest" else list(range(5)))
        assert all(isinstance(deliveries[n].exception(0), QueueFull) for n in failed)
        assert client.queue_depth == 10
        assert client.stats().dropped_outbound == 5
    finally:
        client.close(timeout=5)
    # The dropped messages left the file; the ten kept wait in it for the next process.
    store = DurableStore(path)
    try:
        kept = [json.loads(m.data)["payload"] for m in store.pending()]
    finally:
        store.close()
    assert kept == (list(range(10)) if overflow == "drop-newest" else list(range(5, 15)))
