"""After a full disk, the same process opens the outbox file again at once.

A lone append that failed on the full disk left its statement unreset; closing
the connection then kept it alive (a zombie with the file's lock) for as long
as the old store was referenced, and opening the file again failed with
"database is locked". On a real 256 KiB tmpfs (conftest.py's ``small_disk``,
as in ``test_disk_full.py``; the tests run as root in CI).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tether_sync.durable import DurableStore
from tether_sync.exceptions import TetherError


def test_the_file_opens_again_while_the_old_store_is_still_referenced(small_disk: Path) -> None:
    path = str(small_disk / "outbox.sqlite")
    store = DurableStore(path)
    stored = 0
    while True:
        assert stored < 10_000, "the 256 KiB disk never filled"
        try:
            store.append(f"id{stored}", "disk", 1, b"x" * 330)  # lone appends
        except TetherError:
            break
        stored += 1
    store.close(timeout=5)  # False: the final commit found no room either
    assert not store.committer_alive
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True, timeout=30)
    # ``store`` is still referenced (as a client keeps its own): the file opens.
    again = DurableStore(path)
    try:
        assert [m.msg_id for m in again.pending()] == [f"id{n}" for n in range(stored)]
        assert again.append("after", "disk", 1, b"y") > 0
    finally:
        assert again.close()
    assert store.path == path
