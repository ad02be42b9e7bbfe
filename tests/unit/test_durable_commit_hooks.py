"""The durable store's batch commit hook (``on_commit_refs``): one call per transaction."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, List, Tuple

from tether_sync.durable import DurableStore


def test_on_commit_refs_gets_a_transactions_seqs_and_refs_in_one_call(tmp_path: Path) -> None:
    calls: List[Tuple[List[int], List[Any]]] = []
    store = DurableStore(
        str(tmp_path / "outbox.sqlite"),
        on_commit_refs=lambda seqs, refs: calls.append((list(seqs), list(refs))),
    )
    try:
        # A lone append without on_commit_ref: the batch hook, with one item.
        assert store.append("a", "c", 1, b"d", ref="first") == 1
        seqs = store.append_many(
            [("b", "c", 1, b"d"), ("c", "c", 1, b"d"), ("d", "c", 1, b"d")],
            refs=["x", None, "z"],  # a message without a ref is not handed on
        )
        store.append_many([("e", "c", 1, b"d")])  # no refs at all: no call
    finally:
        assert store.close()
    assert seqs == [2, 3, 4]
    assert calls == [([1], ["first"]), ([2, 4], ["x", "z"])]


def test_a_lone_append_still_calls_on_commit_ref_when_both_are_given(tmp_path: Path) -> None:
    single: List[Tuple[int, Any]] = []
    batches: List[Tuple[List[int], List[Any]]] = []
    store = DurableStore(
        str(tmp_path / "outbox.sqlite"),
        on_commit_ref=lambda seq, ref: single.append((seq, ref)),
        on_commit_refs=lambda seqs, refs: batches.append((list(seqs), list(refs))),
    )
    try:
        store.append("a", "c", 1, b"d", ref="lone")
        store.append_many([("b", "c", 1, b"d"), ("c", "c", 1, b"d")], refs=["m1", "m2"])
    finally:
        assert store.close()
    assert single == [(1, "lone")]
    assert batches == [([2, 3], ["m1", "m2"])]


def test_a_raising_batch_hook_is_logged_and_the_appenders_go_on(tmp_path: Path) -> None:
    seen = threading.Event()

    def hook(seqs: List[int], refs: List[Any]) -> None:
        seen.set()
        raise RuntimeError("boom")

    store = DurableStore(str(tmp_path / "outbox.sqlite"), on_commit_refs=hook)
    try:
        assert store.append_many([("a", "c", 1, b"d"), ("b", "c", 1, b"d")], refs=[1, 2]) == [1, 2]
        assert seen.is_set()
        assert [m.seq for m in store.pending()] == []  # pending() is what an open found
    finally:
        assert store.close()
