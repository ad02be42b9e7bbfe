"""The durable outbox (DESIGN §5, issue 11): kill -9 the client, start it again."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import pytest
from support.recorder import eventually

from tether_sync import Queue, TetherClient, TetherError
from tether_sync.server import TetherServer

SENDER = Path(__file__).resolve().parents[1] / "support" / "durable_sender.py"
COUNT = 3000


def _start(url: str, path: Path, start: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SENDER), url, str(path), str(start), str(COUNT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.timeout(120)
def test_a_client_killed_three_times_mid_send_loses_and_duplicates_nothing(
    tether_server: TetherServer, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.sqlite"
    rng = random.Random()
    committed = -1  # the highest number whose send() returned
    for kill in range(3):
        proc = _start(tether_server.url, outbox, committed + 1)
        assert proc.stdout is not None
        target = committed + rng.randint(200, 700)
        lines: List[str] = []
        done = threading.Event()

        def read(
            p: subprocess.Popen[str] = proc,
            lines: List[str] = lines,
            target: int = target,
            done: threading.Event = done,
        ) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                lines.append(line.strip())
                if line.strip().isdigit() and int(line) >= target:
                    done.set()
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert done.wait(60), f"run {kill}: the sender stalled"
        proc.send_signal(signal.SIGKILL)  # mid-send, nothing flushed or closed
        proc.wait(10)
        reader.join(5)
        numbers = [int(x) for x in lines if x.isdigit()]
        assert numbers, f"run {kill} sent nothing"
        # The app's own bookkeeping: what it printed, and what the server already
        # has (a send that was acked just before the kill was never printed).
        committed = max([*numbers, *tether_server.data_payloads("d")])
    # The last run sends the rest and closes cleanly.
    proc = _start(tether_server.url, outbox, committed + 1)
    out, _ = proc.communicate(timeout=90)
    assert "closed True" in out
    assert tether_server.wait_for_data(COUNT, timeout=30, channel="d")
    got = tether_server.data_payloads("d")
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} duplicated"
    assert sorted(got) == list(range(COUNT)), "a committed message was lost"
    assert got == list(range(COUNT)), "out of order"


def test_a_second_live_client_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    first = TetherClient("ws://127.0.0.1:9/", queue=Queue(path=str(path)))
    try:
        with pytest.raises(TetherError, match="in use"):
            TetherClient("ws://127.0.0.1:9/", queue=Queue(path=str(path)))
    finally:
        first.close(timeout=1)


def test_a_foreign_file_is_refused_at_construction(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database, but the user's notes\n" * 100)
    with pytest.raises(TetherError, match=str(path.name)):
        TetherClient("ws://127.0.0.1:9/", queue={"path": str(path)})
    assert path.read_bytes().startswith(b"not a database")  # untouched


@pytest.mark.timeout(60)
def test_messages_left_at_close_are_sent_by_the_next_process(
    tether_server: TetherServer, dead_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.sqlite"
    offline = TetherClient(dead_url, queue={"path": str(path)})
    offline.connect()
    for n in range(50):
        offline.send(n, channel="later")
    assert offline.close(timeout=1) is False  # not sent: kept in the file
    again = TetherClient(tether_server.url, queue={"path": str(path)})
    try:
        again.connect(wait=True, timeout=10)
        assert again.flush(timeout=10)
        assert eventually(lambda: tether_server.data_count("later") == 50)
        assert tether_server.data_payloads("later") == list(range(50))
    finally:
        again.close(timeout=5)
