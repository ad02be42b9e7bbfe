"""Many threads appending to one DurableStore: group commit, unique dense seqs.

Threads start together on a Barrier and are joined with timeouts; nothing sleeps.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, List, Optional

from tether_sync.durable import DurableStore, StoredMessage

WAIT = 30.0
THREADS = 8
PER_THREAD = 300


class Appender(threading.Thread):
    def __init__(self, store: DurableStore, name: str, barrier: threading.Barrier) -> None:
        super().__init__(daemon=True, name=name)
        self.store = store
        self.barrier = barrier
        self.seqs: List[int] = []
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.barrier.wait(WAIT)
            for i in range(PER_THREAD):
                self.seqs.append(self.store.append(f"{self.name}-{i}", self.name, 1, b"x" * 64))
        except BaseException as exc:  # reported by the test
            self.error = exc


def run_appenders(store: DurableStore) -> List[Appender]:
    barrier = threading.Barrier(THREADS)
    threads = [Appender(store, f"t{n}", barrier) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), f"{t.name} still appending after {WAIT} s"
        assert t.error is None, repr(t.error)
    return threads


def test_concurrent_appends_are_all_committed_with_unique_dense_seqs(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite")
    hooked: List[int] = []
    store = DurableStore(path, on_commit=lambda ms: hooked.extend(m.seq for m in ms))
    try:
        threads = run_appenders(store)
        total = THREADS * PER_THREAD
        every = sorted(s for t in threads for s in t.seqs)
        assert every == list(range(1, total + 1))  # unique and dense
        for t in threads:
            assert t.seqs == sorted(t.seqs)  # each thread's messages in its own order
        assert hooked == list(range(1, total + 1))  # the hook saw them in seq order, once
        assert store.appended == total
        assert store.transactions < total  # grouped: some transactions carried several
    finally:
        assert store.close()

    again = DurableStore(path)
    try:
        pending = again.pending()
    finally:
        again.close()
    assert [m.seq for m in pending] == list(range(1, total + 1))
    by_seq: Dict[int, StoredMessage] = {m.seq: m for m in pending}
    for t in threads:
        for i, seq in enumerate(t.seqs):
            assert by_seq[seq].msg_id == f"{t.name}-{i}"
            assert by_seq[seq].channel == t.name


def test_concurrent_appends_with_fsync_share_transactions(tmp_path: Path) -> None:
    store = DurableStore(str(tmp_path / "outbox.sqlite"), fsync=True)
    try:
        threads = run_appenders(store)
        total = THREADS * PER_THREAD
        assert sorted(s for t in threads for s in t.seqs) == list(range(1, total + 1))
        # An fsync takes long enough for the others to queue up behind it.
        assert store.transactions <= total // 2
    finally:
        assert store.close()


def test_discards_and_raises_from_another_thread_interleave_with_appends(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "outbox.sqlite")
    acked = threading.Event()
    committed: List[int] = []
    lock = threading.Lock()

    def hook(ms: List[StoredMessage]) -> None:
        with lock:
            committed.extend(m.seq for m in ms)
        acked.set()

    store = DurableStore(path, on_commit=hook)
    stop = threading.Event()
    discarded: List[int] = []

    def acker() -> None:  # plays the I/O thread: discards what was committed, never waits
        while not stop.is_set():
            acked.wait(0.5)
            acked.clear()
            with lock:
                batch, committed[:] = committed[:], []
            store.discard(batch)
            discarded.extend(batch)

    ack_thread = threading.Thread(target=acker, daemon=True)
    ack_thread.start()
    try:
        threads = run_appenders(store)
    finally:
        stop.set()
        acked.set()
        ack_thread.join(WAIT)
    total = THREADS * PER_THREAD
    with lock:
        store.discard(committed)
        discarded.extend(committed)
    assert sorted(discarded) == list(range(1, total + 1))
    assert sorted(s for t in threads for s in t.seqs) == list(range(1, total + 1))
    assert store.close()
    again = DurableStore(path)
    try:
        assert again.pending() == []
        assert again.last_seq == total
    finally:
        again.close()


def test_concurrent_appends_with_refs_hand_each_ref_its_own_seq_in_order(
    tmp_path: Path,
) -> None:
    got: List[tuple] = []
    store = DurableStore(
        str(tmp_path / "outbox.sqlite"), on_commit_ref=lambda seq, ref: got.append((seq, ref))
    )
    barrier = threading.Barrier(THREADS)
    returned: Dict[tuple, int] = {}
    errors: List[BaseException] = []

    def work(name: str) -> None:
        try:
            barrier.wait(WAIT)
            for i in range(PER_THREAD):
                returned[(name, i)] = store.append(f"{name}-{i}", name, 1, b"x", ref=(name, i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{n}",), daemon=True) for n in range(THREADS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
            assert not t.is_alive(), f"{t.name} still appending after {WAIT} s"
    finally:
        assert store.close()
    assert not errors, repr(errors[0])
    total = THREADS * PER_THREAD
    assert [seq for seq, _ in got] == list(range(1, total + 1))  # once each, in seq order
    assert {ref: seq for seq, ref in got} == returned  # each ref with the seq append() gave
