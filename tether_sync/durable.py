"""The durable outbox: a SQLite file that keeps unacknowledged messages across processes.

``Queue(path="outbox.sqlite")`` (DESIGN §5) keeps the outbound queue, the unacked
in-flight messages, the session id and the ``seq`` counter in one file, so a
process killed with ``kill -9`` and started again with the same file resends
everything the server had not acknowledged, under the same session id (the
server's dedupe by ``(session, seq)`` makes the replay safe). This module is the
store only; the client decides what to append and when to discard.

What survives what (the fsync policy):

* ``DurableStore(path)`` (the default, ``fsync=False``): WAL journal with
  ``synchronous=NORMAL``. A commit is written to the WAL file before
  :meth:`DurableStore.append` returns, but not fsynced. It survives a crash of the
  *process* (``kill -9``, an exception, ``os._exit``): the data is in the kernel's
  page cache, which the OS writes out. A power loss or an OS crash can lose the
  last transactions, those committed since the WAL was last synced: at most one
  checkpoint interval (:data:`CHECKPOINT_BYTES` of WAL, 4 MB: about 2,400 lone
  64-byte sends, or more in ``send_many()`` batches), and in practice no more
  than the kernel's writeback delay (about 30 s on Linux). Such a loss cannot
  tear the file: SQLite's WAL checksums drop the incomplete tail, and the file
  opens in the state of an earlier commit.
* ``DurableStore(path, fsync=True)``: ``synchronous=FULL``; every commit is
  fsynced before ``append()`` returns, so it also survives a power loss, at the
  cost of one fsync per transaction (group commit shares it among concurrent
  senders; see ``benchmarks/bench_durable.py`` for the numbers on this machine).

The ``seq`` counter and a power loss. The server ignores a ``seq`` at or below
the highest it accepted (DESIGN §5 rule 5), so a counter that went backwards
would make new messages look like duplicates: acked and never delivered. A power
loss with ``fsync=False`` can roll the counter back. So a store that was not
closed cleanly in ``fsync=False`` mode skips :data:`CRASH_SEQ_GAP` numbers on its
next open (gaps are allowed, rule 5), which is more than one checkpoint interval
can hold; the new counter is fsynced before anything is numbered. After a clean
:meth:`DurableStore.close` (or a crash in ``fsync=True`` mode) nothing is skipped.
:meth:`DurableStore.raise_seq` (with the ``acked`` of each ``hello-ok``) covers
the rest.

Group commit. A blocking :meth:`DurableStore.append` that finds no commit
running commits at once, on its own thread: a lone sender pays no thread
hand-off, which costs more than the commit itself. Appends that arrive while a
commit runs join the next batch and wait on that batch's latch; the leading
thread commits those too (up to :data:`LEADER_ROUNDS` transactions), then the
store's background committer thread takes over. One committer at a time, one
transaction per batch, so concurrent senders share a commit (and an fsync).
:meth:`DurableStore.append_async` queues for the background committer and
:meth:`DurableStore.append_many` commits its whole list at once, so both get
large transactions. :meth:`raise_seq` never waits: the background committer
(or the next transaction) writes it.

The commit itself. A lone append is one autocommit ``INSERT`` (one statement,
its own transaction). The connection is in ``locking_mode=EXCLUSIVE``: it takes
the file's lock once and keeps it, so a transaction makes no locking system
calls and the WAL index lives in memory (no ``-shm`` file); the flock below
already keeps every other store out. The price: while a store is open no other
SQLite connection can read the file (e.g. the ``sqlite3`` shell). Checkpoints
are SQLite's auto-checkpoint on the committing thread, every
:data:`CHECKPOINT_BYTES` of WAL; a checkpoint fsyncs (even with ``NORMAL``),
so one lone append in about 2,400 takes some milliseconds. New files use
:data:`PAGE_SIZE` (1 KB) pages: a lone append writes about 1.7 KB to the WAL.

Batches are one row. Messages of one channel and opcode appended together
(:meth:`DurableStore.append_batch`, a ``send_many()``; runs of
:data:`BATCH_ROWS` or more in :meth:`DurableStore.append_many`) are stored as
one row of the ``batches`` table (format 2): their ids, sizes and payloads end
to end. Discarding some of them records the ranges in the ``gone`` table, in the
same transaction; the row is deleted once all of it is gone. So a batch costs
one B-tree insert and one delete, not one per message (a ``send_many(1000)``
spent about 3 us a message in SQLite, and as much again deleting them once
acknowledged). Deleting a row of ``batches`` rewrites a few pages, not the
row's own (:data:`SECURE_DELETE`). A file of format 1 (rows of ``messages``
only) gets the two tables when it is opened; a tether_sync that knows only
format 1 then refuses it as newer.

Discards are lazy. :meth:`discard` (acknowledged messages) never waits and
writes nothing itself: the seqs are deleted, as ranges, in the next transaction
once :data:`DISCARD_BATCH` have gathered or the oldest is :data:`DISCARD_DELAY`
old (the background committer writes them alone when no append comes). So a
``kill -9`` can leave up to that many acknowledged messages in the file; the
next process resends them under the same session and ``seq``, and the server's
``acked`` in ``hello-ok`` resolves them without a resend (DESIGN §5). Nothing
unacknowledged is ever lost by this. What can come twice after a ``kill -9``:
such messages at a server that forgot the session or has no acks (there
"done" means written), and a message given up (failed by a drop policy) in
those last moments is sent after all.

A single blocking sender gets ``1 / commit latency``: about 60,000 msg/s with
``fsync=False`` and 2,800 with ``fsync=True`` on the 2-vCPU development
machine (64-byte payloads; ``benchmarks/bench_durable.py`` has every row).
That is the store alone. Through ``send()`` (``bench_acks.py --only durable``,
session 21) the sender's thread spends about 25 us of CPU a message, of which
the commit is 9-15 (p50 8.6 us; the mean is higher, the GIL being with the
I/O thread when SQLite returns) and the client's Python the rest, and the I/O
thread 5-9 us more: about 25,000-30,000 msg/s.

A commit that fails (a full disk, an I/O error) fails the messages of its
transaction: their appenders get a :class:`~tether_sync.TetherError` whose
``__cause__`` is an :class:`OSError` (``ENOSPC`` for ``SQLITE_FULL``, ``EIO``
for ``SQLITE_IOERR``; its own cause is the SQLite error), so ``send()`` raises
it and nothing half-stored is sent. What the transaction carried besides
(discards, the ``seq`` counter) is kept and tried again after
:data:`RETRY_DELAY`, never in a loop; at :meth:`DurableStore.close` it gets one
last try, and the final transaction writes the counter with the clean mark.
A file that stays full makes ``close()`` return False in time; the file is
then not marked clean, and the next open treats it as after a crash.

Privacy: the outbox holds message payloads, so the files a store creates (the
outbox, the ``-wal``, ``-shm`` and ``-journal`` files SQLite makes next to it, and
the lock file) are created :data:`FILE_MODE` (0600, owner only) whatever the
umask. A file that already exists keeps its mode. Discarded messages are not
wiped from the file at once: their bytes stay in the WAL until it is overwritten,
and in freed pages until SQLite reuses them (:data:`SECURE_DELETE` is ``FAST``,
the same on every SQLite build); the file's mode is what keeps them private.

Safety at open: an exclusive ``fcntl.flock`` on a sidecar file ``path + ".lock"``
(left in place on close: removing it would race with a new owner) refuses a second
live store on the same file, in this process or another. A file that is not
SQLite, a SQLite file without this format's marker and schema, or a newer format
raises :class:`~tether_sync.TetherError` naming the path; the file is never
modified then. After ``fork()`` the child must not use the parent's store (a
SQLite connection cannot cross a fork): every call in the child raises
:class:`~tether_sync.TetherError`; open a new store there once the parent closed
its own.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import logging
import math
import os
import secrets
import sqlite3
import sys
import threading
import time
import weakref
from array import array
from collections import deque
from itertools import accumulate, repeat
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from .clock import Deadline
from .exceptions import ClientClosed, TetherError

log = logging.getLogger("tether_sync")

#: Mode of the files a store creates (the outbox, its ``-wal``/``-shm``/``-journal``
#: and the ``.lock`` sidecar): they hold message payloads, so owner only. A file
#: that already exists keeps its mode.
FILE_MODE = 0o600
#: ``PRAGMA application_id`` of an outbox file ("TETH"): the format marker.
APPLICATION_ID = 0x54455448
#: ``PRAGMA user_version``: the newest file format this module reads and writes.
#: 2 added the ``batches`` and ``gone`` tables (a version-1 file is migrated at open).
FORMAT_VERSION = 2
#: The ``format`` row of the ``meta`` table.
FORMAT_NAME = "tether_sync.engine.outbox"
#: Numbers skipped after an unclean shutdown in ``fsync=False`` mode (see above).
CRASH_SEQ_GAP = 1 << 20
#: Transactions a leading appender commits at most before the background takes over.
LEADER_ROUNDS = 4
#: Bytes of WAL after which a commit checkpoints (SQLite's ``wal_autocheckpoint``,
#: in pages of the file's size). A checkpoint costs three fsyncs (~5 ms here).
CHECKPOINT_BYTES = 4 << 20
#: Page size of a new file (an existing file keeps its own). A trade (issue 22,
#: measured here, fsync off): 4 KB pages make a batch of 1,000 tether envelopes
#: about 2 us a message cheaper (fewer pages, B-tree splits and WAL frames) and
#: a lone append about 2 us dearer of its ~17 us (it writes and checksums a
#: whole page), about 9 % on ``send()``'s rate. ``send()`` is the default path
#: (and its 20,000 msg/s target had no margin), so new files keep 1 KB pages.
PAGE_SIZE = 1024
#: ``PRAGMA secure_delete`` of the connection (issue 22). Some SQLite builds
#: (Debian's, Ubuntu's) default to ``1``: every page freed by a delete is
#: overwritten with zeros, one more WAL frame (and checkpoint write) per page, so
#: discarding an acknowledged ``send_many()`` batch wrote as many pages as
#: storing it had (measured here: 788 ``pwrite`` calls per batch of 1,000
#: tether envelopes stored and discarded, 400 with ``FAST``; the caller's CPU
#: per message of a ``send_many(1000)`` loop 5.0 -> 3.9 us). ``FAST`` zeroes
#: deleted content only in pages that are written anyway; freed pages keep
#: their old bytes until reused (see Privacy above).
SECURE_DELETE = "FAST"
#: Discarded seqs that are written at once (in the next transaction) ...
DISCARD_BATCH = 1024
#: ... else at most this many seconds after the first of them (see :meth:`DurableStore.discard`).
DISCARD_DELAY = 0.05
#: Seconds the leftovers of a failed transaction (discards, the ``seq`` counter)
#: wait before they are tried again: a full disk is not hammered.
RETRY_DELAY = 1.0
#: Seconds between two ERROR log lines about failing commits (the ones between
#: are logged at DEBUG): a sender that retries on a full disk does not flood the log.
FAIL_LOG_INTERVAL = 10.0
#: Messages committed in one transaction at most (bounds latency and the WAL).
MAX_BATCH = 8192

_MESSAGES = (
    "CREATE TABLE messages ("
    " seq INTEGER PRIMARY KEY,"
    " msg_id TEXT NOT NULL,"
    " channel TEXT NOT NULL,"
    " op INTEGER NOT NULL,"
    " data BLOB NOT NULL)"
)
#: Format 2: a run of messages of one channel and opcode appended together (a
#: ``send_many()``) is one row, seqs ``seq`` to ``last``: the ids joined by
#: newlines, the sizes of the payloads (little-endian uint32) and the payloads
#: end to end. One row instead of a thousand: a ``send_many(1000)`` was about
#: 3 us a message of SQLite (B-tree inserts, and as much again to delete the
#: rows once acknowledged); a row of 150 KB costs about 1 us.
_BATCHES = (
    "CREATE TABLE batches ("
    " seq INTEGER PRIMARY KEY,"
    " last INTEGER NOT NULL,"
    " channel TEXT NOT NULL,"
    " op INTEGER NOT NULL,"
    " ids TEXT NOT NULL,"
    " sizes BLOB NOT NULL,"
    " data BLOB NOT NULL)"
)
#: Discarded ranges ``seq`` to ``last`` inside rows of ``batches`` that still
#: hold live messages (a row is deleted, with its ranges, once all of it is gone).
_GONE = "CREATE TABLE gone (seq INTEGER NOT NULL, last INTEGER NOT NULL)"
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    _MESSAGES,
    _BATCHES,
    _GONE,
)
_INSERT = "INSERT INTO messages (seq, msg_id, channel, op, data) VALUES (?, ?, ?, ?, ?)"
_INSERT_BATCH = (
    "INSERT INTO batches (seq, last, channel, op, ids, sizes, data) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
#: Messages of one channel and opcode appended together from which they are
#: stored as one row of ``batches`` (below it, rows of ``messages``).
BATCH_ROWS = 16
#: Bytes of payloads in one row of ``batches`` at most (SQLite's limit on a
#: blob is 1 GB; 1,000 tether envelopes of 64-byte payloads are about 150 KB).
BATCH_BYTES = 1 << 20
#: A row of ``messages`` (seq, msg_id, channel, op, data) and of ``batches``.
_MessageRow = Tuple[int, str, str, int, bytes]
_BatchRow = Tuple[int, int, str, int, str, bytes, bytes]
_DELETE = "DELETE FROM messages WHERE seq BETWEEN ? AND ?"
_DELETE_BATCH = "DELETE FROM batches WHERE seq = ?"
_DELETE_GONE = "DELETE FROM gone WHERE seq BETWEEN ? AND ?"
_INSERT_GONE = "INSERT INTO gone (seq, last) VALUES (?, ?)"
#: The sizes column's element: 4 bytes where the platform has it (else no batch rows).
_SIZES = "I" if array("I").itemsize == 4 else ""
_SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"


@dataclasses.dataclass(frozen=True)
class StoredMessage:
    """One message kept in the outbox file.

    Attributes:
        seq: Its ``seq`` (DESIGN §5), assigned when it was appended.
        msg_id: The envelope ``id``.
        channel: The channel it was sent on.
        op: The frame opcode (1 text, 2 binary).
        data: The payload bytes as given to :meth:`DurableStore.append`.
    """

    seq: int
    msg_id: str
    channel: str
    op: int
    data: bytes


class _Run:
    """Consecutive messages of one channel and opcode on their way to the file.

    What one call appended into one transaction: a lone ``append()`` is a run
    of one, a ``send_many()`` one run per transaction it fills. One object and
    two lists, not an object a message (about 0.6 us a message of a batch).
    """

    __slots__ = ("abandoned", "channel", "datas", "ids", "op", "refs", "seq", "sparse")

    def __init__(
        self,
        ids: List[str],
        channel: str,
        op: int,
        datas: List[bytes],
        refs: Optional[List[Any]] = None,
        sparse: bool = False,
    ) -> None:
        self.ids = ids
        self.channel = channel
        self.op = op
        self.datas = datas
        # One per message, handed to on_commit_ref(s) with its seq; ``sparse``:
        # some are None (those messages have no ref).
        self.refs = refs
        self.sparse = sparse
        self.seq = 0  # of the first; assigned when its batch is taken for a transaction
        self.abandoned = False  # its appender gave up while the commit ran

    def seqs(self) -> range:
        return range(self.seq, self.seq + len(self.ids))


class _Batch:
    """Messages committed in one transaction; its appenders wait until it is finished."""

    __slots__ = ("_latch", "committed", "count", "error", "finished", "runs", "taken")

    def __init__(self) -> None:
        self.runs: List[_Run] = []
        self.count = 0  # messages in runs
        self.taken = False  # a committer took it: no more runs, none withdrawn
        self.committed = False  # the transaction committed
        self.finished = False  # committed or failed, and on_commit has run
        self.error: Optional[BaseException] = None
        # A held lock as a one-shot latch: cheaper than an Event (one per
        # transaction). Each waiter acquires it and at once releases it for the next.
        self._latch = threading.Lock()
        self._latch.acquire()

    def add(self, run: _Run) -> None:
        self.runs.append(run)
        self.count += len(run.ids)

    def withdraw(self, run: _Run) -> None:
        self.runs.remove(run)
        self.count -= len(run.ids)

    def finish(self) -> None:
        """Release every waiter (once)."""
        if not self.finished:
            self.finished = True
            self._latch.release()

    def wait(self, timeout: Optional[float]) -> None:
        if self.finished:
            return
        if self._latch.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._latch.release()


class AppendHandle:
    """What :meth:`DurableStore.append_async` returns: the future ``seq`` of a message."""

    __slots__ = ("_batch", "_run", "_store")

    def __init__(self, store: DurableStore, batch: _Batch, run: _Run) -> None:
        self._store = store
        self._batch = batch
        self._run = run

    def done(self) -> bool:
        """True once the commit finished (committed or failed)."""
        return self._batch.finished

    def result(self, timeout: Optional[float] = None) -> int:
        """Wait for the commit and return the message's ``seq``.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Returns:
            The ``seq`` the message was committed with.

        Raises:
            TimeoutError: Not committed in time. If its transaction had not started,
                the message was withdrawn and will never be in the file; if it had,
                it may be committed and is then discarded again right after.
            TetherError: The transaction failed (e.g. the disk is full); the
                message is not in the file.
            ClientClosed: The store was closed before the message was committed.
        """
        return self._store._wait(self._batch, self._run, timeout)


PathArg = Union[str, "os.PathLike[str]"]


class DurableStore:
    """A SQLite outbox file: messages by ``seq``, the session id and the ``seq`` counter.

    Args:
        path: The outbox file; created (with a new random session id) if it does
            not exist or is empty.
        fsync: False (default): ``synchronous=NORMAL``, survives a crash of the
            process. True: ``synchronous=FULL``, also survives a power loss.
        on_commit: Called after each transaction that committed appended messages,
            with those messages in ``seq`` order, on the committing thread and
            before their appenders are released; calls never overlap and come in
            ``seq`` order. It must not raise (an exception is logged) and should
            not block for long: every appender waits for it.
        on_commit_ref: Like ``on_commit``, but called once per committed message
            that was appended with a ``ref``, as ``on_commit_ref(seq, ref)`` (no
            :class:`StoredMessage` is made for it); same rules, after ``on_commit``.
        on_commit_refs: The batch form of ``on_commit_ref``: called once per
            transaction, as ``on_commit_refs(seqs, refs)``, with the seqs and
            refs of its committed messages that have a ref, in ``seq`` order.
            Given, it replaces ``on_commit_ref`` for transactions of more than
            one message (``append_many()``, group commit); a lone append still
            calls ``on_commit_ref`` (or, without one, this with one-item lists).

    Raises:
        TetherError: The file is locked by another live store (this process or
            another: the message names the pid), is not an outbox (not SQLite, a
            foreign schema, a newer format) or cannot be read or created.
    """

    def __init__(
        self,
        path: PathArg,
        *,
        fsync: bool = False,
        on_commit: Optional[Callable[[List[StoredMessage]], None]] = None,
        on_commit_ref: Optional[Callable[[int, Any], None]] = None,
        on_commit_refs: Optional[Callable[[List[int], List[Any]], None]] = None,
    ) -> None:
        self.path: str = os.fspath(path)
        """The outbox file."""
        self.fsync = fsync
        """True: every commit is fsynced (``synchronous=FULL``)."""
        self._on_commit = on_commit
        self._on_commit_ref = on_commit_ref
        self._on_commit_refs = on_commit_refs
        self._pid = os.getpid()
        self._forked = False
        self._lock_fd = _lock_sidecar(self.path)
        try:
            self._conn, self.session_id, self._last_seq, self._pending, self._live = _open(
                self.path, fsync
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        # The rows of ``batches`` in the file with live messages: first seq ->
        # (last seq, discarded ranges), and their first seqs in order. Only the
        # committer touches them (in _write, once a transaction committed).
        self._live_firsts = sorted(self._live)
        # _lock guards every attribute below and the _Batch/_Run state; _wake
        # (on _lock) wakes the background committer. Never held during SQLite work
        # or a user callback. Only the thread that set _committing (a leader
        # appender or the background thread) touches _conn until it clears it.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # The lone append's INSERT runs on this one cursor: Connection.execute
        # makes a cursor per call (about 0.5 us of the ~11 us an INSERT costs).
        self._cursor = self._conn.cursor()
        self._insert = self._cursor.execute
        self._batches: Deque[_Batch] = deque()
        self._discards: List[int] = []
        self._discard_since = 0.0  # monotonic time the oldest unwritten discard came
        self._seq_dirty = False  # raise_seq() moved _last_seq; persist it
        self._committing = False  # someone is (or is about to be) the committer
        self._bg_turn = False  # the background thread is that committer
        self._closing = False
        self._broken: Optional[BaseException] = None  # the committer died
        self._last_error = TetherError("no commit failed")  # the last failed commit's
        # After a failed transaction, leftovers (discards, the counter) wait until
        # then; math.inf once closing: a failed final attempt is not repeated.
        self._retry_at = 0.0
        self._fail_logged = -math.inf  # monotonic time of the last ERROR line
        self._fails_unlogged = 0  # failed commits since that line
        self._clean_close = False  # set by the background thread when it closed the file
        self.transactions = 0
        """Transactions committed so far (group commit makes it < appends)."""
        self.appended = 0
        """Messages committed so far by :meth:`append` and friends."""
        self._thread = threading.Thread(
            target=self._run_background, name="tether_sync-outbox", daemon=True
        )
        _LIVE.add(self)
        self._thread.start()
        log.info(
            "outbox %s opened: %d pending, last seq %d, fsync %s",
            self.path,
            len(self._pending),
            self._last_seq,
            "on" if fsync else "off",
        )

    # -- public API ---------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` ever assigned or raised to (it survives the process)."""
        return self._last_seq

    @property
    def backlog(self) -> int:
        """Appended messages waiting for their transaction."""
        with self._lock:
            return sum(b.count for b in self._batches)

    def pending(self) -> List[StoredMessage]:
        """The messages that were in the file at open (not discarded), in ``seq`` order.

        A snapshot taken when the store was opened: later appends and discards
        do not change it.
        """
        self._check_fork()
        return list(self._pending)

    def append(
        self,
        msg_id: str,
        channel: str,
        op: int,
        data: bytes,
        timeout: Optional[float] = None,
        ref: Any = None,
    ) -> int:
        """Number a message and commit it to the file; return once it is committed.

        Args:
            msg_id: The envelope ``id``.
            channel: Its channel.
            op: Frame opcode (1 text, 2 binary).
            data: Payload bytes.
            timeout: Seconds to wait for the commit at most (None: no limit).
            ref: Anything; given to ``on_commit_ref`` with the message's ``seq``.

        Returns:
            Its ``seq``: ``last_seq + 1`` at the moment its transaction started.

        Raises:
            TimeoutError, TetherError, ClientClosed: see :meth:`AppendHandle.result`.
        """
        # The lone sender's path is kept short: it is most of what send() costs.
        if self._forked or not _AT_FORK:
            self._check_fork()
        lock = self._lock
        with lock:
            if self._broken is not None or self._closing:
                self._check_open()
            if self._committing:  # join the next batch
                lead = False
            else:  # nobody commits: commit this one here, as its own transaction
                lead = self._committing = True
                seq = self._last_seq = self._last_seq + 1
                if self._discards and self._discards_due():
                    discards, self._discards = self._discards, []
                else:
                    discards = _NO_DISCARDS
                write_seq = self._seq_dirty
                self._seq_dirty = False
        if not lead:
            return self._enqueue(msg_id, channel, op, data, lead=True, ref=ref).result(timeout)
        try:
            row = (seq, msg_id, channel, op, data if type(data) is bytes else bytes(data))
            if discards or write_seq:
                if not self._write((row,), discards, write_seq, seq):
                    raise self._last_error
            else:
                # _write's lone-row case, inline: this is most of what a durable
                # send() costs (through _write, bench_durable's 1-thread row
                # measured a few % slower, medians of 5 noisy runs).
                try:
                    self._insert(_INSERT, row)
                except sqlite3.Error as exc:
                    error = self._failed(exc, discards, write_seq)
                    raise error from error.__cause__  # the OSError of a full disk
            self.transactions += 1
            self.appended += 1
            if self._on_commit is not None:
                self._hook([StoredMessage(*row)])
            if ref is not None:
                if self._on_commit_ref is not None:
                    self._hook_ref(seq, ref)
                elif self._on_commit_refs is not None:
                    self._hook_refs([seq], [ref])
        finally:
            with lock:
                more = (
                    self._closing
                    or self._batches
                    or self._seq_dirty
                    or (self._discards and self._discards_due())
                )
                if not more:
                    self._committing = False
            if more:
                self._end_lead()
        return seq

    def append_async(self, msg_id: str, channel: str, op: int, data: bytes) -> AppendHandle:
        """Like :meth:`append`, but return at once with a handle on the future ``seq``.

        Messages are numbered in the order of the calls. The background committer
        commits them, grouping everything that arrives meanwhile, so a thread that
        keeps many appends in flight gets large transactions.

        Raises:
            ClientClosed: The store is closed.
            TetherError: Used in a forked child, or the committer died.
        """
        return self._enqueue(msg_id, channel, op, data, lead=False)

    def append_many(
        self,
        messages: Sequence[Tuple[str, str, int, bytes]],
        timeout: Optional[float] = None,
        refs: Optional[Sequence[Any]] = None,
    ) -> List[int]:
        """Append several ``(msg_id, channel, op, data)`` at once; return their seqs.

        They are numbered consecutively in the given order (no other append comes
        between them) and committed in as few transactions as :data:`MAX_BATCH`
        allows. Same errors as :meth:`append`; ``timeout`` covers them all. When
        one transaction fails or the time runs out, the messages of the call not
        yet committed never are (or are discarded right after a commit that was
        running); those of earlier transactions of the call stay committed.
        ``refs``: one per message, each given to ``on_commit_ref`` with its seq.
        """
        self._check_fork()
        runs: List[_Run] = []
        for n, (m, c, o, d) in enumerate(messages):
            last = runs[-1] if runs else None
            if last is None or last.op != o or (last.channel is not c and last.channel != c):
                last = _Run([], c, o, [], None if refs is None else [])
                runs.append(last)
            last.ids.append(m)
            last.datas.append(d if type(d) is bytes else bytes(d))
            if last.refs is not None:
                assert refs is not None
                r = refs[n]
                last.refs.append(r)
                last.sparse = last.sparse or r is None
        return self._append_runs(runs, timeout)

    def append_batch(
        self,
        ids: List[str],
        channel: str,
        op: int,
        datas: List[bytes],
        timeout: Optional[float] = None,
        refs: Optional[List[Any]] = None,
    ) -> List[int]:
        """:meth:`append_many` of messages that share one channel and opcode.

        ``ids[n]`` and ``datas[n]`` (and ``refs[n]``, if given) are the n-th
        message; the lists are kept, not copied: do not change them after.
        What ``send_many()`` calls: no tuple is made per message.
        """
        self._check_fork()
        if len(datas) != len(ids) or (refs is not None and len(refs) != len(ids)):
            raise ValueError("ids, datas and refs must have one item per message")
        for d in datas:
            if type(d) is not bytes:
                datas = [d if type(d) is bytes else bytes(d) for d in datas]
                break
        sparse = refs is not None and None in refs
        return self._append_runs([_Run(ids, channel, op, datas, refs, sparse)], timeout)

    def _append_runs(self, runs: List[_Run], timeout: Optional[float]) -> List[int]:
        deadline = Deadline(timeout)
        seqs: List[int] = []
        groups = self._enqueue_runs(runs)
        # One wait per transaction, not one per message (what send_many() costs).
        for n, (batch, run) in enumerate(groups):
            if not batch.finished:
                batch.wait(deadline.remaining())
            if batch.committed:  # set before finish(): no lock needed
                seqs.extend(run.seqs())
                continue
            with self._lock:
                if batch.error is not None and not batch.committed:
                    error: BaseException = batch.error
                elif batch.committed:
                    seqs.extend(run.seqs())
                    continue
                else:
                    error = TimeoutError(f"outbox {self.path}: not committed within {timeout} s")
                # None of the rest is sent: those not yet in a transaction are
                # withdrawn, those in a running one are discarded after it.
                for later, rest in groups[n:]:
                    if later.committed or later.error is not None:
                        continue
                    if later.taken:
                        rest.abandoned = True
                    else:
                        later.withdraw(rest)
            raise error
        return seqs

    def _enqueue_runs(self, runs: List[_Run]) -> List[Tuple[_Batch, _Run]]:
        """Queue ``runs`` consecutively and commit them here if nobody is committing.

        Returns each batch they went into with its share of them (a run split
        where a batch is full), in order.
        """
        groups: List[Tuple[_Batch, _Run]] = []
        with self._lock:
            self._check_open()
            batches = self._batches
            for run in runs:
                start, total = 0, len(run.ids)
                while start < total:
                    if not batches or batches[-1].taken or batches[-1].count >= MAX_BATCH:
                        batches.append(_Batch())
                    batch = batches[-1]
                    room = MAX_BATCH - batch.count
                    if start == 0 and total <= room:
                        share = run
                    else:
                        end = start + room
                        share = _Run(
                            run.ids[start:end],
                            run.channel,
                            run.op,
                            run.datas[start:end],
                            None if run.refs is None else run.refs[start:end],
                            run.sparse,
                        )
                    batch.add(share)
                    groups.append((batch, share))
                    start += len(share.ids)
            leading = bool(groups) and not self._committing
            if leading:
                self._committing = True
        if leading:
            self._commit_as_leader()
        return groups

    def _enqueue(
        self, msg_id: str, channel: str, op: int, data: bytes, *, lead: bool, ref: Any = None
    ) -> AppendHandle:
        """Queue a message for a transaction; with ``lead``, commit it here if nobody is."""
        self._check_fork()
        run = _Run([msg_id], channel, op, [bytes(data)], None if ref is None else [ref])
        with self._lock:
            self._check_open()
            batches = self._batches
            if not batches or batches[-1].taken or batches[-1].count >= MAX_BATCH:
                batches.append(_Batch())
            batch = batches[-1]
            batch.add(run)
            handle = AppendHandle(self, batch, run)
            leading = lead and not self._committing
            if leading:
                self._committing = True
            else:
                self._kick_background()
        if leading:
            self._commit_as_leader()
        return handle

    def discard(self, seqs: Iterable[int]) -> None:
        """Delete messages (acknowledged, or given up) lazily; never waits.

        They are deleted in the first transaction after :data:`DISCARD_BATCH`
        have gathered (an append's), or by the background committer once the
        oldest is :data:`DISCARD_DELAY` old (see the module notes), and at
        :meth:`close`. Unknown seqs are ignored. Raises
        :class:`ClientClosed` once closed.
        """
        self._check_fork()
        seqs = list(seqs)
        if not seqs:
            return
        with self._lock:
            self._check_open()
            if not self._discards:
                self._wake.notify()  # the background thread keeps the deadline
            self._add_discards(seqs)
            # No transaction of their own once DISCARD_BATCH have gathered: the
            # next append's carries them (the background thread's, at the
            # deadline, if none comes). Kicking the background here made it
            # commit them alone, and a send_many() arriving meanwhile waited
            # for it: a thread hand-off and a transaction more (issue 22).

    def raise_seq(self, seq: int) -> None:
        """Make ``last_seq`` at least ``seq`` (e.g. ``acked`` of ``hello-ok``); never waits.

        Takes effect for numbering at once and is written in the next transaction.
        """
        self._check_fork()
        with self._lock:
            self._check_open()
            if seq > self._last_seq:
                self._last_seq = seq
                self._seq_dirty = True
                self._kick_background()

    @property
    def committer_alive(self) -> bool:
        """Whether the background committer thread is still running."""
        return self._thread.is_alive()

    def close(self, timeout: Optional[float] = 5.0) -> bool:
        """Commit what is waiting, mark the file closed cleanly, release the lock.

        Idempotent. Appends waiting at the time are still committed; later calls
        raise :class:`ClientClosed`. In a forked child it only drops the child's
        copy of the lock file descriptor (the parent keeps the lock).

        Args:
            timeout: Seconds to wait for the committer to finish (None: no limit).

        Returns:
            True if everything was written and the file closed in time; False if
            the committer is still busy (it finishes and releases the lock on its
            own) or a final transaction failed.
        """
        if self._forked or os.getpid() != self._pid:
            return True
        with self._lock:
            if not self._closing:
                self._closing = True
                self._retry_at = 0.0  # leftovers of a failed commit get one last try
                self._kick_background()
        if threading.current_thread() is self._thread:
            log.warning("outbox %s: close() from its own committer does not wait", self.path)
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive() and self._clean_close

    # -- waiting ----------------------------------------------------------------------

    def _wait(self, batch: _Batch, run: _Run, timeout: Optional[float]) -> int:
        batch.wait(timeout)
        if batch.committed:  # the common case, no lock needed: set before finish()
            return run.seq
        with self._lock:
            if batch.error is not None and not batch.committed:
                raise batch.error
            if batch.committed:
                return run.seq
            if not batch.taken:
                batch.withdraw(run)  # withdrawn: it never reaches the file
                raise TimeoutError(f"outbox {self.path}: not committed within {timeout} s")
            run.abandoned = True  # the committer discards it after the commit
        raise TimeoutError(
            f"outbox {self.path}: commit still running after {timeout} s;"
            " the message will be discarded"
        )

    # -- committing ----------------------------------------------------------------------

    def _kick_background(self) -> None:
        """Have the background thread commit if nobody is committing."""
        assert self._lock.locked()
        if not self._committing:
            self._committing = True
            self._bg_turn = True
            self._wake.notify()

    def _has_work(self) -> bool:
        assert self._lock.locked()
        if self._batches:
            return True
        if not (self._seq_dirty or self._discards_due()):
            return False
        # Leftovers of a failed transaction wait for _retry_at: without this the
        # committer would retry them at once, for ever, on a full disk (and,
        # closing, never finish).
        return time.monotonic() >= self._retry_at

    def _add_discards(self, seqs: List[int], first: bool = False) -> None:
        """Queue seqs to delete (with _lock held); the delay runs from the oldest.

        ``first``: ahead of those queued (a failed transaction's, put back).
        """
        if not self._discards:
            self._discard_since = time.monotonic()
        if first:
            self._discards[:0] = seqs
        else:
            self._discards.extend(seqs)

    def _discards_due(self) -> bool:
        """Whether the pending discards go into the next transaction (with _lock held)."""
        discards = self._discards
        return bool(discards) and (
            len(discards) >= DISCARD_BATCH
            or self._closing
            or time.monotonic() - self._discard_since >= DISCARD_DELAY
        )

    def _end_lead(self) -> None:
        """After a lone append's own transaction, when more came or the store closes."""
        with self._lock:
            if not self._has_work():  # closing: the background thread finishes
                self._bg_turn = True
                self._wake.notify()
                return
        self._commit_as_leader()

    def _commit_as_leader(self) -> None:
        """Commit on the calling thread, then hand any rest to the background.

        The leader also commits what arrived during its own transaction, up to
        :data:`LEADER_ROUNDS` transactions: waking the background thread costs
        more than a commit, but one sender must not commit for the others forever.
        """
        rounds = 0
        try:
            while True:
                self._commit_once()
                rounds += 1
                with self._lock:
                    if self._closing or not self._has_work() or rounds >= LEADER_ROUNDS:
                        break
        finally:
            with self._lock:
                if self._has_work() or self._closing:
                    self._bg_turn = True
                    self._wake.notify()
                else:
                    self._committing = False

    def _run_background(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._bg_turn:
                        if not self._discards:
                            self._wake.wait()
                            continue
                        # Discards wait for a transaction that carries them anyway;
                        # when none came within DISCARD_DELAY, write them alone
                        # (after a failed transaction, not before _retry_at).
                        due = max(self._discard_since + DISCARD_DELAY, self._retry_at)
                        if due == math.inf:  # closing after a failure: nothing to try
                            self._wake.wait()
                            continue
                        left = due - time.monotonic()
                        if left <= 0 and not self._committing:
                            self._committing = self._bg_turn = True
                        else:
                            self._wake.wait(left if left > 0 else DISCARD_DELAY)
                    if not self._has_work():
                        if self._closing:
                            break
                        self._bg_turn = False
                        self._committing = False
                        continue
                self._commit_once()
            self._clean_close = self._finish()
        except BaseException as exc:  # a bug: release every waiter, refuse new work
            log.exception("outbox %s: committer stopped", self.path)
            self._fail_all(TetherError(f"outbox {self.path}: committer stopped: {exc!r}"), exc)
        finally:
            try:
                # The cursor first: a statement it left unreset (its INSERT failed
                # on a full disk) would keep the connection open as a zombie, with
                # the file's lock, for as long as this store is referenced.
                self._cursor.close()
                self._conn.close()
            except sqlite3.Error:
                log.exception("outbox %s: closing the database failed", self.path)
            os.close(self._lock_fd)
            _LIVE.discard(self)
            log.info("outbox %s closed", self.path)

    def _commit_once(self) -> None:
        """Take what is waiting and commit it in one transaction (the committer only)."""
        with self._lock:
            batch = self._batches.popleft() if self._batches else None
            first = self._last_seq + 1
            if batch is not None:
                batch.taken = True
                for run in batch.runs:
                    run.seq = first
                    first += len(run.ids)
                self._last_seq += batch.count
            if self._discards_due():
                discards, self._discards = self._discards, []
            else:
                discards = []
            write_seq = self._seq_dirty
            self._seq_dirty = False
            last_seq = self._last_seq
        try:
            self._transact(batch, discards, write_seq, last_seq)
        finally:
            # Whatever happened (KeyboardInterrupt on a leader's thread included),
            # nobody may wait forever on this batch.
            if batch is not None and not batch.finished:
                with self._lock:
                    if not batch.committed and batch.error is None:
                        batch.error = TetherError(f"outbox {self.path}: commit interrupted")
                batch.finish()

    def _transact(
        self, batch: Optional[_Batch], discards: List[int], write_seq: bool, last_seq: int
    ) -> None:
        runs = batch.runs if batch is not None else []
        rows: List[_MessageRow] = []
        blocks: List[_BatchRow] = []
        for run in runs:
            if len(run.ids) >= BATCH_ROWS:
                _batch_rows(run, blocks, rows)
            else:
                rows.extend(
                    zip(run.seqs(), run.ids, repeat(run.channel), repeat(run.op), run.datas)
                )
        if not self._write(rows, discards, write_seq, last_seq, blocks):
            if batch is not None:
                batch.error = self._last_error
            return
        with self._lock:
            self.transactions += 1
            if batch is None:
                return
            batch.committed = True
            live = [r for r in runs if not r.abandoned]
            if len(live) < len(runs):
                self._add_discards([n for r in runs if r.abandoned for n in r.seqs()])
            self.appended += sum(len(r.ids) for r in live)
        if self._on_commit is not None and live:
            self._hook(
                [
                    StoredMessage(seq, msg_id, r.channel, r.op, data)
                    for r in live
                    for seq, msg_id, data in zip(r.seqs(), r.ids, r.datas)
                ]
            )
        with_ref = [r for r in live if r.refs is not None]
        if not with_ref:
            return
        if self._on_commit_refs is not None:
            # One call per transaction (send_many() queues its batch at once).
            if len(with_ref) == 1 and not with_ref[0].sparse:
                run = with_ref[0]
                assert run.refs is not None
                self._hook_refs(list(run.seqs()), run.refs)
                return
            pairs = [
                (seq, ref)
                for r in with_ref
                for seq, ref in zip(r.seqs(), r.refs or ())
                if ref is not None
            ]
            if pairs:
                self._hook_refs([p[0] for p in pairs], [p[1] for p in pairs])
            return
        hook = self._on_commit_ref
        if hook is not None:
            for r in with_ref:
                for seq, ref in zip(r.seqs(), r.refs or ()):
                    if ref is None:
                        continue
                    try:  # _hook_ref inline: once per message of a send_many()
                        hook(seq, ref)
                    except Exception:
                        log.exception("outbox %s: on_commit_ref callback raised", self.path)

    def _write(
        self,
        rows: Sequence[Tuple[Any, ...]],
        discards: List[int],
        write_seq: bool,
        last_seq: int,
        blocks: Sequence[Tuple[Any, ...]] = (),
    ) -> bool:
        """One transaction (the committer only); False if it failed (see _last_error).

        ``rows`` go in by :data:`_INSERT`, ``blocks`` by :data:`_INSERT_BATCH`
        (see :func:`_batch_row`).
        """
        conn = self._conn
        try:
            if len(rows) == 1 and not (discards or write_seq or blocks):
                # The lone sender's case: one statement is its own transaction
                # (autocommit), one sqlite3_step instead of three.
                self._insert(_INSERT, rows[0])
                return True
            conn.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    conn.executemany(_INSERT, rows)
                for block in blocks:
                    conn.execute(_INSERT_BATCH, block)
                changes: Dict[int, Optional[List[Tuple[int, int]]]] = {}
                if discards:
                    ranges = _ranges(discards)
                    conn.executemany(_DELETE, ranges)
                    changes = self._gone_in_batches(ranges)
                if write_seq or discards:
                    conn.execute(_SET_META, ("last_seq", last_seq))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._failed(exc, discards, write_seq)
            return False
        # Committed: the file's batch rows and the map of them agree again.
        live = self._live
        for first, gone in changes.items():
            if gone is None:
                del live[first]
                del self._live_firsts[bisect.bisect_left(self._live_firsts, first)]
            else:
                live[first] = (live[first][0], gone)
        for block in blocks:
            live[block[0]] = (block[1], [])
            self._live_firsts.append(block[0])
        return True

    def _gone_in_batches(
        self, ranges: List[Tuple[int, int]]
    ) -> Dict[int, Optional[List[Tuple[int, int]]]]:
        """Write what discarding ``ranges`` does to rows of ``batches`` (in the transaction).

        A row all of whose messages are gone is deleted (with its ``gone``
        ranges); a row with some left gets its merged ``gone`` ranges. Returns,
        by row, the new ranges or None (deleted), for the map once committed.
        """
        firsts = self._live_firsts
        if not firsts:
            return {}
        live = self._live
        changes: Dict[int, Optional[List[Tuple[int, int]]]] = {}
        for lo, hi in ranges:
            i = bisect.bisect_right(firsts, hi) - 1
            while i >= 0:
                first = firsts[i]
                last, before = live[first]
                if last < lo:
                    break
                i -= 1
                now = changes.get(first, before)
                assert now is not None
                changes[first] = _merge([*now, (max(lo, first), min(hi, last))])
        conn = self._conn
        for first, gone in list(changes.items()):
            last = live[first][0]
            assert gone is not None
            conn.execute(_DELETE_GONE, (first, last))
            if gone == [(first, last)]:
                conn.execute(_DELETE_BATCH, (first,))
                changes[first] = None
            else:
                conn.executemany(_INSERT_GONE, gone)
        return changes

    def _failed(self, exc: sqlite3.Error, discards: List[int], write_seq: bool) -> TetherError:
        """A transaction failed: keep what it should have written for later; the error.

        The messages of the transaction are not kept: they fail (their appenders
        get the error). A full disk or an I/O error becomes an :class:`OSError`
        (``ENOSPC``, ``EIO``) as the error's ``__cause__``, itself caused by the
        SQLite error.
        """
        error = TetherError(f"outbox {self.path}: commit failed: {exc}")
        error.__cause__ = _os_error(exc)
        self._last_error = error
        now = time.monotonic()
        with self._lock:
            # Put the discards and the counter back for a later transaction, not
            # at once: a file that refuses writes is not hammered. Closing, that
            # was the last try.
            if discards:
                self._add_discards(discards, first=True)
            self._seq_dirty = self._seq_dirty or write_seq
            self._retry_at = math.inf if self._closing else now + RETRY_DELAY
            loud = now - self._fail_logged >= FAIL_LOG_INTERVAL
            if loud:
                self._fail_logged, unlogged, self._fails_unlogged = now, self._fails_unlogged, 0
            else:
                self._fails_unlogged += 1
        if loud:
            more = f" ({unlogged} more failed since the last report)" if unlogged else ""
            log.error("outbox %s: commit failed: %s%s", self.path, exc, more)
        else:
            log.debug("outbox %s: commit failed: %s", self.path, exc)
        return error

    def _hook(self, messages: List[StoredMessage]) -> None:
        assert self._on_commit is not None
        try:
            self._on_commit(messages)
        except Exception:
            log.exception("outbox %s: on_commit callback raised", self.path)

    def _hook_ref(self, seq: int, ref: Any) -> None:
        assert self._on_commit_ref is not None
        try:
            self._on_commit_ref(seq, ref)
        except Exception:
            log.exception("outbox %s: on_commit_ref callback raised", self.path)

    def _hook_refs(self, seqs: List[int], refs: List[Any]) -> None:
        assert self._on_commit_refs is not None
        try:
            self._on_commit_refs(seqs, refs)
        except Exception:
            log.exception("outbox %s: on_commit_refs callback raised", self.path)

    def _finish(self) -> bool:
        """Mark the file closed cleanly and checkpoint it (the background thread).

        The counter goes with the mark: a clean file skips no numbers at open,
        so its ``last_seq`` must be the last one used, even if the transaction
        that should have written it failed.
        """
        with self._lock:
            last_seq = self._last_seq
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(_SET_META, [("last_seq", last_seq), ("clean", 1)])
            self._conn.execute("COMMIT")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return True
        except sqlite3.Error as exc:
            log.error("outbox %s: final commit failed: %s", self.path, exc)
            return False

    def _fail_all(self, error: TetherError, cause: BaseException) -> None:
        error.__cause__ = cause
        with self._lock:
            self._broken = error
            batches = list(self._batches)
            self._batches.clear()
            for b in batches:
                b.taken = True
                b.error = error
        for b in batches:
            b.finish()

    # -- guards ------------------------------------------------------------------------

    def _check_open(self) -> None:
        # With _lock held.
        if self._broken is not None:
            raise self._broken
        if self._closing:
            raise ClientClosed(f"outbox {self.path} is closed")

    def _check_fork(self) -> None:
        # _forked is set in the child by the at-fork hook (getpid() is a system call).
        if self._forked or (not _AT_FORK and os.getpid() != self._pid):
            raise TetherError(
                f"outbox {self.path} was opened by process {self._pid}; a forked child"
                " cannot use it (open a new DurableStore in the child)"
            )

    def __repr__(self) -> str:
        return f"<DurableStore {self.path!r} last_seq={self._last_seq}>"


_NO_DISCARDS: List[int] = []  # never appended to


def _os_error(exc: sqlite3.Error) -> BaseException:
    """The OSError behind a SQLite error, when there is one (else ``exc`` itself).

    SQLite reports a full disk as ``SQLITE_FULL`` ("database or disk is full") and
    a failed read or write as ``SQLITE_IOERR`` ("disk I/O error"); it keeps the
    system's errno to itself, so these two become ``ENOSPC`` and ``EIO``.
    """
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    text = str(exc)
    if code == _SQLITE_FULL or (code is None and "disk is full" in text):
        number = errno.ENOSPC
    elif (code is not None and code & 0xFF == _SQLITE_IOERR) or (
        code is None and "disk I/O error" in text
    ):
        number = errno.EIO
    else:
        return exc
    error = OSError(number, f"{os.strerror(number)} ({text})")
    error.__cause__ = exc
    return error


_SQLITE_IOERR = 10  # SQLite's primary result codes (sqlite3.h)
_SQLITE_FULL = 13


def _batch_rows(run: _Run, blocks: List[_BatchRow], rows: List[_MessageRow]) -> None:
    """Append ``run`` as rows of ``batches`` to ``blocks``, and what they cannot hold to ``rows``.

    A row of ``batches`` holds at most :data:`BATCH_BYTES` of payloads (SQLite
    refuses a blob over 1 GB: a ``send_many()`` of big messages is cut into
    several rows); a piece of fewer than :data:`BATCH_ROWS` messages (one big
    message, say) goes to ``rows`` (of ``messages``). So does the whole run
    when an id contains a newline (the ids are joined by newlines) or the
    platform has no 4-byte array element for the sizes.
    """
    ids, datas, channel, op, first = run.ids, run.datas, run.channel, run.op, run.seq
    joined = "\n".join(ids)
    if not _SIZES or joined.count("\n") != len(ids) - 1:
        rows.extend(zip(run.seqs(), ids, repeat(channel), repeat(op), datas))
        return
    sizes = [len(d) for d in datas]
    if sum(sizes) <= BATCH_BYTES:  # the usual case: one row
        blocks.append(_batch_row(first, channel, op, joined, sizes, datas))
        return
    ends = list(accumulate(sizes))
    start = 0
    while start < len(ids):
        base = ends[start - 1] if start else 0
        end = max(start + 1, bisect.bisect_right(ends, base + BATCH_BYTES))
        if end - start >= BATCH_ROWS:
            piece = "\n".join(ids[start:end])
            blocks.append(
                _batch_row(first + start, channel, op, piece, sizes[start:end], datas[start:end])
            )
        else:
            for i in range(start, end):
                rows.append((first + i, ids[i], channel, op, datas[i]))
        start = end


def _batch_row(
    first: int, channel: str, op: int, joined: str, sizes: List[int], datas: List[bytes]
) -> _BatchRow:
    """One row of ``batches``: messages ``first`` on, ids joined, sizes packed, payloads joined."""
    packed = array(_SIZES, sizes)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return (first, first + len(sizes) - 1, channel, op, joined, packed.tobytes(), b"".join(datas))


def _batch_messages(row: Tuple[Any, ...]) -> List[StoredMessage]:
    """The messages of a row of ``batches`` (all of them, gone or not)."""
    first, last, channel, op, joined, sizes_blob, data = row
    ids = str(joined).split("\n")
    sizes = array(_SIZES or "I")
    sizes.frombytes(bytes(sizes_blob))
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        sizes.byteswap()
    data = bytes(data)
    if not len(ids) == len(sizes) == last - first + 1 or sum(sizes) != len(data):
        raise ValueError(f"batch row {first}..{last} is inconsistent")
    out = []
    at = 0
    for seq, msg_id, size in zip(range(first, last + 1), ids, sizes):
        out.append(StoredMessage(seq, msg_id, str(channel), int(op), data[at : at + size]))
        at += size
    return out


def _merge(ranges: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """``ranges`` (inclusive) sorted and merged where they overlap or touch."""
    out: List[Tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _ranges(seqs: List[int]) -> List[Tuple[int, int]]:
    """``seqs`` as ``(first, last)`` runs of consecutive numbers (acks are cumulative)."""
    first, last = seqs[0], seqs[-1]
    if last - first + 1 == len(seqs) and seqs == list(range(first, last + 1)):
        # The usual case, acks in order: one run, checked in C (no set, no sort).
        return [(first, last)]
    out: List[Tuple[int, int]] = []
    it = iter(sorted(set(seqs)))
    first = last = next(it)
    for n in it:
        if n != last + 1:
            out.append((first, last))
            first = n
        last = n
    out.append((first, last))
    return out


# -- opening ----------------------------------------------------------------------------


def _lock_sidecar(path: str) -> int:
    """Take the exclusive flock on ``path + ".lock"``; return its file descriptor."""
    try:
        import fcntl
    except ImportError as exc:  # pragma: no cover - Windows
        raise TetherError("the durable outbox needs fcntl.flock (POSIX)") from exc
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except OSError as exc:
        raise TetherError(f"outbox {path}: cannot open lock file {lock_path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise TetherError(f"outbox {path}: cannot lock {lock_path}: {exc}") from exc
        who = "pid unknown" if holder is None else f"pid {holder}"
        if holder == os.getpid():
            who += ", this process"
        raise TetherError(f"outbox {path} is in use by another process ({who})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> Optional[int]:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


_Live = Dict[int, Tuple[int, List[Tuple[int, int]]]]


def _open(
    path: str, fsync: bool
) -> Tuple[sqlite3.Connection, str, int, List[StoredMessage], _Live]:
    """Open or create the file; return (connection, session id, last seq, pending, batch rows).

    The batch rows: the live rows of ``batches``, first seq -> (last seq,
    discarded ranges).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        head = b""
        _create_private(path)
    except OSError as exc:
        raise TetherError(f"outbox {path}: cannot read it: {exc}") from exc
    if head and head != b"SQLite format 3\x00":
        raise TetherError(f"outbox {path} is not a tether_sync outbox (not a SQLite file)")
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise TetherError(f"outbox {path}: cannot open it: {exc}") from exc
    try:
        # Before anything reads the file: the connection keeps its lock for its
        # whole life, so a transaction takes no file locks (the flock already
        # keeps other stores out), and the WAL index lives in memory (no -shm).
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("PRAGMA busy_timeout = 5000")
        if _scalar(conn, "PRAGMA page_count") == 0:  # empty: nothing in it to lose
            session_id = _create(conn, path, fsync)
            pending: List[StoredMessage] = []
            last_seq = 0
            live: _Live = {}
        else:
            session_id, last_seq, pending, live = _load(conn, path, fsync)
        conn.execute("PRAGMA synchronous = " + ("FULL" if fsync else "NORMAL"))
        # Deleted rows are zeroed only where that writes no page more (see
        # SECURE_DELETE): a build's default "on" doubled what a batch costs.
        conn.execute(f"PRAGMA secure_delete = {SECURE_DELETE}")
        pages = max(1, CHECKPOINT_BYTES // _scalar(conn, "PRAGMA page_size"))
        conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
        return conn, session_id, last_seq, pending, live
    except sqlite3.Error as exc:
        conn.close()
        raise TetherError(f"outbox {path} cannot be read (corrupt?): {exc}") from exc
    except BaseException:
        conn.close()
        raise


def _create_private(path: str) -> None:
    """Create the (empty) outbox file with :data:`FILE_MODE` before SQLite opens it.

    SQLite would create it 0644 (less the umask); it creates the ``-wal``,
    ``-shm`` and ``-journal`` files with the mode of the database file, so
    they are private too.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:  # made in the meantime: SQLite opens what is there
        return
    except OSError as exc:
        raise TetherError(f"outbox {path}: cannot create it: {exc}") from exc
    os.close(fd)


def _scalar(conn: sqlite3.Connection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def _create(conn: sqlite3.Connection, path: str, fsync: bool) -> str:
    # In rollback-journal mode, so a crash during creation leaves an empty file
    # (opened as new next time), never a half-made outbox; then switch to WAL.
    session_id = secrets.token_hex(16)
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    for sql in _SCHEMA:
        conn.execute(sql)
    conn.executemany(
        _SET_META,
        [
            ("format", FORMAT_NAME),
            ("session_id", session_id),
            ("last_seq", 0),
            ("clean", 0),
            ("fsync", int(fsync)),
        ],
    )
    conn.execute("COMMIT")
    _set_wal(conn, path)
    if fsync:
        _fsync_dir(path)
    log.info("outbox %s created (session %s)", path, session_id)
    return session_id


def _set_wal(conn: sqlite3.Connection, path: str) -> None:
    mode = _scalar(conn, "PRAGMA journal_mode = WAL")
    if str(mode).lower() != "wal":
        raise TetherError(f"outbox {path}: cannot use WAL mode (got {mode!r})")


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load(
    conn: sqlite3.Connection, path: str, fsync: bool
) -> Tuple[str, int, List[StoredMessage], _Live]:
    app_id = _scalar(conn, "PRAGMA application_id")
    version = _scalar(conn, "PRAGMA user_version")
    if app_id != APPLICATION_ID:
        raise TetherError(
            f"outbox {path} is not a tether_sync outbox (a SQLite file of another"
            f" application: application_id {app_id}); it was left untouched"
        )
    if version > FORMAT_VERSION:
        raise TetherError(
            f"outbox {path} has format version {version}, written by a newer"
            f" tether_sync; this one reads up to {FORMAT_VERSION}; it was left untouched"
        )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    session_id = meta.get("session_id")
    if (
        version < 1
        or "messages" not in tables
        or (version >= 2 and not {"batches", "gone"} <= tables)
        or meta.get("format") != FORMAT_NAME
        or not isinstance(session_id, str)
        or not 0 < len(session_id) <= 64
        or not isinstance(meta.get("last_seq"), int)
    ):
        raise TetherError(f"outbox {path} is damaged (its schema or metadata is incomplete)")
    pending = [
        StoredMessage(int(seq), str(msg_id), str(channel), int(op), bytes(data))
        for seq, msg_id, channel, op, data in conn.execute(
            "SELECT seq, msg_id, channel, op, data FROM messages ORDER BY seq"
        )
    ]
    live: _Live = {}
    if version >= 2:
        gone: Dict[int, List[Tuple[int, int]]] = {}
        rows = conn.execute(
            "SELECT seq, last, channel, op, ids, sizes, data FROM batches"
        ).fetchall()
        starts = sorted(int(r[0]) for r in rows)
        for lo, hi in conn.execute("SELECT seq, last FROM gone"):
            i = bisect.bisect_right(starts, lo) - 1
            if i >= 0:
                gone.setdefault(starts[i], []).append((int(lo), int(hi)))
        for row in rows:
            first, last = int(row[0]), int(row[1])
            dropped = _merge(gone.get(first, []))
            live[first] = (last, dropped)
            try:
                messages = _batch_messages(row)
            except (ValueError, TypeError) as exc:
                raise TetherError(f"outbox {path} is damaged: {exc}") from exc
            pending.extend(m for m in messages if not _within(m.seq, dropped))
        if rows:
            pending.sort(key=lambda m: m.seq)
        if live:
            last_batch = max(v[0] for v in live.values())
            meta["last_seq"] = max(int(meta["last_seq"]), last_batch)
    last_seq = max(int(meta["last_seq"]), pending[-1].seq if pending else 0)
    _set_wal(conn, path)
    if meta.get("clean") != 1 and meta.get("fsync") != 1:
        # The last run (fsync off) ended without close(): a power loss may have
        # rolled the counter back; jump past anything it could have handed out.
        log.warning(
            "outbox %s was not closed cleanly; skipping %d seq numbers after %d",
            path,
            CRASH_SEQ_GAP,
            last_seq,
        )
        last_seq += CRASH_SEQ_GAP
    conn.execute("PRAGMA synchronous = FULL")  # this marker must be durable at once
    conn.execute("BEGIN IMMEDIATE")
    if version < 2:  # format 1: add the tables of format 2, in this transaction
        conn.execute(_BATCHES)
        conn.execute(_GONE)
        conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    conn.executemany(_SET_META, [("last_seq", last_seq), ("clean", 0), ("fsync", int(fsync))])
    conn.execute("COMMIT")
    if version < 2:
        log.info("outbox %s: format %d migrated to %d", path, version, FORMAT_VERSION)
    return session_id, last_seq, pending, live


def _within(seq: int, ranges: List[Tuple[int, int]]) -> bool:
    for lo, hi in ranges:
        if lo <= seq <= hi:
            return True
    return False


# -- fork guard ------------------------------------------------------------------------

_LIVE: weakref.WeakSet[DurableStore] = weakref.WeakSet()
# A child keeps the parent's connections referenced forever: finalizing a SQLite
# connection is a use of it, which SQLite forbids across fork().
_FORKED_LEFTOVERS: List[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for store in list(_LIVE):
        store._forked = True
        _FORKED_LEFTOVERS.append(store._conn)
        try:
            # Our copy only: the lock stays with the parent's descriptor, and a
            # child that outlives the parent does not keep the file locked.
            os.close(store._lock_fd)
        except OSError:
            pass
    _LIVE.clear()


_AT_FORK = hasattr(os, "register_at_fork")
if _AT_FORK:
    os.register_at_fork(after_in_child=_after_fork_in_child)
