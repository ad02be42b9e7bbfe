"""Tests of tether_sync.durable.DurableStore, the durable outbox file.

Real files in tmp_path, real child processes for the lock and for kill -9.
Nothing sleeps: waits are on Events, pipes and process exits, with timeouts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from tether_sync import durable
from tether_sync.durable import (
    CRASH_SEQ_GAP,
    DISCARD_BATCH,
    DurableStore,
    StoredMessage,
)
from tether_sync.exceptions import ClientClosed, TetherError

WAIT = 10.0  # seconds a test waits for something that should happen at once
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "outbox.sqlite")


@pytest.fixture
def opened() -> Iterator[List[DurableStore]]:
    """Stores to close at teardown, whatever the test did."""
    stores: List[DurableStore] = []
    yield stores
    for s in stores:
        s.close()


def open_store(opened: List[DurableStore], path: str, **kw: object) -> DurableStore:
    store = DurableStore(path, **kw)  # type: ignore[arg-type]
    opened.append(store)
    return store


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


# -- create, reopen, pending ---------------------------------------------------------------


def test_a_missing_file_is_created_with_a_new_session(path: str) -> None:
    store = DurableStore(path)
    try:
        assert 0 < len(store.session_id) <= 64
        assert store.last_seq == 0
        assert store.pending() == []
        assert os.path.exists(path) and os.path.exists(path + ".lock")
    finally:
        assert store.close() is True
    other = DurableStore(path + ".2")
    assert other.session_id != store.session_id
    other.close()


def test_reopen_keeps_session_counter_and_messages_in_seq_order(path: str) -> None:
    store = DurableStore(path)
    sid = store.session_id
    seqs = [store.append(f"m{i}", f"ch{i % 2}", 1 + i % 2, bytes([i]) * 64) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert store.last_seq == 5
    assert store.close()

    again = DurableStore(path)
    try:
        assert again.session_id == sid
        assert again.last_seq == 5
        assert again.pending() == [
            StoredMessage(i + 1, f"m{i}", f"ch{i % 2}", 1 + i % 2, bytes([i]) * 64)
            for i in range(5)
        ]
        assert again.append("m5", "ch", 1, b"x") == 6  # numbering goes on
    finally:
        again.close()


def test_an_empty_file_is_taken_as_new(path: str) -> None:
    Path(path).write_bytes(b"")
    store = DurableStore(path)
    assert store.append("a", "c", 1, b"x") == 1
    assert store.close()
    again = DurableStore(path)
    try:
        assert [m.seq for m in again.pending()] == [1]
    finally:
        again.close()


def test_discard_removes_messages_for_the_next_open(path: str) -> None:
    store = DurableStore(path)
    for i in range(6):
        store.append(f"m{i}", "c", 1, b"d")
    store.discard([2, 4, 99])  # 99 does not exist: ignored
    store.discard([])
    assert store.close()
    again = DurableStore(path)
    try:
        assert [m.seq for m in again.pending()] == [1, 3, 5, 6]
    finally:
        again.close()


def test_the_counter_survives_discarding_everything(path: str) -> None:
    store = DurableStore(path)
    for i in range(3):
        store.append(f"m{i}", "c", 1, b"d")
    store.discard([1, 2, 3])
    assert store.close()
    again = DurableStore(path)
    try:
        assert again.pending() == []
        assert again.last_seq == 3
        assert again.append("n", "c", 1, b"d") == 4
    finally:
        again.close()


def test_raise_seq_moves_numbering_at_once_and_persists(path: str) -> None:
    store = DurableStore(path)
    store.append("a", "c", 1, b"d")
    store.raise_seq(100)
    store.raise_seq(50)  # never lowers
    assert store.last_seq == 100
    assert store.append("b", "c", 1, b"d") == 101
    store.raise_seq(500)  # written by the background committer, no append after it
    assert store.close()
    again = DurableStore(path)
    try:
        assert again.last_seq == 500
        assert [m.seq for m in again.pending()] == [1, 101]
        assert again.append("c", "c", 1, b"d") == 501
    finally:
        again.close()


def test_append_many_numbers_consecutively(path: str, opened: List[DurableStore]) -> None:
    store = open_store(opened, path)
    store.append("first", "c", 1, b"0")
    seqs = store.append_many([(f"m{i}", "c", 1, b"x") for i in range(100)], timeout=WAIT)
    assert seqs == list(range(2, 102))


def test_a_closed_store_refuses_work_and_close_is_idempotent(path: str) -> None:
    store = DurableStore(path)
    assert store.close()
    assert store.close()
    with pytest.raises(ClientClosed):
        store.append("a", "c", 1, b"d")
    with pytest.raises(ClientClosed):
        store.discard([1])
    with pytest.raises(ClientClosed):
        store.raise_seq(5)


# -- files that are not ours -------------------------------------------------------------


def test_random_bytes_give_a_clear_error_and_are_left_alone(path: str) -> None:
    Path(path).write_bytes(random.Random(11).randbytes(8192))
    before = digest(path)
    with pytest.raises(TetherError, match="not a SQLite file") as info:
        DurableStore(path)
    assert path in str(info.value)
    assert digest(path) == before
    DurableStore(path + ".other").close()  # the failed open released its lock
    with pytest.raises(TetherError):  # and can be retried: same answer
        DurableStore(path)


def test_a_damaged_sqlite_file_gives_a_clear_error(path: str) -> None:
    store = DurableStore(path)
    for i in range(200):
        store.append(f"m{i}", "c", 1, b"x" * 200)
    assert store.close()
    raw = bytearray(Path(path).read_bytes())
    rng = random.Random(5)
    for i in range(100, len(raw)):  # keep the header, scramble the pages
        raw[i] = rng.randrange(256)
    Path(path).write_bytes(bytes(raw))
    before = digest(path)
    with pytest.raises(TetherError) as info:
        DurableStore(path)
    assert path in str(info.value)
    assert digest(path) == before


def test_a_foreign_sqlite_file_gives_a_clear_error_and_is_left_alone(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('ada')")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(TetherError, match="not a tether_sync outbox") as info:
        DurableStore(path)
    assert path in str(info.value)
    assert digest(path) == before
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]
    conn.close()


def test_an_empty_but_initialized_sqlite_file_is_foreign(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")  # writes a header page, no tables
    conn.close()
    with pytest.raises(TetherError, match="not a tether_sync outbox"):
        DurableStore(path)


def test_a_newer_format_version_is_refused(path: str) -> None:
    store = DurableStore(path)
    store.append("a", "c", 1, b"d")
    assert store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {durable.FORMAT_VERSION + 1}")
    conn.close()
    before = digest(path)
    newer = durable.FORMAT_VERSION + 1
    with pytest.raises(TetherError, match=rf"format version {newer}.*newer") as info:
        DurableStore(path)
    assert path in str(info.value)
    assert digest(path) == before


def test_our_marker_without_our_metadata_is_damaged(path: str) -> None:
    store = DurableStore(path)
    assert store.close()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE key = 'session_id'")
    conn.commit()
    conn.close()
    with pytest.raises(TetherError, match="damaged"):
        DurableStore(path)


# -- the lock ---------------------------------------------------------------------------


def test_a_second_store_in_this_process_is_refused_until_the_first_closes(path: str) -> None:
    first = DurableStore(path)
    try:
        with pytest.raises(TetherError, match=rf"in use by another process \(pid {os.getpid()}"):
            DurableStore(path)
        assert first.append("a", "c", 1, b"d") == 1  # the refused open changed nothing
    finally:
        first.close()
    second = DurableStore(path)
    try:
        assert [m.seq for m in second.pending()] == [1]
    finally:
        second.close()


HOLDER = """
    import sys
    from tether_sync.durable import DurableStore
    store = DurableStore(sys.argv[1])
    store.append("held", "c", 1, b"d")
    print("ready", flush=True)
    sys.stdin.readline()
    store.close()
    print("closed", flush=True)
