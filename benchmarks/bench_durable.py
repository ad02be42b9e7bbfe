"""Benchmark the durable outbox store (tether_sync.durable.DurableStore).

Run from the repository root::

    python benchmarks/bench_durable.py [--quick] [--repeat N] [--dir DIR] [--json out.json]
    python benchmarks/bench_durable.py --no-fsync-rows    # skip the slow fsync=True rows

The claim (issue 11): the durable outbox sustains >= 20,000 msg/s with 64-byte
payloads. ``send()`` returns only once its message is committed, so what one
sending thread gets is 1 / commit latency; the store commits a lone sender's
message on the sender's own thread (no hand-off, one autocommit INSERT on a
connection in exclusive locking mode) and groups concurrent senders. This is
the store alone; through ``send()`` to a peer that acks (the target's real
measurement) see ``bench_acks.py --only durable``.

On the 2-vCPU development machine (shared; Python 3.11, SQLite 3.40), median
of 3, fsync=False: ``append, 1 thread`` 60-75 k msg/s (it was 27-31 k with
a second connection for checkpoints, file locks per transaction and 4 KB
pages); fsync=True: 2.8 k msg/s, 8 threads 9 k msg/s at 3.9 msg/tx.

Rows, each for ``fsync=False`` (WAL, synchronous=NORMAL) and ``fsync=True``
(synchronous=FULL), 64-byte payloads, a fresh file per run, median of the repeats:

* ``append, 1 thread``: a loop of blocking ``append()`` (what one sender gets);
* ``append, 8 threads``: 8 threads in such loops on one store (group commit);
* ``append_many(64)``: batches of 64 in one call (for information: bulk import);
* ``append_batch(1000), acked``: what a ``send_many(1000)`` loop asks of the store
  (one row of ``batches`` a call; each call's seqs discarded, as acks do);
* ``append_async, window 256``: one thread keeps up to 256 appends in flight
  (for information: what pipelining would give; send() does not do it);
* ``raw sqlite3``: one autocommit INSERT per message on a bare connection with
  the store's settings (exclusive locking, 1 KB pages; the floor).

Also the latency of one blocking append (p50/p99, 1 thread). Targets are
printed, never asserted; the exit status is 0. The file lives in ``--dir``
(default: a temporary directory): fsync numbers depend on that disk.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Deque, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tether_sync.durable import CHECKPOINT_BYTES, PAGE_SIZE, AppendHandle, DurableStore

PAYLOAD = b"x" * 64
TARGET = 20_000


def fresh(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    for suffix in ("", "-wal", "-shm", ".lock"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    return path


def one_thread(store: DurableStore, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        store.append(f"m{i}", "bench", 1, PAYLOAD)
    return time.perf_counter() - t


def eight_threads(store: DurableStore, n: int) -> float:
    per = n // 8
    barrier = threading.Barrier(9)

    def work() -> None:
        barrier.wait()
        for i in range(per):
            store.append(f"m{i}", "bench", 1, PAYLOAD)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    barrier.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def many(store: DurableStore, n: int) -> float:
    batch = [("m", "bench", 1, PAYLOAD)] * 64
    t = time.perf_counter()
    for _ in range(n // 64):
        store.append_many(batch)
    return time.perf_counter() - t


def batch_acked(store: DurableStore, n: int) -> float:
    """``send_many(1000)``'s store work: a run of 1,000 in one call, the one before discarded.

    As a ``send_many()`` loop against a server that acks: each call commits one
    row of ``batches``, and the acks of the previous call's messages are
    deleted in a later transaction.
    """
    ids = [f"m{i:035d}" for i in range(1000)]  # as long as the client's ids
    datas = [PAYLOAD] * 1000
    t = time.perf_counter()
    for _ in range(n // 1000):
        seqs = store.append_batch(ids, "bench", 1, datas)
        store.discard(seqs)
    return time.perf_counter() - t


def windowed(store: DurableStore, n: int) -> float:
    window: Deque[AppendHandle] = deque()
    t = time.perf_counter()
    for i in range(n):
        window.append(store.append_async(f"m{i}", "bench", 1, PAYLOAD))
        if len(window) >= 256:
            window.popleft().result()
    while window:
        window.popleft().result()
    return time.perf_counter() - t


def raw_sqlite(path: str, fsync: bool, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_BYTES // PAGE_SIZE}")
    conn.execute("PRAGMA synchronous = " + ("FULL" if fsync else "NORMAL"))
    conn.execute("CREATE TABLE m (seq INTEGER PRIMARY KEY, i TEXT, c TEXT, op INT, d BLOB)")
    t = time.perf_counter()
    for i in range(n):
        conn.execute("INSERT INTO m VALUES (?, ?, ?, ?, ?)", (i, "m", "bench", 1, PAYLOAD))
    dt = time.perf_counter() - t
    conn.close()
    return dt


def latency(store: DurableStore, n: int) -> List[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        store.append(f"m{i}", "bench", 1, PAYLOAD)
        out.append(time.perf_counter() - t)
    out.sort()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N, a smoke test")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the outbox files go")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument(
        "--no-fsync-rows",
        action="store_true",
        help="skip the fsync=True rows (minutes on a busy disk)",
    )
    args = ap.parse_args()
    n_normal = 5_000 if args.quick else 50_000
    n_full = 500 if args.quick else 3_000

    directory = args.dir or tempfile.mkdtemp(prefix="bench_durable-")
    print(f"# bench_durable: 64-byte payloads, dir {directory}, median of {args.repeat}")
    print(f"# load average before: {os.getloadavg()[0]:.2f}")
    results: Dict[str, Dict[str, float]] = {}
    rows: List[tuple] = [
        ("append, 1 thread", one_thread),
        ("append, 8 threads", eight_threads),
        ("append_many(64)", many),
        ("append_batch(1000), acked", batch_acked),
        ("append_async, window 256", windowed),
    ]
    for fsync in (False,) if args.no_fsync_rows else (False, True):
        n = n_full if fsync else n_normal
        mode = "fsync=True " if fsync else "fsync=False"
        for name, fn in rows:
            rates = []
            transactions = []
            for r in range(args.repeat):
                store = DurableStore(fresh(directory, f"b{r}.sqlite"), fsync=fsync)
                try:
                    dt = fn(store, n)
                    rates.append(store.appended / dt)
                    transactions.append(store.transactions / store.appended)
                finally:
                    store.close()
            rate = statistics.median(rates)
            per_tx = 1 / statistics.median(transactions)
            results[f"{name} {mode}"] = {"msg_s": rate, "msgs_per_transaction": per_tx}
            mark = ""
            if name.startswith("append,"):
                mark = "  target met" if rate >= TARGET else f"  below {TARGET:,}"
            print(f"{mode}  {name:26s} {rate:>10,.0f} msg/s  {per_tx:6.1f} msg/tx{mark}")
        raws = [raw_sqlite(fresh(directory, "raw.sqlite"), fsync, n) for _ in range(args.repeat)]
        rate = n / statistics.median(raws)
        results[f"raw sqlite3 {mode}"] = {"msg_s": rate, "msgs_per_transaction": 1.0}
        print(f"{mode}  {'raw sqlite3 (floor)':26s} {rate:>10,.0f} msg/s     1.0 msg/tx")
        store = DurableStore(fresh(directory, "lat.sqlite"), fsync=fsync)
        try:
            lat = latency(store, min(n, 5_000))
        finally:
            store.close()
        p50, p99 = lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6
        results[f"latency {mode}"] = {"p50_us": p50, "p99_us": p99}
        print(f"{mode}  {'append latency, 1 thread':26s} p50 {p50:8.1f} us   p99 {p99:8.1f} us")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
