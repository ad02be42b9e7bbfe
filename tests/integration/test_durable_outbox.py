"""The durable outbox (DESIGN §5, issue 11): kill -9 the client, start it again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.kill_loop import kill_mid_send
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
    committed = kill_mid_send(
        lambda first: _start(tether_server.url, outbox, first), tether_server, (200, 700)
    )
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
