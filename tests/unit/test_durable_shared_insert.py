"""A transaction of one channel binds fewer values: what it stores is the same (issue 22)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest

from tether_sync.durable import SHARED_ROWS, DurableStore, _Item, _shared_sql

CHANNELS = ["bench", "it's", "o''k", "é ✓ 通道", "a;DROP TABLE messages;--", "", "x\\y"]


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


def test_channels_that_cannot_be_a_literal_take_the_bound_form() -> None:
    def sql(channel: str) -> object:
        return _shared_sql([_Item("i", channel, 1, b"d"), _Item("j", channel, 1, b"d")])

    assert sql("a\x00b") is None  # NUL ends an SQL literal
    assert sql("\ud800") is None  # a lone surrogate is no UTF-8
    assert sql("it's") == (
        "INSERT INTO messages (seq, msg_id, channel, op, data) VALUES (?, ?, 'it''s', 1, ?)"
    )
