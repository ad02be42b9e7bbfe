"""The send benchmark with OpenTelemetry instrumentation on vs off (DESIGN §8).

Run from the repository root::

    python benchmarks/bench_otel.py               # 200,000 messages, 3 pairs
    python benchmarks/bench_otel.py --n 50000 --pairs 1

Each pair sends ``n`` 64-byte messages (protocol ``raw``, like
``bench_client.py``'s send row) to ``sink_server.py`` in its own process, once
without instrumentation and once with :func:`tether_sync.otel.instrument` on an
SDK ``MeterProvider`` whose reader is collected every ``--interval`` seconds
(0.1 s: 600 times more often than the SDK's default export interval) by a
thread of its own, as a periodic exporter would. The order alternates between
pairs so that warm-up does not favour one side. The rate is from the first
``send()`` until the sink has every byte. The result is the median of the
pairs; the target is "on" within 5 % of "off".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_client import PAYLOAD, WAIT, SinkServer, _check_done, masked_frame_len
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tether_sync import TetherClient
from tether_sync.otel import instrument


def send_rate(base: str, n: int, instrumented: bool, interval: float) -> Tuple[float, float]:
    """Messages per second from the first send() until the sink has every byte.

    Returns:
        ``(rate, cpu)``: the rate, and this process's CPU microseconds per
        message over the same span (every thread: the caller, the I/O thread
        and the collector), which other processes' load disturbs far less.
    """
    expected = n * masked_frame_len(len(PAYLOAD))
    client = TetherClient(
        f"{base}/sink?bytes={expected}",
        protocol="raw",
        heartbeat=False,
        reconnect=False,
        queue={"max_size": n + 10, "overflow": "reject"},
    )
    stop = threading.Event()
    collector: Optional[threading.Thread] = None
    collections = [0]
    if instrumented:
        reader = InMemoryMetricReader()
        instrument(client, MeterProvider(metric_readers=[reader]))

        def collect() -> None:
            while not stop.wait(interval):
                reader.get_metrics_data()
                collections[0] += 1

        collector = threading.Thread(target=collect, name="bench-collector", daemon=True)
        collector.start()
    sub = client.subscribe("default")  # raw: the sink's "done:N" arrives here
    try:
        client.connect(wait=True, timeout=10)
        send = client.send
        c0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(n):
            send(PAYLOAD)
        answer: Any = sub.get(timeout=WAIT)
        t1 = time.perf_counter()
        c1 = time.process_time()
        _check_done(answer, expected)
    finally:
        stop.set()
        if collector is not None:
            collector.join(5)
        client.close(timeout=5)
    if instrumented and collections[0] == 0:
        raise RuntimeError("the collector never ran: make --interval shorter than a run")
    return n / (t1 - t0), (c1 - c0) / n * 1e6


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="messages per run")
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs (median)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between collections")
    args = parser.parse_args(argv)
    sink = SinkServer()
    try:
        send_rate(sink.base, min(args.n, 20_000), False, args.interval)  # warm-up
        off: List[float] = []
        on: List[float] = []
        cpu_off: List[float] = []
        cpu_on: List[float] = []
        for i in range(args.pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            for instrumented in order:
                rate, cpu = send_rate(sink.base, args.n, instrumented, args.interval)
                (on if instrumented else off).append(rate)
                (cpu_on if instrumented else cpu_off).append(cpu)
                label = "on " if instrumented else "off"
                print(f"pair {i + 1} {label}: {rate:,.0f} msg/s, {cpu:.2f} us CPU/msg", flush=True)
    finally:
        sink.stop()
    m_off, m_on = statistics.median(off), statistics.median(on)
    change = (m_on - m_off) / m_off * 100
    print(f"median rate off {m_off:,.0f} msg/s, on {m_on:,.0f} msg/s: {change:+.1f} %")
    c_off, c_on = statistics.median(cpu_off), statistics.median(cpu_on)
    cpu_change = (c_on - c_off) / c_off * 100
    print(f"median CPU off {c_off:.2f} us/msg, on {c_on:.2f} us/msg: {cpu_change:+.1f} %")
    print("rate within 5 %" if change >= -5 else "rate NOT within 5 %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
