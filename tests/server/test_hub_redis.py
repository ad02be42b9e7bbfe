"""Several ``tether-sync serve --store redis://`` nodes on one real ``redis-server`` (issue 20).

Real processes killed with SIGKILL, a real Redis restarted, the real client.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import websocket
from support.serve_process import ServeProcess

from tether_sync import TetherClient
from tether_sync.delivery import Delivery

FAST = {"base_delay": 0.01, "max_delay": 0.2}
# Room for every send while a node is down: the test is about the server, not a drop policy.
BIG_QUEUE = {"max_size": 10_000}


class Progress:
    """A counter others wait on (no sleeping for conditions)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: List[Any] = []

    def add(self, item: Any) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[List[Any]], bool], timeout: float = 30.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.items), timeout)


def _node(redis_url: str, name: str, tmp_path: Path, *extra: str) -> ServeProcess:
    args = ["--store", redis_url, "--node", name, *extra]
    return ServeProcess(args, record=tmp_path / f"{name}.jsonl").start()


def _opens(client: TetherClient) -> Progress:
    opens = Progress()
    client.on("open", opens.add)
    return opens


@pytest.mark.timeout(240)
def test_kill_9_of_the_clients_node_three_times_records_every_message_once(
    redis_server: Any, tmp_path: Path
) -> None:
    a = _node(redis_server.url, "a", tmp_path)
    b = _node(redis_server.url, "b", tmp_path)
    nodes: Dict[str, ServeProcess] = {a.url: a, b.url: b}
    client = TetherClient([a.url, b.url], reconnect=FAST, queue=BIG_QUEUE)
    opens = _opens(client)
    try:
        client.connect(wait=True, timeout=10)
        assert client.stats().extensions  # hello-ok came: acks are on
        deliveries: List[Delivery] = []
        marks = Progress()
        rounds = [threading.Event() for _ in range(3)]

        def sender() -> None:
            for n in range(5000):
                deliveries.append(client.send(n, channel="bulk"))
                if n in (1000, 2250, 3500):
                    marks.add(n)  # the main thread kills the node now...
                if n in (1600, 2850, 4100):
                    # ...and the next round waits until the client is on the other node.
                    rounds[(n - 1600) // 1250].wait(60)

        thread = threading.Thread(target=sender, name="test-sender")
        thread.start()
        for k in range(3):
            assert marks.wait(lambda items, k=k: len(items) > k, 60)
            victim = nodes[client.stats().endpoint]
            victim.kill()
            victim.start()  # same port, same record file, same node name
            assert opens.wait(lambda items, k=k: len(items) >= k + 2, 60)
            rounds[k].set()
        thread.join(120)
        assert not thread.is_alive()
        assert client.flush(timeout=120) is True
        assert all(d.done() and d.exception(timeout=0) is None for d in deliveries)
        assert client.stats().reconnects >= 3
    finally:
        client.close(timeout=5)
        a.stop()
        b.stop()
    records = [r for r in a.records() + b.records() if r["channel"] == "bulk"]
    assert sorted(r["payload"] for r in records) == list(range(5000))  # each exactly once
    for node in (a, b):
        seqs = [r["seq"] for r in node.records()]
        assert seqs == sorted(seqs)  # each node's record in arrival order
    in_order = [r["payload"] for r in sorted(records, key=lambda r: r["seq"])]
    assert in_order == list(range(5000))  # first-arrival order is the send order


@pytest.mark.timeout(120)
def test_a_subscriber_on_b_gets_every_publication_through_a_once_across_b_s_kill(
    redis_server: Any, tmp_path: Path
) -> None:
    a = _node(redis_server.url, "a", tmp_path, "--broadcast")
    b = _node(redis_server.url, "b", tmp_path, "--broadcast")
    got = Progress()
    subscriber = TetherClient([b.url, a.url], reconnect=FAST)
    publisher = TetherClient(a.url, reconnect=FAST)
    opens = _opens(subscriber)
    try:
        subscriber.subscribe("news", got.add)
        subscriber.connect(wait=True, timeout=10)
        publisher.connect(wait=True, timeout=10)
        # Until the subscription is live on B, publications would be missed by
        # design (a first subscribe has no position): publish probes until one arrives.
        pacing = threading.Event()
        while not got.wait(lambda items: len(items) > 0, 0.05):
            publisher.send("probe", channel="news")
        for n in range(600):
            publisher.send(n, channel="news")
            if n == 300:
                assert got.wait(lambda items: len(items) > 100, 30)
                assert subscriber.stats().endpoint == b.url
                b.kill()
            pacing.wait(0.002)  # a steady stream, not a burst
        assert publisher.flush(timeout=30) is True
        assert opens.wait(lambda items: len(items) >= 2, 30)
        assert got.wait(lambda items: 599 in items, 30)
        assert subscriber.stats().endpoint == a.url
    finally:
        subscriber.close(timeout=5)
        publisher.close(timeout=5)
        a.stop()
        b.stop()
    numbers = [item for item in got.items if item != "probe"]
    assert numbers == list(range(600))  # all, in order, none twice


@pytest.mark.timeout(120)
def test_redis_restarted_mid_stream_loses_nothing_and_delivers_nothing_twice(
    redis_server: Any, tmp_path: Path
) -> None:
    node = _node(redis_server.url, "a", tmp_path)
    client = TetherClient(node.url, reconnect=FAST, queue=BIG_QUEUE)
    acked = Progress()
    closes = Progress()
    client.on("close", closes.add)
    down = threading.Event()

    def restart_redis() -> None:
        redis_server.stop()
        down.set()
        # Keep it down until the node has refused something (it closes with 1011).
        closes.wait(lambda items: len(items) >= 1, 30)
        redis_server.start()

    restarter = threading.Thread(target=restart_redis, name="test-redis-restart")
    try:
        client.connect(wait=True, timeout=10)
        deliveries = []
        for n in range(3000):
            delivery = client.send(n, channel="bulk")
            delivery.add_done_callback(acked.add)
            deliveries.append(delivery)
            if n == 1500:
                assert acked.wait(lambda items: len(items) >= 500, 30)
                restarter.start()
                assert down.wait(30)  # the rest is sent while Redis is down
        restarter.join(60)
        assert client.flush(timeout=60) is True
        assert all(d.exception(timeout=0) is None for d in deliveries)
        assert [c.code for c in closes.items][:1] == [1011]
    finally:
        client.close(timeout=5)
        node.stop()
    records = [r for r in node.records() if r["channel"] == "bulk"]
    assert [r["payload"] for r in records] == list(range(3000))


def test_redis_down_refuses_hellos_with_1011_and_acks_nothing(
    redis_server: Any, tmp_path: Path
) -> None:
    node = _node(redis_server.url, "a", tmp_path)
    try:
        redis_server.stop()
        ws = websocket.create_connection(node.url, timeout=10)
        ws.send(json.dumps({"type": "tether:hello", "session": "s", "features": ["ack"]}))
        frame = ws.recv_frame()
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 1011
        ws.close()
        # A client without hello (plain §3) still gets its echo: no store involved.
        plain = websocket.create_connection(node.url, timeout=10)
        plain.send(json.dumps({"channel": "c", "type": "data", "payload": 1, "id": "x"}))
        assert json.loads(plain.recv())["payload"] == 1
        plain.close()
    finally:
        node.stop()
