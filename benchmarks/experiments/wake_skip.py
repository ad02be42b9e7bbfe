"""Experiment (issue 22): does skipping the wake byte cost send or receive throughput?

Run from the repository root::

    python benchmarks/experiments/wake_skip.py                # send and recv, 4 ABBA rounds
    python benchmarks/experiments/wake_skip.py --only send --rounds 8

``Poller.wake`` writes the wake byte only while the I/O thread is in its
selector, and ``Poller.wait`` does not sleep after a wake-up asked for while it
was busy (``engine/poller.py``). This puts the old pair back (a byte for every
wake-up; this breaks when ``Poller`` changes) for the "old" runs, in one process,
alternating old, new, new, old per round, and measures ``bench_client.py``'s
raw send row (``send_tether``: n sends until the sink has every byte) and its
``sub.get()`` receive row (``recv_tether``). Prints each run and the paired
ratios new / old (> 1: the new code faster) with their min / median / max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

import bench_client as bc  # noqa: E402

from tether_sync.engine import poller as poller_mod  # noqa: E402

NEW_WAKE, NEW_WAIT = poller_mod.Poller.wake, poller_mod.Poller.wait


def old_wake(self: Any) -> None:
    """Before: a byte for every wake-up, whether the I/O thread sleeps or not."""
    try:
        self._wake_w.send(b"\0")
    except OSError:
        pass


def old_wait(self: Any, timeout: Optional[float]) -> List[int]:
    """Before: sleep in the selector; only a byte ends the sleep early."""
    ready: List[int] = []
    if self._select(timeout, ready):
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass
    return ready


def use(which: str) -> None:
    if which == "old":
        poller_mod.Poller.wake, poller_mod.Poller.wait = old_wake, old_wait  # type: ignore[method-assign]
    else:
        poller_mod.Poller.wake, poller_mod.Poller.wait = NEW_WAKE, NEW_WAIT  # type: ignore[method-assign]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("send", "recv"))
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds (4 runs each)")
    parser.add_argument("--n-send", type=int, default=50_000)
    parser.add_argument("--n-recv", type=int, default=100_000)
    args = parser.parse_args(argv)
    cases: Dict[str, Callable[[str], float]] = {
        "send": lambda base: bc.send_tether(base, args.n_send)["rate"],
        "recv": lambda base: bc.recv_tether(base, args.n_recv)["rate"],
    }
    server = bc.SinkServer()
    try:
        for name, run in cases.items():
            if args.only and name != args.only:
                continue
            rates: Dict[str, List[float]] = {"old": [], "new": []}
            for which in ["old", "new", "new", "old"] * args.rounds:
                use(which)  # before the client is made: its wake-ups bind the methods
                rate = run(server.base)
                rates[which].append(rate)
                load = os.getloadavg()[0]
                print(f"{name} {which}: {rate:,.0f} msg/s (load {load:.2f})", file=sys.stderr)
            use("new")
            pairs = [new / old for new, old in zip(rates["new"], rates["old"])]
            print(
                f"{name}: new / old paired, min {min(pairs):.2f} median "
                f"{statistics.median(pairs):.2f} max {max(pairs):.2f} (n={len(pairs)}); "
                f"median rates old {statistics.median(rates['old']):,.0f}, "
                f"new {statistics.median(rates['new']):,.0f} msg/s"
            )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
