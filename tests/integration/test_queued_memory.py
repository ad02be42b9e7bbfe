"""What a message queued while offline costs (issue 22: at most 300 B for 64 B, protocol tether).

A client whose server is down queues every send(); tracemalloc counts what
send() allocates per message (its Delivery, encoded bytes, queue slot), not the
caller's payload, which exists before. No server: the port refuses connections.
"""

from __future__ import annotations

import gc
import json
import socket
import threading
import tracemalloc
from typing import Any, Callable

import pytest

from tether_sync import TetherClient

N = 20_000
PAYLOAD = "0123456789abcdef" * 4  # 64 bytes


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def queued_bytes_per_message(make_client: Callable[..., TetherClient], protocol: str) -> float:
    client = make_client(
        f"ws://127.0.0.1:{closed_port()}/",
        protocol=protocol,
        reconnect={"base_delay": 30.0, "max_delay": 30.0},
        queue={"max_size": N + 10, "overflow": "reject"},
    )
    down = threading.Event()
    client.on("state_change", lambda e: down.set() if e.current == "reconnecting" else None)
    client.connect()
    assert down.wait(10), "the client never gave up its first attempt"
    payloads = [f"{i:016d}" + PAYLOAD[16:] for i in range(N)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        send = client.send
        for p in payloads:
            send(p)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert client.queue_depth == N
    return (after - before) / N


@pytest.mark.timeout(120)
def test_a_queued_64_byte_tether_message_costs_at_most_300_bytes(
    make_client: Callable[..., TetherClient],
) -> None:
    assert queued_bytes_per_message(make_client, "tether") <= 300


@pytest.mark.timeout(120)
def test_a_queued_64_byte_raw_message_costs_at_most_300_bytes(
    make_client: Callable[..., TetherClient],
) -> None:
    assert queued_bytes_per_message(make_client, "raw") <= 300


def test_the_id_of_a_tether_message_is_the_one_on_the_wire(
    make_client: Callable[..., TetherClient],
) -> None:
    client = make_client(f"ws://127.0.0.1:{closed_port()}/", protocol="tether")
    channels: Any = ["default", 'we"ird\\chan', "ünï"]
    for channel in channels:
        for payload in (PAYLOAD, {"id": "not this one"}, ',"id":"x"}'):
            d = client.send(payload, channel=channel)
            sent = json.loads(d._data)
            assert d.id == sent["id"] and sent["payload"] == payload
            assert d.id in repr(d)
