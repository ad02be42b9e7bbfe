"""Experiment (issue 22): how often does the pump pause at each high_water_mark?

Run from the repository root::

    python benchmarks/experiments/hwm_pauses.py --size 1048576 --total 134217728 \\
        --hwm d,2e6,4e6,16e6 --repeat 4

Wraps ``OutboundFlow.pause`` (``engine/flow_control.py``, an internal: this
breaks when it changes) to count, per run, the pauses of TetherClient's
outbound pump by what resumes them (``writable``: the socket's writability;
``timer``: the kernel-poll timer) and by whose bytes were waiting (``user``: ours
not yet written; ``kernel``: only the kernel's). Sends ``--total`` bytes of
``--size`` messages to ``sink_server.py``'s ``/bigsink`` per run; the settings
alternate in ABBA order between repetitions (``d``: the default mark).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Counter, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

import bench_client as bc  # noqa: E402

from tether_sync.engine import flow_control  # noqa: E402

COUNTS: Counter[str] = collections.Counter()
ORIG_PAUSE = flow_control.OutboundFlow.pause


def counting_pause(self: Any, user_bytes: int) -> Tuple[bool, Any]:
    report, resume = ORIG_PAUSE(self, user_bytes)
    COUNTS[resume.value] += 1
    COUNTS["user" if user_bytes else "kernel"] += 1
    return report, resume


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1048576)
    parser.add_argument("--total", type=int, default=128 * 2**20, help="bytes per run")
    parser.add_argument("--hwm", default="d,4e6,16e6", help="comma-separated; d = default")
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    flow_control.OutboundFlow.pause = counting_pause  # type: ignore[method-assign]
    hwms: List[Optional[int]] = [
        None if h == "d" else int(float(h)) for h in args.hwm.split(",") if h
    ]
    server = bc.SinkServer()
    n = bc.big_count(args.size, args.total)
    payload = os.urandom(args.size)
    expected = n * bc.masked_frame_len(args.size)
    rates: Dict[Optional[int], List[float]] = collections.defaultdict(list)
    try:
        for rep in range(args.repeat):
            for hwm in hwms if rep % 2 == 0 else list(reversed(hwms)):
                COUNTS.clear()
                options: Dict[str, Any] = {}
                if hwm is not None:
                    options["backpressure"] = {"high_water_mark": hwm}
                client = bc._tether(
                    f"{server.base}/bigsink?bytes={expected}",
                    queue={"max_size": n + 10, "overflow": "reject"},
                    max_message_size=max(args.size, 16 * 2**20),
                    **options,
                )
                try:
                    sub = client.subscribe("default")
                    client.connect(wait=True, timeout=10)
                    t0 = time.perf_counter()
                    for _ in range(n):
                        client.send(payload)
                    bc._check_done(sub.get(timeout=60), expected)
                    rate = n * args.size / (time.perf_counter() - t0) / 1e6
                finally:
                    client.close(timeout=5)
                rates[hwm].append(rate)
                label = "default" if hwm is None else f"{hwm:,}"
                print(f"hwm {label}: {rate:.0f} MB/s, {n} messages, pauses {dict(COUNTS)}")
    finally:
        flow_control.OutboundFlow.pause = ORIG_PAUSE  # type: ignore[method-assign]
        server.stop()
    for hwm, got in rates.items():
        label = "default" if hwm is None else f"{hwm:,}"
        print(
            f"hwm {label}: MB/s min {min(got):.0f}, median {statistics.median(got):.0f},"
            f" max {max(got):.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
