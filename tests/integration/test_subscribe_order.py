"""A subscribe() goes out before every send() made after it, even while the queue is busy.

The bundled server echoes a message to the channel's subscribers, so a send that
overtook its own subscribe frame came back to nobody: the echo was lost. The I/O
thread runs commands (subscribe) and pumps the queue (send) at different steps of
its loop; while a stream of sends kept the pump busy, a subscribe posted between
the two steps was overtaken (about 1 run in 40 of test_backpressure's flood test).
"""

from __future__ import annotations

import threading
from typing import Callable

import pytest

from tether_sync import TetherClient
from tether_sync.server import TetherServer

ROUNDS = 200


@pytest.mark.timeout(120)
def test_a_send_right_after_subscribe_is_echoed_while_the_queue_is_busy(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)  # default options
    client.connect(wait=True, timeout=10)
    stop = threading.Event()

    def keep_the_pump_busy() -> None:
        n = 0
        while not stop.is_set() and n < 2_000_000:
            client.send(n, channel="noise")  # nobody subscribes: the server just takes it
            n += 1

    noise = threading.Thread(target=keep_the_pump_busy, daemon=True)
    noise.start()
    try:
        for i in range(ROUNDS):
            sub = client.subscribe(f"round-{i}")
            client.send(i, channel=f"round-{i}")
            assert sub.get(timeout=10) == i, f"round {i}: the echo never came"
            sub.unsubscribe()
    finally:
        stop.set()
        noise.join(10)
    assert client.flush(timeout=30)