"""


def test_a_second_process_is_refused_with_the_holders_pid(path: str) -> None:
    child = run_child(HOLDER, path)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read()  # type: ignore[union-attr]
        with pytest.raises(TetherError, match=rf"in use by another process \(pid {child.pid}\)"):
            DurableStore(path)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "closed"
        assert child.wait(WAIT) == 0
    finally:
        child.kill()
        child.wait(WAIT)
    store = DurableStore(path)
    try:
        assert [m.msg_id for m in store.pending()] == ["held"]
    finally:
        store.close()


def test_the_lock_of_a_killed_process_is_free(path: str) -> None:
    child = run_child(HOLDER, path)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    finally:
        child.kill()
        child.wait(WAIT)
    store = DurableStore(path)
    try:
        assert [m.msg_id for m in store.pending()] == ["held"]
    finally:
        store.close()


# -- fork ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_cannot_use_the_parents_store(path: str) -> None:
    store = DurableStore(path)
    try:
        store.append("before", "c", 1, b"d")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what each call did, then leave at once
            outcome = []
            for call in (
                lambda: store.append("child", "c", 1, b"d"),
                lambda: store.discard([1]),
                store.pending,
            ):
                try:
                    call()
                    outcome.append("ok")
                except TetherError as exc:
                    outcome.append("forked child" if "forked child" in str(exc) else repr(exc))
                except BaseException as exc:
                    outcome.append(repr(exc))
            outcome.append(str(store.close()))
            os.write(write_end, ",".join(outcome).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert status == 0
        assert report == "forked child,forked child,forked child,True"
        # The parent is unharmed: it still holds the lock and keeps working.
        with pytest.raises(TetherError, match="in use"):
            DurableStore(path)
        assert store.append("after", "c", 1, b"d") == 2
    finally:
        assert store.close()
    again = DurableStore(path)
    try:
        assert [m.msg_id for m in again.pending()] == ["before", "after"]
    finally:
        again.close()


# -- group commit, timeouts, the commit hook ----------------------------------------------


class Gate:
    """An ``on_commit`` hook that holds the committer on its first call until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.calls: List[List[int]] = []

    def __call__(self, messages: List[StoredMessage]) -> None:
        self.calls.append([m.seq for m in messages])
        if len(self.calls) == 1:
            self.entered.set()
            assert self.opened.wait(WAIT)


