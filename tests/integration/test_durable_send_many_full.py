"""``send_many()`` on a full disk: a batch that cannot be stored raises, none of it is sent.

A ``send_many()`` batch is one row of ``batches`` (issue 22); on a real
256 KiB tmpfs (conftest.py's ``small_disk``) the disk fills, and the batch
whose transaction failed must raise with the ``OSError`` as the cause, send
nothing of itself, leave every earlier batch delivered, let ``close()`` end in
time, and the file must open again once there is room.
"""

from __future__ import annotations

import errno
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, List

import pytest

from tether_sync import Queue, TetherClient
from tether_sync.delivery import Delivery
from tether_sync.exceptions import TetherError

if TYPE_CHECKING:
    from tether_sync.server import TetherServer

BATCH = 50


@pytest.mark.timeout(120)
def test_a_batch_that_does_not_fit_raises_and_sends_nothing_of_itself(
    tether_server: TetherServer, small_disk: Path
) -> None:
    path = small_disk / "outbox.sqlite"
    client = TetherClient(tether_server.url, queue=Queue(path=str(path)))
    sent: List[Delivery] = []
    error: BaseException
    try:
        client.connect(wait=True, timeout=10)
        n = 0
        while True:  # until the disk is full (a few batches of 50 x 300 bytes)
            assert n < 100_000, "the 256 KiB disk never filled"
            payloads = [{"n": n + i, "pad": "x" * 300} for i in range(BATCH)]
            try:
                sent += client.send_many(payloads, channel="disk")
            except TetherError as exc:
                error = exc
                break
            n += BATCH
        assert isinstance(error.__cause__, OSError), repr(error.__cause__)
        assert error.__cause__.errno == errno.ENOSPC
        for delivery in sent:
            delivery.result(timeout=10)
        assert client.flush(timeout=10)
        # Every stored batch arrived, whole and in order; nothing of the failed one.
        assert [m["n"] for m in tether_server.data_payloads("disk")] == list(range(len(sent)))
    finally:
        started = time.monotonic()
        client.close(timeout=2)
        took = time.monotonic() - started
    assert took < 2.5, f"close(timeout=2) took {took:.2f}s"
    assert [t for t in threading.enumerate() if t.name == "tether_sync-outbox"] == []
    # Room again: the same file opens and a batch goes through.
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True, timeout=30)
    again = TetherClient(tether_server.url, queue=Queue(path=str(path)))
    try:
        again.connect(wait=True, timeout=10)
        for d in again.send_many([{"after": i} for i in range(BATCH)], channel="disk"):
            d.result(timeout=10)
    finally:
        assert again.close(timeout=5)
    received = tether_server.data_payloads("disk")
    assert received[len(sent) :] == [{"after": i} for i in range(BATCH)]
