"""``send_many()`` on a durable outbox, killed with kill -9 mid-stream (issue 22).

A ``send_many()`` stores its run as one row of ``batches`` and the acks
discard it range by range (``gone``): killed at random moments, the next
process must resend every committed message the server had not acknowledged,
and the server must get each number once, in order.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import pytest

from tether_sync.server import TetherServer

SENDER = Path(__file__).resolve().parents[1] / "support" / "durable_many_sender.py"
COUNT = 20_000


def _start(url: str, path: Path, start: int, last: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SENDER), url, str(path), str(start), str(COUNT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if last else subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.timeout(180)
def test_send_many_killed_three_times_loses_and_duplicates_nothing(
    tether_server: TetherServer, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.sqlite"
    rng = random.Random()
    committed = -1  # the highest number whose send_many() returned
    for kill in range(3):
        proc = _start(tether_server.url, outbox, committed + 1)
        assert proc.stdout is not None
        target = committed + rng.randint(1_000, 4_000)
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
        proc.send_signal(signal.SIGKILL)  # mid-stream, nothing flushed or closed
        proc.wait(10)
        reader.join(5)
        numbers = [int(x) for x in lines if x.isdigit()]
        assert numbers, f"run {kill} sent nothing"
        committed = max([*numbers, *tether_server.data_payloads("d")])
    proc = _start(tether_server.url, outbox, committed + 1, last=True)
    out, err = proc.communicate(timeout=120)
    assert "closed True" in out, err[-3000:]
    assert tether_server.wait_for_data(COUNT, timeout=60, channel="d")
    got = tether_server.data_payloads("d")
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} duplicated"
    assert sorted(got) == list(range(COUNT)), "a committed message was lost"
    assert got == list(range(COUNT)), "out of order"