def test_appends_during_a_commit_share_the_next_transaction(
    path: str, opened: List[DurableStore]
) -> None:
    gate = Gate()
    store = open_store(opened, path, on_commit=gate)
    leader = threading.Thread(target=store.append, args=("lead", "c", 1, b"d"), daemon=True)
    leader.start()
    assert gate.entered.wait(WAIT)  # the leader's commit is running (held in the hook)
    handles = [store.append_async(f"m{i}", "c", 1, b"d") for i in range(8)]
    assert store.backlog == 8
    assert not any(h.done() for h in handles)
    gate.opened.set()
    assert [h.result(WAIT) for h in handles] == list(range(2, 10))
    leader.join(WAIT)
    assert gate.calls == [[1], list(range(2, 10))]
    assert store.transactions == 2
    assert store.appended == 9


def test_a_timed_out_append_is_withdrawn_before_its_commit(path: str) -> None:
    gate = Gate()
    store = DurableStore(path, on_commit=gate)
    leader = threading.Thread(target=store.append, args=("lead", "c", 1, b"d"), daemon=True)
    leader.start()
    try:
        assert gate.entered.wait(WAIT)
        with pytest.raises(TimeoutError):
            store.append("late", "c", 1, b"d", timeout=0.05)
        gate.opened.set()
        leader.join(WAIT)
        assert store.append("next", "c", 1, b"d") == 2  # the withdrawn one got no seq
    finally:
        gate.opened.set()
        assert store.close()
    again = DurableStore(path)
    try:
        assert [m.msg_id for m in again.pending()] == ["lead", "next"]
    finally:
        again.close()


