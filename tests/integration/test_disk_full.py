"""A durable outbox on a full disk: the sends that cannot be stored fail, close() ends.

The outbox lives on a real 256 KiB tmpfs (the tests mount one; they run as
root in CI), so the disk really fills: SQLite reports ``SQLITE_FULL`` and the
client must turn it into failed sends (with the ``OSError`` as the cause),
not into a committer that retries for ever and outlives ``close()``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List

import pytest

from tether_sync import Queue, TetherClient
from tether_sync.exceptions import TetherError

if TYPE_CHECKING:
    from tether_sync.server import TetherServer


class Failures(logging.Handler):
    """Counts the outbox's "commit failed" records (any level)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self._lock = threading.Lock()  # records come from the committer and senders

    def emit(self, record: logging.LogRecord) -> None:
        if "commit failed" in record.getMessage():
            with self._lock:
                self.count += 1


@pytest.fixture
def failures() -> Iterator[Failures]:
    logger = logging.getLogger("tether_sync")
    handler = Failures()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def outbox_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tether_sync-outbox" and t.is_alive()]


@pytest.mark.timeout(120)
def test_a_full_disk_fails_the_sends_it_cannot_store_and_close_ends_in_time(
    tether_server: TetherServer, small_disk: Path, failures: Failures
) -> None:
    path = small_disk / "outbox.sqlite"
    client = TetherClient(tether_server.url, queue=Queue(path=str(path)))
    sent: List[Any] = []
    error: BaseException
    try:
        client.connect(wait=True, timeout=10)
        n = 0
        while True:  # until the disk is full (about a hundred 300-byte messages)
            assert n < 100_000, "the 256 KiB disk never filled"
            try:
                sent.append(client.send({"n": n, "pad": "x" * 300}, channel="disk"))
            except TetherError as exc:
                error = exc
                break
            n += 1
        # The send that could not be stored says why: the OSError of the disk.
        assert isinstance(error.__cause__, OSError), repr(error.__cause__)
        assert error.__cause__.errno == errno.ENOSPC
        assert "outbox" in str(error)
        # Every message that was stored was delivered.
        for delivery in sent:
            delivery.result(timeout=10)
        assert [m["n"] for m in tether_server.data_payloads("disk")] == list(range(len(sent)))
        # The client keeps working for what it can: more sends fail the same way,
        # each at once, and none spins the committer.
        for _ in range(3):
            with pytest.raises(TetherError) as info:
                client.send({"more": True, "pad": "x" * 300}, channel="disk")
            assert isinstance(info.value.__cause__, OSError)
    finally:
        before = failures.count
        started = time.monotonic()
        client.close(timeout=2)
        took = time.monotonic() - started
    # close() ended within its timeout and left no committer behind; before,
    # the committer retried the failed transaction for ever, thousands of
    # times a second, and outlived close().
    assert took < 2.5, f"close(timeout=2) took {took:.2f}s"
    assert outbox_threads() == []
    assert failures.count - before <= 3, f"{failures.count - before} failed commits at close"


@pytest.mark.timeout(120)
def test_after_a_full_disk_the_outbox_opens_again_and_works(
    tether_server: TetherServer, small_disk: Path
) -> None:
    path = small_disk / "outbox.sqlite"
    client = TetherClient(tether_server.url, queue=Queue(path=str(path)))
    try:
        client.connect(wait=True, timeout=10)
        n = 0
        while True:
            assert n < 100_000, "the 256 KiB disk never filled"
            try:
                client.send({"n": n, "pad": "x" * 300}, channel="disk").result(timeout=10)
            except TetherError:
                break
            n += 1
    finally:
        client.close(timeout=2)
    assert outbox_threads() == []
    # Room again: the same file opens (not corrupt) and takes messages.
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True, timeout=30)
    again = TetherClient(tether_server.url, queue=Queue(path=str(path)))
    try:
        again.connect(wait=True, timeout=10)
        again.send({"after": True}, channel="disk").result(timeout=10)
    finally:
        assert again.close(timeout=5)
    received = tether_server.data_payloads("disk")
    assert [m["n"] for m in received[:-1]] == list(range(n))
    assert received[-1] == {"after": True}
    assert os.stat(path).st_mode & 0o777 == 0o600


# The same in a subprocess whose file size limit (RLIMIT_FSIZE) is 256 KiB: for
# machines where no tmpfs can be mounted (this one runs everywhere). SQLite sees
# a short write (SQLITE_FULL) or EFBIG (SQLITE_IOERR).
_FSIZE_SCENARIO = r"""
import json, logging, resource, signal, sys, threading, time
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
from tether_sync import Queue, TetherClient
from tether_sync.exceptions import TetherError
from tether_sync.server import TetherServer

failed = [0]
class Count(logging.Handler):
    def emit(self, record):
        if "commit failed" in record.getMessage():
            failed[0] += 1
logger = logging.getLogger("tether_sync")
logger.setLevel(logging.DEBUG)
logger.addHandler(Count())

server = TetherServer(port=0)
server.start()
client = TetherClient(server.url, queue=Queue(path=sys.argv[1]))
client.connect(wait=True, timeout=10)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
sent, cause = [], None
for n in range(100_000):
    try:
        sent.append(client.send({"n": n, "pad": "x" * 300}, channel="disk"))
    except TetherError as exc:
        cause = exc.__cause__
        break
for d in sent:
    d.result(timeout=10)
received = [p["n"] for p in server.data_payloads("disk")]
before = failed[0]
started = time.monotonic()
client.close(timeout=2)
took = time.monotonic() - started
alive = [t.name for t in threading.enumerate() if t.name == "tether_sync-outbox"]
server.stop()
print(json.dumps({
    "sent": len(sent), "received": received, "took": took, "alive": alive,
    "cause": type(cause).__name__, "errno": getattr(cause, "errno", None),
    "failed_at_close": failed[0] - before,
}))
"""


@pytest.mark.timeout(120)
def test_a_file_size_limit_fails_the_sends_and_close_ends_in_time(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _FSIZE_SCENARIO, str(tmp_path / "outbox.sqlite")],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["sent"] > 10
    assert result["cause"] == "OSError"
    assert result["errno"] in (errno.ENOSPC, errno.EIO, errno.EFBIG)
    assert result["received"] == list(range(result["sent"]))
    assert result["took"] < 2.5 and result["alive"] == []
    assert result["failed_at_close"] <= 3
