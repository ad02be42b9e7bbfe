"""Experiment (issue 22): big sends with gathering writes (``sendmsg``) or one ``send()`` per chunk.

Run from the repository root::

    python benchmarks/experiments/gather_writes.py --size 65536 --total 134217728 --repeat 6

Not a benchmark of the product: it switches one internal of
``engine/transport.py`` in this process (``Link._gather``, set per link when it
is made), so it breaks if that changes. Two variants of TetherClient's send
path, in ABBA order within each repetition (gather, send, send, gather; each
variant's rate is the mean of its two runs), after one websockets sync run as
the reference, all to ``sink_server.py``'s ``/bigsink``:

* ``gather``: the code as it is: on a plain socket ``Link.send_some`` writes the
  pending chunk and the chunks queued after it (at most ``GATHER_CHUNKS``,
  about ``GATHER_BYTES``) with one ``socket.sendmsg()``, uncopied;
* ``send``: one ``send()`` per chunk, as on a TLS socket (and as the code was
  before 7 December 2026).

Prints MB/s and the ratio over websockets per repetition (min / median / max),
and gather's rate over send's per repetition (the paired comparison).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

import bench_client as bc  # noqa: E402
from websockets.sync.client import connect as websockets_connect  # noqa: E402

from tether_sync.engine import transport  # noqa: E402

ORIG_INIT = transport.Link.__init__


def init_send(self: Any, *args: Any, **kwargs: Any) -> None:
    ORIG_INIT(self, *args, **kwargs)
    self._gather = False


VARIANTS: Dict[str, Callable[..., None]] = {"gather": ORIG_INIT, "send": init_send}


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
            for name in ("gather", "send", "send", "gather"):
                transport.Link.__init__ = VARIANTS[name]  # type: ignore[method-assign]
                runs.setdefault(name, []).append(tether())
            transport.Link.__init__ = ORIG_INIT  # type: ignore[method-assign]
            for name, got in runs.items():
                results[name].append(statistics.mean(got))
            shown = ", ".join(f"{k}={v[-1]:.0f}" for k, v in results.items())
            print(f"[{rep + 1}/{args.repeat}] {shown} MB/s", file=sys.stderr, flush=True)
    finally:
        transport.Link.__init__ = ORIG_INIT  # type: ignore[method-assign]
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
    paired = [a / b for a, b in zip(results["gather"], results["send"])]
    print(
        f"gather over send, per repetition: {min(paired):.2f} / "
        f"{statistics.median(paired):.2f} / {max(paired):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