def test_a_raising_hook_is_logged_and_the_append_still_returns(
    path: str, opened: List[DurableStore], caplog: pytest.LogCaptureFixture
) -> None:
    def hook(messages: List[StoredMessage]) -> None:
        raise RuntimeError("boom")

    store = open_store(opened, path, on_commit=hook)
    with caplog.at_level(logging.ERROR, logger="tether_sync"):
        assert store.append("a", "c", 1, b"d") == 1
    assert "on_commit callback raised" in caplog.text


# -- crashes --------------------------------------------------------------------------------

UNCLEAN = """
    import os, sys
    from tether_sync.durable import DurableStore
    store = DurableStore(sys.argv[1], fsync=sys.argv[2] == "1")
    for i in range(3):
        store.append(f"m{i}", "c", 1, b"d")
    os._exit(0)  # no close(): the end of a crashed process
"""


@pytest.mark.parametrize("fsync", [False, True])
def test_an_unclean_end_skips_seq_numbers_only_without_fsync(path: str, fsync: bool) -> None:
    child = run_child(UNCLEAN, path, "1" if fsync else "0")
    _, err = child.communicate(timeout=WAIT * 3)
    assert child.returncode == 0, err
    store = DurableStore(path)
    try:
        assert [m.seq for m in store.pending()] == [1, 2, 3]
        gap = 0 if fsync else CRASH_SEQ_GAP
        assert store.last_seq == 3 + gap
        assert store.append("n", "c", 1, b"d") == 4 + gap
    finally:
        assert store.close()
    again = DurableStore(path)  # closed cleanly this time: nothing skipped
    try:
        assert again.last_seq == 4 + (0 if fsync else CRASH_SEQ_GAP)
    finally:
        again.close()


DISCARDER = """
    import os, sys
    from tether_sync.durable import DISCARD_BATCH, DurableStore
    store = DurableStore(sys.argv[1])
    for i in range(DISCARD_BATCH + 2):
        store.append(f"m{i}", "c", 1, b"d")
    store.discard(range(1, DISCARD_BATCH + 1))  # a full batch: due at once
    store.append("after", "c", 1, b"d")  # committed after (or with) the discards
    os._exit(0)  # no close(): nothing is flushed on the way out
"""


def test_a_full_batch_of_discards_is_in_the_file_before_the_next_append_returns(
    path: str,
) -> None:
    child = run_child(DISCARDER, path)
    _, err = child.communicate(timeout=WAIT * 3)
    assert child.returncode == 0, err
    store = DurableStore(path)
    try:
        pending = store.pending()
        assert [m.seq for m in pending] == [DISCARD_BATCH + 1, DISCARD_BATCH + 2, DISCARD_BATCH + 3]
        assert pending[-1].msg_id == "after"
    finally:
        store.close()


def test_on_commit_ref_gets_each_seq_with_its_ref_in_order(path: str) -> None:
    got: List[tuple] = []
    lists: List[List[int]] = []
    store = DurableStore(
        path,
        on_commit=lambda ms: lists.append([m.seq for m in ms]),
        on_commit_ref=lambda seq, ref: got.append((seq, ref)),
    )
    try:
        assert store.append("a", "c", 1, b"d", ref="first") == 1
        store.append("b", "c", 1, b"d")  # no ref: on_commit only
        store.discard(range(1, DISCARD_BATCH + 1))  # the next append carries them
        assert store.append("c", "c", 1, b"d", ref="third") == 3
        seqs = store.append_many([("d", "c", 1, b"d"), ("e", "c", 1, b"d")])
    finally:
        assert store.close()
    assert got == [(1, "first"), (3, "third")]
    assert [s for batch in lists for s in batch] == [1, 2, 3, *seqs]


SENDER = """
    import sys
    from tether_sync.durable import DurableStore
    store = DurableStore(sys.argv[1])
    print("session", store.session_id, flush=True)
    i = int(sys.argv[2])
    while True:
        seq = store.append(f"m{i}", "numbers", 1, str(i).encode())
        print(seq, i, flush=True)
        i += 1
"""


