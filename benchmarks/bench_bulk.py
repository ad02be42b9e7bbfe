"""A bulk send with DEFAULT options (issue 10): 1,000,000 messages, side by side.

Run from the repository root::

    python benchmarks/bench_bulk.py              # 1,000,000 messages
    python benchmarks/bench_bulk.py -n 200000    # smaller

``TetherClient(url)`` with nothing else set (protocol ``tether``, the default
``Queue(max_size=1000)``, flow control) sends N data envelopes carrying a 64-byte
payload to ``sink_server.py`` (its own process), which answers ``done:<bytes>``
once every byte arrived: the rate counts from the first ``send()`` until then,
so nothing still queued counts as sent. websocket-client sends the very same
envelope text (same bytes on the wire) in the same run, and the ratio is
reported. Peak RSS growth is ``ru_maxrss`` after the run minus before it: it is
bounded by the queue, not by N.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import websocket
from bench_client import PAYLOAD, SinkServer, masked_frame_len

from tether_sync import TetherClient
from tether_sync.protocol import envelope


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def bulk_tether(base: str, n: int) -> dict:
    probe = envelope.encode_data("default", PAYLOAD, "x" * 36)
    frame = masked_frame_len(len(probe.encode()))
    expected = n * frame
    client = TetherClient(f"{base}/sink?bytes={expected}")  # defaults, nothing else
    done: List[Any] = []
    got = threading.Event()

    def on_message(event: Any) -> None:
        done.append(event.payload)
        got.set()

    client.on("message", on_message)  # the sink's "done:N" is not JSON
    rss0 = _rss_kib()
    client.connect(wait=True, timeout=10)
    t0 = time.perf_counter()
    for _ in range(n):
        client.send(PAYLOAD)
    if not got.wait(600):
        raise TimeoutError("no done from the sink")
    t1 = time.perf_counter()
    stats = client.stats()
    client.close(timeout=10)
    if done[0] != f"done:{expected}":
        raise RuntimeError(
            f"sink got {done[0]!r}, expected done:{expected}: not everything arrived"
        )
    return {
        "rate": n / (t1 - t0),
        "rss_growth_mib": (_rss_kib() - rss0) / 1024,
        "dropped": stats.dropped_outbound,
        "sent": stats.sent,
    }


def bulk_websocket_client(base: str, n: int) -> dict:
    text = envelope.encode_data("default", PAYLOAD, "x" * 36)
    expected = n * masked_frame_len(len(text.encode()))
    ws = websocket.create_connection(f"{base}/sink?bytes={expected}", timeout=60)
    try:
        t0 = time.perf_counter()
        send = ws.send
        for _ in range(n):
            send(text)
        answer = ws.recv()
        t1 = time.perf_counter()
    finally:
        ws.close()
    if answer != f"done:{expected}":
        raise RuntimeError(f"sink got {answer!r}")
    return {"rate": n / (t1 - t0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    server = SinkServer()
    try:
        tether = bulk_tether(server.base, args.n)
        wsc = bulk_websocket_client(server.base, args.n)
    finally:
        server.stop()
    ratio = tether["rate"] / wsc["rate"]
    print(f"bulk send of {args.n:,} x 64-byte payloads (tether envelopes), default options")
    print(
        f"  tether_sync       {tether['rate'] / 1000:8.1f} k/s  (all {tether['sent']:,} "
        f"delivered, {tether['dropped']} dropped)"
    )
    print(f"  websocket-client  {wsc['rate'] / 1000:8.1f} k/s  (same envelope text)")
    print(f"  ratio             {ratio:8.2f}x   (target >= 2.5x)")
    print(f"  peak RSS growth   {tether['rss_growth_mib']:8.1f} MiB (target < 50 MB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"tether": tether, "wsc": wsc, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
