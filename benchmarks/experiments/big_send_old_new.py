"""Experiment (issue 22, session 21): 1 MiB sends, the write path before and after, paired.

Run from the repository root::

    python benchmarks/experiments/big_send_old_new.py               # 8 repetitions
    python benchmarks/experiments/big_send_old_new.py --repeat 16 --count 256

Not a benchmark of the product: the ``old`` variant undoes session 21's three
changes to the write path in this process by monkeypatching internals, so it
breaks when they change:

* ``engine/transport.set_notsent_lowat`` sets TCP_NOTSENT_LOWAT at half the
  high-water mark (now: at the mark);
* ``protocol/writebuf.PIECE`` is 256 KiB (now 1 MiB);
* ``WriteBuffer.pending_chunks`` stops at its byte cap without the small framed
  chunks after it (now a barrier ping and the next header ride along).

Each repetition runs ``old``, ``new`` and websockets sync (``ws``, the
reference), each sending ``--count`` 1 MiB binary messages to
``sink_server.py``'s ``/bigsink`` until it has every byte, in an order that
alternates by repetition (old, new, ws; then ws, new, old). Before the first,
websocket-client sends a few, as in ``bench_client.py`` (it raises glibc's mmap
threshold, which websockets' own speed depends on). Printed, min / median / max
over the repetitions: MB/s, the client process's CPU time per message
(``process_time``: the caller's and the I/O thread's; the server is another
process), and per repetition the ratios old / new and ws / new of CPU per
message and new / ws of the rate. CPU per message is what other processes'
load moves least.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_client as bc  # noqa: E402
import websocket  # noqa: E402
from websockets.sync.client import connect as websockets_connect  # noqa: E402

from tether_sync.engine import transport  # noqa: E402
from tether_sync.protocol import writebuf  # noqa: E402

SIZE = 2**20
NEW = {
    "lowat": transport.set_notsent_lowat,
    "piece": writebuf.PIECE,
    "pending_chunks": writebuf.WriteBuffer.pending_chunks,
}


def _old_lowat(sock: socket.socket, high_water_mark: int) -> bool:
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is None or high_water_mark >= 2**31:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(16384, high_water_mark // 2))
    except OSError:
        return False
    return True


def _old_pending_chunks(self: Any, max_chunks: int, max_bytes: int) -> List[memoryview]:
    chunks = self._chunks
    if not chunks:
        return []
    head = chunks[0]
    first = memoryview(self._ready(0) if isinstance(head, writebuf._Unmasked) else head)
    out = [first[self._offset :]]
    size = len(out[0])
    if len(chunks) > 1 and size < max_bytes:
        for i in range(1, min(len(chunks), max_chunks)):
            chunk = self._ready(i)
            out.append(memoryview(chunk))
            size += len(chunk)
            if size >= max_bytes:
                break
    return out


def use(variant: str) -> None:
    """Put the write path of ``variant`` ("old" or "new") in place."""
    old = variant == "old"
    transport.set_notsent_lowat = _old_lowat if old else NEW["lowat"]  # type: ignore[assignment]
    writebuf.PIECE = 256 * 1024 if old else NEW["piece"]  # type: ignore[assignment]
    writebuf.WriteBuffer.pending_chunks = (  # type: ignore[method-assign]
        _old_pending_chunks if old else NEW["pending_chunks"]
    )


def run_tether(base: str, n: int, payload: bytes, variant: str) -> Tuple[float, float]:
    expected = n * bc.masked_frame_len(len(payload))
    use(variant)
    try:
        client = bc._tether(
            f"{base}/bigsink?bytes={expected}",
            queue={"max_size": n + 10, "overflow": "reject"},
            max_message_size=16 * 2**20,
        )
        try:
            sub = client.subscribe("default")
            client.connect(wait=True, timeout=10)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                client.send(payload)
            bc._check_done(sub.get(timeout=bc.WAIT), expected)
            return bc._rate_and_cpu(n, len(payload), t0, c0)
        finally:
            client.close(timeout=5)
    finally:
        use("new")


def run_websockets(base: str, n: int, payload: bytes) -> Tuple[float, float]:
    expected = n * bc.masked_frame_len(len(payload))
    with websockets_connect(
        f"{base}/bigsink?bytes={expected}", compression=None, open_timeout=bc.WAIT, max_size=None
    ) as ws:
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            ws.send(payload)
        bc._check_done(ws.recv(timeout=bc.WAIT), expected)
        return bc._rate_and_cpu(n, len(payload), t0, c0)


def spread(values: List[float], fmt: str = "{:,.0f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--count", type=int, default=256, help="1 MiB messages per run")
    args = parser.parse_args()
    payload = os.urandom(SIZE)
    server = bc.SinkServer()
    base = server.base
    results: Dict[str, List[Tuple[float, float]]] = {"old": [], "new": [], "ws": []}
    try:
        warm = 4 * bc.masked_frame_len(SIZE)
        wsc = websocket.create_connection(f"{base}/bigsink?bytes={warm}", timeout=bc.WAIT)
        for _ in range(4):
            wsc.send_binary(payload)
        bc._check_done(wsc.recv(), warm)
        wsc.close()
        runs: Dict[str, Callable[[], Tuple[float, float]]] = {
            "old": lambda: run_tether(base, args.count, payload, "old"),
            "new": lambda: run_tether(base, args.count, payload, "new"),
            "ws": lambda: run_websockets(base, args.count, payload),
        }
        for rep in range(args.repeat):
            order = ["old", "new", "ws"] if rep % 2 == 0 else ["ws", "new", "old"]
            for name in order:
                results[name].append(runs[name]())
    finally:
        server.stop()
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    print(f"{args.repeat} repetitions of {args.count} x 1 MiB; load average after: {load}")
    print("min / median / max")
    for name, got in results.items():
        print(
            f"{name:4} {spread([r for r, _ in got])} MB/s, "
            f"client CPU {spread([c for _, c in got])} us per message"
        )
    old, new, ws = results["old"], results["new"], results["ws"]
    cpu = "{:.2f}"
    print(f"CPU per message, old / new: {spread([o[1] / n[1] for o, n in zip(old, new)], cpu)}")
    print(f"CPU per message, ws / new:  {spread([w[1] / n[1] for w, n in zip(ws, new)], cpu)}")
    print(f"CPU per message, ws / old:  {spread([w[1] / o[1] for w, o in zip(ws, old)], cpu)}")
    print(f"rate, new / ws:             {spread([n[0] / w[0] for n, w in zip(new, ws)], cpu)}")
    print(f"rate, old / ws:             {spread([o[0] / w[0] for o, w in zip(old, ws)], cpu)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
