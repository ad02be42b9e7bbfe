"""A full batch of discards rides with the next append: no hand-off of its own (issue 22).

Before, ``discard()`` kicked the background committer as soon as
:data:`DISCARD_BATCH` had gathered; an ``append_many()`` arriving meanwhile then
queued behind it and waited for that thread to commit its batch (a thread
hand-off for every batch of a ``send_many()`` stream, with acks coming in).
The commit hook shows which thread committed (it runs on the committing one).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, List

import pytest

from tether_sync import durable
from tether_sync.durable import DISCARD_BATCH, DurableStore


def test_discards_are_carried_by_the_next_append_many_on_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No deadline during the test: a stalled machine must not let the background
    # thread write them first (it would, rightly, after DISCARD_DELAY).
    monkeypatch.setattr(durable, "DISCARD_DELAY", 60.0)
    path = str(tmp_path / "outbox.sqlite")
    threads: List[str] = []

    def hook(seqs: List[int], refs: List[Any]) -> None:
        threads.append(threading.current_thread().name)

    store = DurableStore(path, on_commit_refs=hook)
    rounds = 20
    try:
        rows = [(f"m{n}", "c", 1, b"d") for n in range(DISCARD_BATCH)]
        refs = list(range(DISCARD_BATCH))
        first = store.append_many(rows, refs=refs)
        before = store.transactions
        for _ in range(rounds):
            store.discard(first)  # a full batch: due, carried by the next transaction
            first = store.append_many(rows, refs=refs)
        assert store.transactions - before == rounds  # one each, none for the DELETEs
    finally:
        assert store.close()
    assert threads == [threading.current_thread().name] * (rounds + 1)
    again = DurableStore(path)
    try:
        assert [m.seq for m in again.pending()] == first  # only the last batch is left
    finally:
        assert again.close()
