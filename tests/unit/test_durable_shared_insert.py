"""A run of one channel and opcode is one row of ``batches``; it reads back the same."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest

from tether_sync.durable import BATCH_ROWS, DurableStore

SHARED_ROWS = BATCH_ROWS
SHARED_CHUNK = 256  # was the rows of one INSERT (format 1); still an odd size to try

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


def test_ids_with_a_newline_fall_back_to_a_row_each(tmp_path: Path) -> None:
    # The ids of a batch row are joined by newlines: one that holds one is stored
    # in a row of its own, and reads back the same.
    path = str(tmp_path / "outbox.sqlite")
    rows = [(f"id\n{n}" if n == 3 else f"id{n}", "c", 1, b"d%d" % n) for n in range(40)]
    store = DurableStore(path)
    try:
        assert store.append_many(rows) == list(range(1, 41))
        store.discard([1, 2])
    finally:
        assert store.close()
    reopened = DurableStore(path)
    try:
        got = [(m.msg_id, m.channel, m.op, m.data) for m in reopened.pending()]
    finally:
        assert reopened.close()
    assert got == rows[2:]
