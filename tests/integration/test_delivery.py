"""Nothing accepted by send() is lost: replay across kills, ordering across threads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, Dict, List

import pytest
from support.recorder import Recorder

from tether_sync import ClientClosed, QueueFull, TetherClient
from tether_sync.server import TetherServer


def _wait_echo(sub: Any, value: Any, timeout: float = 10.0) -> None:
    """Consume the subscription until the echo of ``value`` arrives."""
    while True:
        if sub.get(timeout=timeout) == value:
            return


@pytest.mark.timeout(60)
def test_1000_messages_survive_three_abrupt_kills_in_order(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url, queue={"max_size": 2000})
    echoes = client.subscribe("seq")
    client.connect(wait=True, timeout=5)
    kills = 0
    restart_after = -1
    for n in range(1000):
        client.send(n, channel="seq")
        if n in (249, 499, 749):
            # DESIGN §3: a frame in the dead peer's kernel cannot be known lost
            # until acknowledged delivery exists, so wait for the echo, then kill.
            _wait_echo(echoes, n)
            tether_server.stop(abrupt=True)
            kills += 1
            restart_after = n + 50  # the next 50 sends happen while it is down
        elif n == restart_after:
            tether_server.start()  # same port; the loop goes on while reconnecting
    assert kills == 3
    assert tether_server.wait_for_data(1000, timeout=30, channel="seq")
    assert tether_server.data_payloads("seq") == list(range(1000))
    assert client.stats().reconnects == 3


@pytest.mark.timeout(60)
def test_8_threads_x_1000_sends_all_arrive_in_per_thread_order(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url, queue={"max_size": 10_000, "overflow": "reject"})
    client.connect(wait=True, timeout=5)
    start = threading.Barrier(8)
    errors: List[BaseException] = []

    def sender(t: int) -> None:
        try:
            start.wait(timeout=5)
            for i in range(1000):
                client.send({"t": t, "i": i}, channel="mt")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not errors
    assert client.flush(timeout=20)
    assert tether_server.wait_for_data(8000, timeout=20, channel="mt")
    per_thread: Dict[int, List[int]] = {t: [] for t in range(8)}
    for p in tether_server.data_payloads("mt"):
        per_thread[p["t"]].append(p["i"])
    for t in range(8):
        assert per_thread[t] == list(range(1000)), f"thread {t} out of order or lossy"
    assert client.stats().sent == 8000


@pytest.mark.timeout(30)
def test_deliveries_resolve_and_flushed_events_follow_send_order(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    flushed = Recorder()
    client.on("flushed", flushed)
    deliveries = [client.send(i, channel="d") for i in range(50)]  # before connect: queued
    assert client.queue_depth == 50
    client.connect()
    for d in deliveries:
        assert d.result(timeout=10) is None
        assert d.done()
    assert flushed.wait_count(50)
    assert [e.payload for e in flushed.snapshot()] == list(range(50))
    assert client.stats().queued == 50


@pytest.mark.timeout(30)
def test_queue_overflow_policies(dead_url: str, make_client: Callable[..., TetherClient]) -> None:
    oldest = make_client(dead_url, queue={"max_size": 3, "overflow": "drop-oldest"})
    ds = [oldest.send(i) for i in range(5)]
    assert isinstance(ds[0].exception(timeout=1), QueueFull)
    assert isinstance(ds[1].exception(timeout=1), QueueFull)
    assert not ds[2].done() and oldest.queue_depth == 3
    assert oldest.stats().dropped_outbound == 2

    newest = make_client(dead_url, queue={"max_size": 3, "overflow": "drop-newest"})
    ds = [newest.send(i) for i in range(5)]
    assert [d.done() for d in ds] == [False, False, False, True, True]
    assert isinstance(ds[4].exception(timeout=1), QueueFull)

    reject = make_client(dead_url, queue={"max_size": 3, "overflow": "reject"})
    for i in range(3):
        reject.send(i)
    with pytest.raises(QueueFull):
        reject.send(3)
    assert reject.queue_depth == 3


@pytest.mark.timeout(30)
def test_close_fails_what_is_left_and_send_after_close_raises(
    dead_url: str, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(dead_url)
    client.connect()
    pending = client.send("never")
    assert client.close(timeout=0.5) is False  # nothing listens: the message is left
    assert isinstance(pending.exception(timeout=1), ClientClosed)
    with pytest.raises(ClientClosed):
        client.send("late")


SCRIPT = textwrap.dedent(
    """
    import sys
    from tether_sync import TetherClient
    client = TetherClient(sys.argv[1], heartbeat=False)
    client.connect()
    for i in range(100):
        client.send({"i": i}, channel="exit")
    # no close(), no flush(): the interpreter exits right away
    """
)


@pytest.mark.timeout(60)
def test_script_that_exits_without_close_delivers_everything(tether_server: TetherServer) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, tether_server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert tether_server.wait_for_data(100, timeout=10, channel="exit")
    assert tether_server.data_payloads("exit") == [{"i": i} for i in range(100)]


@pytest.mark.timeout(30)
def test_close_drains_then_returns_without_waiting_out_its_timeout(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    import time

    client = make_client(tether_server.url)
    for i in range(200):
        client.send(i, channel="drain")  # queued before connecting
    client.connect()
    started = time.monotonic()
    assert client.close(timeout=20) is True
    # A generous bound (half the timeout); the policy, exactly: tests/unit/
    # test_close_and_retry_timing.py::test_a_drained_close_is_due_at_once_whatever_its_deadline
    assert time.monotonic() - started < 10, "close() sat out its timeout after draining"
    assert tether_server.wait_for_data(200, timeout=10, channel="drain")
    assert tether_server.data_payloads("drain") == list(range(200))
    conn = tether_server.all_connections[0]
    assert tether_server.wait_for(lambda: conn.close_code is not None, 5)
    assert conn.close_code == 1000


@pytest.mark.timeout(30)
def test_done_callbacks_run_on_the_dispatcher_not_the_io_thread(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    ran_on = Recorder()
    deliveries = [client.send(i, channel="cb") for i in range(20)]
    for d in deliveries:
        d.add_done_callback(lambda d: ran_on(threading.current_thread().name))
    client.connect()
    assert ran_on.wait_count(20)
    assert set(ran_on.snapshot()) == {"tether-dispatch"}