def test_kill_9_mid_append_loses_nothing_that_was_acknowledged(path: str) -> None:
    """Three runs on one file, each killed at a random moment while appending."""
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    printed: List[int] = []  # every seq whose append returned, over all runs
    numbers: dict = {}  # seq -> the number appended with it
    session: Optional[str] = None
    next_number = 0
    for run in range(3):
        target = rng.randrange(20, 3000)
        child = run_child(SENDER, path, str(next_number))
        try:
            assert child.stdout is not None
            head = child.stdout.readline().split()
            assert head[:1] == ["session"], child.stderr.read()  # type: ignore[union-attr]
            assert session in (None, head[1])
            session = head[1]
            lines = [child.stdout.readline() for _ in range(target)]
            child.send_signal(signal.SIGKILL)
            child.wait(WAIT)
            rest = child.stdout.read()  # through the same buffer as readline()
        finally:
            child.kill()
            child.wait(WAIT)
        assert child.returncode == -signal.SIGKILL
        run_seqs = []
        for line in lines + rest.splitlines(keepends=True):
            if line.endswith("\n"):  # a line cut short by the kill does not count
                seq, number = map(int, line.split())
                run_seqs.append(seq)
                numbers[seq] = number
        assert len(run_seqs) >= target, f"seed {seed} run {run}"
        assert run_seqs == list(range(run_seqs[0], run_seqs[0] + len(run_seqs)))
        assert not printed or run_seqs[0] > printed[-1]  # the counter never went back
        printed.extend(run_seqs)
        next_number = numbers[run_seqs[-1]] + 2  # leave room for one unprinted commit

        store = DurableStore(path)
        try:
            assert store.session_id == session
            pending = store.pending()
        finally:
            store.close()
        seqs = [m.seq for m in pending]
        assert seqs == sorted(seqs)
        missing = sorted(set(printed) - set(seqs))
        assert not missing, f"seed {seed} run {run}: acknowledged and lost: {missing[:10]}"
        extra = [m for m in pending if m.seq not in numbers]
        # At most one append per run committed without its print getting out.
        assert len(extra) <= run + 1, f"seed {seed} run {run}: {extra[:5]}"
        for m in pending:
            if m.seq in numbers:
                assert m.data == str(numbers[m.seq]).encode()
                assert m.msg_id == f"m{numbers[m.seq]}"


def test_a_failed_commit_fails_its_appenders_and_the_store_goes_on(path: str) -> None:
    store = DurableStore(path)
    try:
        store.append("a", "c", 1, b"d")
        # SQLite refuses every write (as with a full or failing disk; nothing else can
        # get at the file: the store holds it exclusively). Enough discards to be due
        # at once, so they are in the failed transactions too.
        refuse = True

        def authorizer(action: int, *args: object) -> int:
            writes = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_UPDATE)
            return sqlite3.SQLITE_DENY if refuse and action in writes else sqlite3.SQLITE_OK

        store._conn.set_authorizer(authorizer)
        store.discard([1, *range(1000, 1000 + DISCARD_BATCH)])
        with pytest.raises(TetherError, match="commit failed") as info:
            store.append("lost", "c", 1, b"d")
        assert path in str(info.value)
        refuse = False
        assert store.append("b", "c", 1, b"d") == 3  # the failed one's seq stays unused
    finally:
        assert store.close()
    again = DurableStore(path)
    try:
        assert [m.msg_id for m in again.pending()] == ["b"]  # the discard was retried
    finally:
        again.close()


@pytest.mark.parametrize("fsync", [False, True])
def test_outbox_files_are_created_owner_only(
    opened: List[DurableStore], tmp_path: Path, fsync: bool
) -> None:
    # They hold the payloads: before, the outbox and its -wal were 0644 and the
    # lock file 0644 under the usual umask 022, readable by every local user.
    path = str(tmp_path / "outbox.sqlite")
    old = os.umask(0o022)
    try:
        store = open_store(opened, path, fsync=fsync)
        for n in range(50):
            store.append(f"m{n}", "c", 1, b"secret payload %d" % n)
        while_open = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        assert store.close()
        # Reopened (the -wal is made again) it stays private.
        open_store(opened, path, fsync=fsync).append("again", "c", 1, b"x")
        reopened = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert {"outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite.lock"} <= set(while_open)
    assert while_open == dict.fromkeys(while_open, 0o600)
    assert reopened == dict.fromkeys(reopened, 0o600)


