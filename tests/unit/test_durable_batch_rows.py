"""Format 2: a run appended together is one row of ``batches`` (issue 22).

What a ``send_many()`` stores is one row for its whole run; acknowledged (or
dropped) messages inside it are kept as ranges in ``gone`` until the whole row
can go. Whatever was discarded stays discarded across a reopen, nothing else
is lost, and a file of format 1 is migrated when it is opened.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import List, Tuple

import pytest

from tether_sync import durable
from tether_sync.durable import BATCH_ROWS, FORMAT_VERSION, DurableStore

Row = Tuple[str, str, int, bytes]


def rows(count: int, tag: str = "m") -> List[Row]:
    return [(f"{tag}{n}", "ch", 1, b"payload %d" % n) for n in range(count)]


def pending(path: str) -> List[Tuple[int, str, bytes]]:
    store = DurableStore(path)
    try:
        return [(m.seq, m.msg_id, m.data) for m in store.pending()]
    finally:
        assert store.close()


def table_sizes(path: str) -> Tuple[int, int, int]:
    conn = sqlite3.connect(path)
    try:
        return tuple(  # type: ignore[return-value]
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("messages", "batches", "gone")
        )
    finally:
        conn.close()


def test_a_batch_is_one_row_and_reads_back_message_by_message(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite")
    batch = rows(1000)
    store = DurableStore(path)
    try:
        assert store.append("lone", "ch", 1, b"first") == 1
        assert store.append_batch(
            [m for m, _, _, _ in batch], "ch", 1, [d for _, _, _, d in batch]
        ) == list(range(2, 1002))
    finally:
        assert store.close()
    assert table_sizes(path) == (1, 1, 0)
    assert pending(path) == [(1, "lone", b"first")] + [
        (n + 2, m, d) for n, (m, _, _, d) in enumerate(batch)
    ]


def test_discards_inside_a_batch_stay_discarded_and_the_row_goes_with_the_last(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "outbox.sqlite")
    store = DurableStore(path)
    try:
        first = store.append_many(rows(100, "a"))  # seqs 1..100
        second = store.append_many(rows(50, "b"))  # seqs 101..150
        # Acks (a prefix), a drop in the middle, one twice, and a range across both rows.
        store.discard(range(1, 31))
        store.discard([40, 40, 41])
        store.discard(range(95, 106))
    finally:
        assert store.close()
    assert table_sizes(path) == (0, 2, 4)  # 1-30, 40-41, 95-100; 101-105
    left = [s for s in first + second if not (s <= 30 or s in (40, 41) or 95 <= s <= 105)]
    assert [seq for seq, _, _ in pending(path)] == left
    # The next process discards the rest: both rows and their ranges go.
    store = DurableStore(path)
    try:
        store.discard(left)
    finally:
        assert store.close()
    assert table_sizes(path) == (0, 0, 0)
    assert pending(path) == []


def test_discards_of_unknown_seqs_and_of_lone_rows_mix_with_batch_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite")
    store = DurableStore(path)
    try:
        store.append("x", "ch", 1, b"x")  # 1
        store.append_many(rows(BATCH_ROWS))  # 2..17, a batch row
        store.append("y", "ch", 1, b"y")  # 18
        store.discard([1, *range(2, 18), 18, 5000])
        assert store.append_many(rows(BATCH_ROWS, "z"))[0] == 19
    finally:
        assert store.close()
    assert table_sizes(path) == (0, 1, 0)
    assert [m for _, m, _ in pending(path)] == [f"z{n}" for n in range(BATCH_ROWS)]


def test_a_failed_transaction_keeps_its_discards_for_the_next(tmp_path: Path) -> None:
    # The map of live batch rows changes only once a transaction committed: a
    # failed one changes neither the file nor it. The authorizer refuses the
    # counter's write, after the transaction deleted the batch row.
    path = str(tmp_path / "outbox.sqlite")
    store = DurableStore(path)
    try:
        store.append_many(rows(40))  # 1..40
        refuse = True

        def authorizer(action: int, table: object, *args: object) -> int:
            meta = action == sqlite3.SQLITE_INSERT and table == "meta"
            return sqlite3.SQLITE_DENY if refuse and meta else sqlite3.SQLITE_OK

        store._conn.set_authorizer(authorizer)
        # All of the row, and unknown seqs enough to be due at once.
        store.discard([*range(1, 41), *range(10_000, 10_000 + durable.DISCARD_BATCH)])
        with pytest.raises(durable.TetherError, match="commit failed"):
            store.append("lost", "ch", 1, b"d")
        refuse = False
        store.append("ok", "ch", 1, b"d")
    finally:
        assert store.close()
    assert [m for _, m, _ in pending(path)] == ["ok"]
    assert table_sizes(path) == (1, 0, 0)


def _format_1_file(path: str, messages: List[Tuple[int, str, str, int, bytes]]) -> None:
    """An outbox as format 1 wrote it (no ``batches`` or ``gone``), closed cleanly."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size = 1024")
    conn.execute(f"PRAGMA application_id = {durable.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
    conn.execute(durable._MESSAGES)
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [
            ("format", durable.FORMAT_NAME),
            ("session_id", "0123456789abcdef0123456789abcdef"),
            ("last_seq", messages[-1][0]),
            ("clean", 1),
            ("fsync", 0),
        ],
    )
    conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", messages)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()


