"""The plainest path loses nothing (issue 18): default options, scripts as users write them.

No test here passes an option unless it says why. The server is a real
``tether-sync serve`` subprocess whose ``--record`` file holds every data
message its application accepted, in arrival order.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from support.raw_server import MutePeer
from support.serve_process import ServeProcess

from tether_sync import QueueFull, TetherClient, TetherError


@pytest.fixture
def clients() -> Iterator[List[TetherClient]]:
    made: List[TetherClient] = []
    yield made
    for client in made:
        client.close(timeout=3)


def _payloads(server: ServeProcess, channel: str) -> List[object]:
    return [r["payload"] for r in server.records() if r["channel"] == channel]


@pytest.mark.timeout(180)
def test_connect_without_wait_then_100k_sends_then_close_delivers_all_in_order(
    tmp_path: Path, clients: List[TetherClient], caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the first ~600 messages were dropped while the first connection
    # was being made (drop-oldest while not open), and the script "succeeded".
    server = ServeProcess(record=tmp_path / "record.jsonl").start()
    try:
        client = TetherClient(server.url)
        clients.append(client)
        client.connect()  # no wait: the loop starts while the client is connecting
        with caplog.at_level(logging.WARNING, logger="tether_sync"):
            deliveries = [client.send(n, channel="plain") for n in range(100_000)]
            assert client.close(timeout=150) is True
        assert _payloads(server, "plain") == list(range(100_000))
        assert client.stats().dropped_outbound == 0
        assert all(d.done() and d.exception() is None for d in deliveries[-1000:])
        assert not [r for r in caplog.records if "dropping" in r.getMessage()]
    finally:
        server.stop()


@pytest.mark.timeout(180)
def test_a_loop_of_50k_sends_across_a_server_restart_delivers_all_in_order(
    tmp_path: Path, clients: List[TetherClient]
) -> None:
    # The server goes away in the middle of the loop and comes back on the same
    # port: the loop pauses (a full queue waits for room while the link is
    # down) and goes on; nothing is dropped.
    server = ServeProcess(record=tmp_path / "record.jsonl").start()
    restarted = threading.Event()
    try:
        client = TetherClient(server.url)
        clients.append(client)
        client.connect()
        for n in range(50_000):
            client.send(n, channel="restart")
            if n == 20_000:
                server.stop()  # SIGTERM: a graceful restart, as a deploy does
                server.start(timeout=60)  # generous: the machine may be loaded
                restarted.set()
        assert restarted.is_set()
        assert client.close(timeout=150) is True
        got = _payloads(server, "restart")
        # The first process's record and the second's, in arrival order. Without
        # a shared store the restarted server cannot know what the first one
        # accepted and not acked, so a message may arrive twice (issue 20), but
        # none may be missing or out of order.
        firsts: List[object] = []
        seen = set()
        for p in got:
            if p not in seen:
                seen.add(p)
                firsts.append(p)
        assert firsts == list(range(50_000))
        assert client.stats().dropped_outbound == 0
        assert client.stats().reconnects >= 1
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_send_without_connect_in_a_script_that_ends_delivers(tmp_path: Path) -> None:
    # Before: TetherClient(url).send(...) three times, script ends: exit 0,
    # nothing sent, nothing said.
    server = ServeProcess(record=tmp_path / "record.jsonl").start()
    try:
        script = textwrap.dedent(
            f"""
            from tether_sync import TetherClient
            client = TetherClient({server.url!r})
            for n in range(3):
                client.send({{"n": n}}, channel="script")
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert _payloads(server, "script") == [{"n": 0}, {"n": 1}, {"n": 2}]
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_a_full_queue_while_down_waits_says_so_once_and_send_timeout_raises(
    dead_url: str, clients: List[TetherClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = TetherClient(dead_url)  # defaults: Queue(max_size=1000, overflow="block")
    clients.append(client)
    with caplog.at_level(logging.INFO, logger="tether_sync"):
        deliveries = [client.send(n) for n in range(1000)]
        for _ in range(3):
            with pytest.raises(QueueFull, match="no room"):
                client.send("one too many", timeout=0.2)
    assert not any(d.done() for d in deliveries)  # nothing dropped, all still queued
    assert client.stats().dropped_outbound == 0
    assert client.queue_depth == 1000
    waits = [r for r in caplog.records if "waiting for room" in r.getMessage()]
    assert len(waits) == 1
    # Never open yet: INFO (a script that sends at once waits so at every start);
    # the failed attempts are the warnings.
    assert waits[0].levelno == logging.INFO and "not open" in waits[0].getMessage()
    assert any(
        r.levelno == logging.WARNING and "attempt failed" in r.getMessage() for r in caplog.records
    )


@pytest.mark.timeout(60)
def test_send_on_a_never_connected_client_starts_connecting(tmp_path: Path) -> None:
    server = ServeProcess(record=tmp_path / "record.jsonl").start()
    client = TetherClient(server.url)
    try:
        assert client.state.value == "idle"
        delivery = client.send("hi", channel="auto")
        delivery.result(timeout=10)
        assert client.state.value == "open"
        assert _payloads(server, "auto") == ["hi"]
    finally:
        client.close(timeout=5)
        server.stop()


@pytest.mark.timeout(60)
def test_a_bad_payload_on_a_never_connected_client_starts_nothing(dead_url: str) -> None:
    client = TetherClient(dead_url)
    try:
        with pytest.raises(TypeError):
            client.send(object())
        assert client.state.value == "idle"
    finally:
        client.close(timeout=5)


@pytest.mark.timeout(60)
def test_the_exit_flush_ends_within_exit_flush_timeout() -> None:
    # Before: 5.38 s for exit_flush_timeout=5.0. A peer that never reads holds
    # the queue; the script ends; the interpreter must exit within the budget.
    peer = MutePeer()  # never reads: writes stall for good
    try:
        script = textwrap.dedent(
            f"""
            import sys
            from tether_sync import TetherClient
            client = TetherClient({peer.url!r}, protocol="raw", exit_flush_timeout=2.0)
            client.connect(wait=True, timeout=10)
            for n in range(300):
                client.send(b"x" * 65536)
            print("end", flush=True)
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "end"
        started = time.monotonic()
        proc.wait(30)
        took = time.monotonic() - started
        assert proc.returncode == 0
        # The margin is interpreter teardown, which takes up to ~0.4 s more when other
        # processes share the cores (measured at load 5-8); the bug took 5.38 s.
        assert 1.8 <= took <= 2.0 + 0.75, f"exit took {took:.3f}s for exit_flush_timeout=2.0"
    finally:
        peer.close()


@pytest.mark.timeout(60)
def test_connect_wait_that_raises_again_and_again_keeps_a_short_traceback(
    dead_url: str,
) -> None:
    # Before: every raise added frames to the one stored exception's traceback
    # (150,000 entries after 50,000 calls).
    client = TetherClient(dead_url, reconnect={"max_attempts": 1, "base_delay": 0.01})
    depths = []
    try:
        for _ in range(50):
            with pytest.raises(TetherError) as info:
                client.connect(wait=True, timeout=10)
            depth, tb = 0, info.value.__traceback__
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
    finally:
        client.close(timeout=5)
    assert max(depths) == min(depths) <= 5


@pytest.mark.timeout(90)
def test_a_durable_outbox_full_while_down_waits_and_send_timeout_raises(
    tmp_path: Path, clients: List[TetherClient]
) -> None:
    # Before (with block as the default): the commit hook waited for room with
    # no timeout, so send(timeout=0.3) on a full durable outbox hung for good.
    server = ServeProcess(record=tmp_path / "record.jsonl").start()
    server.stop()  # the port is known and nobody listens: the link is down
    client = TetherClient(server.url, queue={"path": str(tmp_path / "outbox.sqlite")})
    clients.append(client)
    for n in range(1000):
        client.send(n, channel="durable")
    started = time.monotonic()
    with pytest.raises(QueueFull, match="no room"):
        client.send("one too many", channel="durable", timeout=0.3)
    assert time.monotonic() - started < 5
    server.start()
    try:
        assert client.close(timeout=60) is True
        assert _payloads(server, "durable") == list(range(1000))
    finally:
        server.stop()
