"""Experiment (issue 22): does the gathering write path cost small messages anything?

Run from the repository root::

    python benchmarks/experiments/gather_small_cpu.py --batch 1
    python benchmarks/experiments/gather_small_cpu.py --batch 64

CPU time (``time.process_time()``, less sensitive to other processes than
wall time) per batch of small messages through one scripted, open
:class:`~tether_sync.protocol.session.Session` (``tests/protocol/sessionkit.py``)
and a real :class:`~tether_sync.engine.transport.Link` on a loopback TCP
connection, the reader draining after each batch: ``session.send(batch)``,
``link.send_some(session)``, the session's events. It switches one internal
(``Link._gather``) between gathering writes (the code) and one ``send()`` per
chunk, in ABBA order, and prints the ratio per round (min / median / max).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from protocol.sessionkit import FakeClock, data_msg, open_peer  # noqa: E402

from tether_sync.engine.transport import Link  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1, help="messages per batch")
    parser.add_argument("--rounds", type=int, default=10, help="ABBA rounds")
    parser.add_argument("--per-run", type=int, default=2000, help="batches per run")
    args = parser.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.setblocking(False)
    link = Link(client, "ws://127.0.0.1/", 1 << 20)
    session = open_peer(FakeClock(), hello_ok={"features": []}).session
    batch = [data_msg("x" * 40, msg_id=f"m{i}") for i in range(args.batch)]

    def run(gather: bool) -> float:
        link._gather = gather
        t0 = time.process_time()
        for _ in range(args.per_run):
            session.send(batch)
            link.send_some(session)
            list(session.events())
            try:
                while server.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
        return (time.process_time() - t0) / args.per_run * 1e6

    results: Dict[bool, List[float]] = {True: [], False: []}
    try:
        for _ in range(args.rounds):
            for gather in (True, False, False, True):
                results[gather].append(run(gather))
    finally:
        link.close()
        server.close()
        listener.close()
    for gather, got in results.items():
        name = "gather" if gather else "send"
        print(
            f"batch of {args.batch}, {name}: CPU µs per batch min {min(got):.1f} "
            f"median {statistics.median(got):.1f} max {max(got):.1f}"
        )
    paired = [a / b for a, b in zip(results[True], results[False])]
    print(
        f"gather over send, per run pair: {min(paired):.3f} / "
        f"{statistics.median(paired):.3f} / {max(paired):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
