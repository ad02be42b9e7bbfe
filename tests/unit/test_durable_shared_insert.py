"""A transaction of one channel binds fewer values: what it stores is the same (issue 22)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest

from tether_sync.durable import (
    SHARED_CHUNK,
    SHARED_ROWS,
    DurableStore,
    _Item,
    _shared_inserts,
    _shared_sql,
)

CHANNELS = ["a\x00b", "bench", "it's", "o''k", "é ✓ 通道", "a;DROP TABLE messages;--", "", "x\\y"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_batch_of_one_channel_reads_back_exactly(tmp_path: Path, channel: str) -> None:
    path = str(tmp_path / "outbox.sqlite")
    rows = [(f"id{n}", channel, 2 if n % 2 else 1, bytes([n]) * n) for n in range(SHARED_ROWS * 2)]
    # Alternating opcodes: not shared; one opcode: shared. Both read back the same.
    one_op = [(m, c, 1, d) for m, c, _, d in rows]
    store = DurableStore(path)
    try:
        assert store.append_many(rows) == list(range(1, len(rows) + 1))
        store.append_many(one_op)
    finally:
        assert store.close()
    reopened = DurableStore(path)
    try:
        got = [(m.msg_id, m.channel, m.op, m.data) for m in reopened.pending()]
    finally:
        assert reopened.close()
    assert got == rows + one_op
    assert all(type(c) is str for _, c, _, _ in got)


def test_mixed_channels_in_one_transaction_keep_each_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite")
    rows: List[Tuple[str, str, int, bytes]] = [
        (f"id{n}", "b" if n == SHARED_ROWS else "a", 1, b"d") for n in range(SHARED_ROWS * 2)
    ]
    store = DurableStore(path)
    try:
        store.append_many(rows)
    finally:
        assert store.close()
    reopened = DurableStore(path)
    try:
        assert [m.channel for m in reopened.pending()] == [c for _, c, _, _ in rows]
    finally:
        assert reopened.close()


@pytest.mark.parametrize("count", [SHARED_ROWS, 1000, SHARED_CHUNK * 2 + 7, 9000])
def test_batches_of_any_size_are_stored_whole_and_in_order(tmp_path: Path, count: int) -> None:
    # 9000: beyond MAX_BATCH, so two transactions of one channel each.
    path = str(tmp_path / "outbox.sqlite")
    rows = [(f"m{n}", "c", 1, n.to_bytes(2, "big")) for n in range(count)]
    store = DurableStore(path)
    try:
        store.append("lone", "c", 1, b"first")  # the seqs of the batch do not start at 1
        assert store.append_many(rows) == list(range(2, count + 2))
    finally:
        assert store.close()
    reopened = DurableStore(path)
    try:
        got = [(m.seq, m.msg_id, m.channel, m.op, m.data) for m in reopened.pending()]
    finally:
        assert reopened.close()
    assert got == [(1, "lone", "c", 1, b"first")] + [
        (n + 2, m, c, o, d) for n, (m, c, o, d) in enumerate(rows)
    ]


def test_the_shared_insert_binds_channel_and_opcode_once() -> None:
    sql = _shared_sql(3)
    assert sql.count("?1") == 3 and sql.count("?2") == 3
    inserts = _shared_inserts([_Item(f"i{n}", "ch", 2, b"d") for n in range(SHARED_CHUNK + 3)])
    assert inserts is not None
    assert [len(v) for _, v in inserts] == [2 + 3 * SHARED_CHUNK, 2 + 3 * 2, 2 + 3 * 1]
    assert inserts[0][1][:5] == ["ch", 2, 0, "i0", b"d"]
    assert _shared_inserts([_Item("a", "x", 1, b""), _Item("b", "y", 1, b"")]) is None
    assert _shared_inserts([_Item("a", "x", 1, b""), _Item("b", "x", 2, b"")]) is None