def test_a_format_1_file_is_migrated_and_keeps_its_messages(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite")
    old = [(n, f"old{n}", "ch", 1, b"data %d" % n) for n in range(7, 12)]
    _format_1_file(path, old)
    store = DurableStore(path)
    try:
        assert store.session_id == "0123456789abcdef0123456789abcdef"
        assert [(m.seq, m.msg_id, m.data) for m in store.pending()] == [
            (s, m, d) for s, m, _, _, d in old
        ]
        assert store.append_many(rows(20)) == list(range(12, 32))  # a batch row
        store.discard([7, 8, 12])
    finally:
        assert store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == FORMAT_VERSION == 2
    finally:
        conn.close()
    assert [seq for seq, _, _ in pending(path)] == [9, 10, 11, *range(13, 32)]


def test_an_inconsistent_batch_row_is_reported_as_damage(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite")
    store = DurableStore(path)
    try:
        store.append_many(rows(20))
    finally:
        assert store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE batches SET last = last + 1")
    conn.commit()
    conn.close()
    with pytest.raises(durable.TetherError, match="damaged"):
        DurableStore(path)


def test_a_run_of_big_messages_is_cut_into_rows_of_at_most_batch_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite refuses a blob over 1 GB: a send_many() of a thousand 16 MiB messages
    # must not become one row. Here the cap is 1,000 bytes: 100-byte messages go
    # ten to a row (too few for a row of batches: rows of messages), the lone
    # 5,000-byte one a row of messages, and runs of 20-byte ones rows of batches.
    monkeypatch.setattr(durable, "BATCH_BYTES", 1000)
    path = str(tmp_path / "outbox.sqlite")
    sizes = [20] * 60 + [5000] + [100] * 12 + [20] * 40
    batch = [(f"m{n}", "ch", 2, bytes([n % 256]) * size) for n, size in enumerate(sizes)]
    store = DurableStore(path)
    try:
        seqs = store.append_many(batch)
        assert seqs == list(range(1, len(batch) + 1))
        store.discard(seqs[10:70])
    finally:
        assert store.close()
    messages, batches, _ = table_sizes(path)
    assert batches >= 2 and messages >= 1
    want = [(s, m, d) for s, (m, _, _, d) in zip(seqs, batch) if not 11 <= s <= 70]
    assert pending(path) == want
    conn = sqlite3.connect(path)
    try:
        biggest = conn.execute("SELECT max(length(data)) FROM batches").fetchone()[0]
    finally:
        conn.close()
    assert biggest <= 1000