# -- append_many (send_many with a durable outbox) -------------------------------------------


def test_append_many_beyond_one_transaction_numbers_and_hooks_in_order(
    path: str, opened: List[DurableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "MAX_BATCH", 10)
    got: List[tuple] = []
    store = open_store(opened, path, on_commit_ref=lambda seq, ref: got.append((seq, ref)))
    messages = [(f"m{i}", "c", 1, bytearray(b"%d" % i)) for i in range(25)]
    seqs = store.append_many(messages, timeout=WAIT, refs=[f"r{i}" for i in range(25)])
    assert seqs == list(range(1, 26))
    assert got == [(i + 1, f"r{i}") for i in range(25)]
    assert store.transactions == 3  # 10 + 10 + 5
    assert store.close()
    again = DurableStore(path)
    try:
        assert [(m.seq, m.data) for m in again.pending()] == [(i + 1, b"%d" % i) for i in range(25)]
    finally:
        again.close()


def test_append_many_during_a_commit_goes_into_the_next_transaction(
    path: str, opened: List[DurableStore]
) -> None:
    gate = Gate()
    store = open_store(opened, path, on_commit=gate)
    leader = threading.Thread(target=store.append, args=("lead", "c", 1, b"d"), daemon=True)
    leader.start()
    assert gate.entered.wait(WAIT)  # the leader's commit is running (held in the hook)
    result: List[List[int]] = []
    batcher = threading.Thread(
        target=lambda: result.append(
            store.append_many([(f"m{i}", "c", 1, b"d") for i in range(5)], timeout=WAIT)
        ),
        daemon=True,
    )
    batcher.start()
    gate.opened.set()
    batcher.join(WAIT)
    leader.join(WAIT)
    assert result == [[2, 3, 4, 5, 6]]
    assert gate.calls == [[1], [2, 3, 4, 5, 6]]


def test_a_timed_out_append_many_leaves_none_of_its_messages_behind(path: str) -> None:
    # Before: only the first message of the batch was withdrawn; the others were
    # committed (and so sent) after the caller had been told the call timed out.
    gate = Gate()
    store = DurableStore(path, on_commit=gate)
    leader = threading.Thread(target=store.append, args=("lead", "c", 1, b"d"), daemon=True)
    leader.start()
    try:
        assert gate.entered.wait(WAIT)
        with pytest.raises(TimeoutError):
            store.append_many([(f"late{i}", "c", 1, b"d") for i in range(3)], timeout=0.05)
        assert store.backlog == 0
        gate.opened.set()
        leader.join(WAIT)
        assert store.append("next", "c", 1, b"d") == 2
    finally:
        gate.opened.set()
        assert store.close()
    again = DurableStore(path)
    try:
        assert [m.msg_id for m in again.pending()] == ["lead", "next"]
    finally:
        again.close()


def test_a_failed_append_many_raises_and_stores_none_of_it(path: str) -> None:
    store = DurableStore(path)
    try:
        refuse = True

        def authorizer(action: int, *args: object) -> int:
            return sqlite3.SQLITE_DENY if refuse and action == sqlite3.SQLITE_INSERT else 0

        store._conn.set_authorizer(authorizer)
        with pytest.raises(TetherError, match="commit failed"):
            store.append_many([(f"m{i}", "c", 1, b"d") for i in range(3)], timeout=WAIT)
        refuse = False
        assert store.append_many([("ok", "c", 1, b"d")], timeout=WAIT) == [4]
    finally:
        assert store.close()
    again = DurableStore(path)
    try:
        assert [m.msg_id for m in again.pending()] == ["ok"]
    finally:
        again.close()
