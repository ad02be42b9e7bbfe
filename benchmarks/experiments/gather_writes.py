"""Experiment (issue 22): would writing a big frame's header with its payload help?

Run from the repository root::

    python benchmarks/experiments/gather_writes.py --size 65536 --total 134217728 --repeat 6

Not a benchmark of the product: it monkeypatches two internals in this process
and switches between them, so it breaks when they change (it was written
against ``protocol/writebuf.py`` and ``engine/transport.py`` of 7 December
2026). Three variants of TetherClient's big-message send path, in ABBA order
within each repetition (base, join, gather, gather, join, base; each variant's
rate is the mean of its two runs), after one websockets sync run as the
reference, all to ``sink_server.py``'s ``/bigsink``:

* ``base``: the code as it is (a big frame's 14-byte header and its masked
  payload are two chunks, written by two ``send()`` calls);
* ``join``: ``WriteBuffer.pending()`` joins a small first chunk with the big one
  after it (a copy), so one ``send()`` writes both;
* ``gather``: ``Link.send_some`` writes the pending chunk and up to 15 queued
  after it with one ``socket.sendmsg()`` (no copy; several messages per call).

Prints MB/s and the ratio over websockets per repetition (min / median / max).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

import bench_client as bc  # noqa: E402
from websockets.sync.client import connect as websockets_connect  # noqa: E402

from tether_sync.engine import transport  # noqa: E402
from tether_sync.protocol import writebuf  # noqa: E402

ORIG_PENDING = writebuf.WriteBuffer.pending
ORIG_SEND_SOME = transport.Link.send_some


def pending_join(self: Any) -> memoryview:
    chunks = self._chunks
    if (
        len(chunks) > 1
        and len(chunks[0]) - self._offset < 65536
        and len(chunks[1]) >= writebuf.BIG_CHUNK
    ):
        first = chunks.popleft()[self._offset :]
        chunks[0] = first + chunks[0]
        self._offset = 0
    return ORIG_PENDING(self)


def send_some_gather(self: Any, session: Any) -> int:
    total = 0
    out = session._out
    while True:
        data = session.data_to_send()
        if not data:
            break
        try:
            if len(out._chunks) > 1 and not isinstance(self.sock, ssl.SSLSocket):
                buffers = [data, *itertools.islice(out._chunks, 1, 16)]
                n = self.sock.sendmsg(buffers)
                want = sum(len(b) for b in buffers)
            else:
                n = self.sock.send(data)
                want = len(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            break
        except OSError:
            return -1
        session.sent(n)
        total += n
        self.flow.wrote(n)
        if n < want:
            break
    return total


VARIANTS: Dict[str, Tuple[Callable[..., Any], Callable[..., Any]]] = {
    "base": (ORIG_PENDING, ORIG_SEND_SOME),
    "join": (pending_join, ORIG_SEND_SOME),
    "gather": (ORIG_PENDING, send_some_gather),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=65536)
    parser.add_argument("--total", type=int, default=64 * 2**20, help="bytes per run")
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--pin", action="store_true")
    args = parser.parse_args()
    size = args.size
    server = bc.SinkServer()
    if args.pin:
        print(bc._pin(server.proc.pid))
    n = bc.big_count(size, args.total)
    payload = os.urandom(size)
    expected = n * bc.masked_frame_len(size)
    url = f"{server.base}/bigsink?bytes={expected}"

    def tether() -> float:
        client = bc._tether(
            url,
            queue={"max_size": n + 10, "overflow": "reject"},
            max_message_size=max(size, 16 * 2**20),
        )
        try:
            sub = client.subscribe("default")
            client.connect(wait=True, timeout=10)
            t0 = time.perf_counter()
            for _ in range(n):
                client.send(payload)
            bc._check_done(sub.get(timeout=60), expected)
            return n * size / (time.perf_counter() - t0) / 1e6
        finally:
            client.close(timeout=5)

    def websockets_run() -> float:
        with websockets_connect(url, compression=None, open_timeout=60, max_size=None) as ws:
            t0 = time.perf_counter()
            for _ in range(n):
                ws.send(payload)
            bc._check_done(ws.recv(timeout=60), expected)
            return n * size / (time.perf_counter() - t0) / 1e6

    results: Dict[str, List[float]] = collections.defaultdict(list)
    load_before = os.getloadavg()[0]
    try:
        for rep in range(args.repeat):
            runs: Dict[str, List[float]] = {"websockets": [websockets_run()]}
            for name in ("base", "join", "gather", "gather", "join", "base"):
                writebuf.WriteBuffer.pending, transport.Link.send_some = VARIANTS[name]  # type: ignore[method-assign]
                runs.setdefault(name, []).append(tether())
            writebuf.WriteBuffer.pending, transport.Link.send_some = VARIANTS["base"]  # type: ignore[method-assign]
            for name, got in runs.items():
                results[name].append(statistics.mean(got))
            shown = ", ".join(f"{k}={v[-1]:.0f}" for k, v in results.items())
            print(f"[{rep + 1}/{args.repeat}] {shown} MB/s", file=sys.stderr, flush=True)
    finally:
        writebuf.WriteBuffer.pending, transport.Link.send_some = VARIANTS["base"]  # type: ignore[method-assign]
        server.stop()
    print(
        f"size {size}, {n} messages per run, {args.repeat} repetitions; load average "
        f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    print("variant      MB/s min / median / max     over websockets min / median / max")
    for name, got in results.items():
        ratios = [a / b for a, b in zip(got, results["websockets"])]
        print(
            f"{name:<10} {min(got):6.0f} {statistics.median(got):6.0f} {max(got):6.0f}"
            f"        {min(ratios):.2f} {statistics.median(ratios):.2f} {max(ratios):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
