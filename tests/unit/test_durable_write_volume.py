"""What discarding acknowledged messages writes to disk (issue 22).

Acknowledged messages leave the file by a delete. On SQLite builds whose
``secure_delete`` defaults to on (Debian's, Ubuntu's), that delete overwrote
every freed page with zeros: discarding a ``send_many()`` batch wrote as many
pages as storing it had, about half of what a ``send_many()`` cost the store.
The store sets ``secure_delete`` to ``FAST`` on every build.
"""

from __future__ import annotations

import os
from pathlib import Path

from tether_sync.durable import DISCARD_BATCH, DurableStore


def wal_size(path: str) -> int:
    return os.path.getsize(path + "-wal")


def test_discarding_an_acknowledged_batch_does_not_rewrite_its_pages(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite")
    count = DISCARD_BATCH + 100  # enough to be written by the next transaction
    payloads = [b"%06d" % n + b"x" * 194 for n in range(count)]  # 200 bytes each
    store = DurableStore(path)
    try:
        assert store.append("first", "ch", 1, b"first") == 1
        before = wal_size(path)
        seqs = store.append_batch([f"m{n}" for n in range(count)], "ch", 1, payloads)
        stored = wal_size(path) - before
        assert stored > count * 200  # the batch went to the WAL (no checkpoint came)
        store.discard(seqs)
        # The next transaction carries the discards (DISCARD_BATCH of them are due).
        store.append("last", "ch", 1, b"last")
        discarded = wal_size(path) - before - stored
    finally:
        assert store.close()
    # The delete rewrote a few pages (the rows' tree, the free list), not the batch's.
    assert discarded < stored / 10, (discarded, stored)  # 245,232 of 243,136 bytes before
    reopened = DurableStore(path)
    try:
        assert [(m.msg_id, m.data) for m in reopened.pending()] == [
            ("first", b"first"),
            ("last", b"last"),
        ]
    finally:
        assert reopened.close()
