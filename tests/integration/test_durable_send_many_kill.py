"""``send_many()`` on a durable outbox, killed with kill -9 mid-stream (issue 22).

A ``send_many()`` stores its run as one row of ``batches`` and the acks
discard it range by range (``gone``): killed at random moments, the next
process must resend every committed message the server had not acknowledged,
and the server must get each number once, in order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.kill_loop import kill_mid_send

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
    committed = kill_mid_send(
        lambda first: _start(tether_server.url, outbox, first), tether_server, (1_000, 4_000)
    )
    proc = _start(tether_server.url, outbox, committed + 1, last=True)
    out, err = proc.communicate(timeout=120)
    assert "closed True" in out, err[-3000:]
    assert tether_server.wait_for_data(COUNT, timeout=60, channel="d")
    got = tether_server.data_payloads("d")
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} duplicated"
    assert sorted(got) == list(range(COUNT)), "a committed message was lost"
    assert got == list(range(COUNT)), "out of order"
