"""What acknowledged delivery costs (issue 11): the same send, extension on and off.

Run from the repository root::

    python benchmarks/bench_acks.py            # 100,000 messages per run
    python benchmarks/bench_acks.py -n 50000 --repeat 5
    python benchmarks/bench_acks.py -n 50000 --repeat 3 --only durable
    python benchmarks/bench_acks.py --only sink --repeat 5 --no-pin   # the OS places them

A ``tether-sync serve`` subprocess (the bundled server, its own process) with
the reliable-sessions extension on, and one with ``--no-extensions``, in ABBA
order. Each run: ``TetherClient(url)`` with default options sends N tether
envelopes (64-byte payload) in a loop and ``close()``\\ s, which returns once
everything was written (off) or acknowledged (on). The rate counts from the
first ``send()`` until ``close()`` returned True. Also the durable outbox:
``Queue(path=...)`` against the server with acks, fsync off.

The bundled server (Python ``websockets``) is the bottleneck of those runs, and
the extension costs *it* CPU per message. What acks cost the *client* is
measured against ``sink_server.py`` (its own process, not the bottleneck): its
``/acksink`` speaks just enough of DESIGN §5 to grant ``ack`` and acknowledge
every 64 messages, its ``/sink`` ignores the hello (extension off). The durable
outbox's target (>= 20,000 msg/s) is measured there too: a plain loop of
``send()`` on ``TetherClient(url, queue=Queue(path=...))``, otherwise default
options, to ``/acksink``; each ``send()`` returns once its message is committed
to the file. Against the bundled server it is slower (that server is the
bottleneck). ``--only durable`` runs just that row (``--only sink``: the sink rows).

How the durable rates are counted: "calls" from the first ``send()`` (or
``send_many()``) until the loop of calls returned: every message is then
committed to the file, which is what the outbox promises (a ``kill -9`` after
that loses nothing), so the targets (``send()`` >= 20,000 msg/s, ``send_many``
>= 100,000 msg/s) are judged on it; "acked" until the sink had every message
and ``close()`` returned. The two differ by the last window of messages in
flight (at most ``max_size``, 1,000 by default, which the outbox lets be
unacknowledged); ``--max-size 100000`` shows whether that bound caps them.

The sink rows pin this process to the first CPU and the sink to the last (as
``bench_client.py --pin``): on a 2-CPU machine the OS otherwise often runs the
sink on the client's CPU, and the client-side cost then includes the sink's
work. ``--no-pin`` leaves placement to the OS.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tether_sync import Queue, TetherClient

PAYLOAD = "0123456789abcdef" * 4
#: Messages per ``send_many()`` call in the durable ``send_many`` row.
BATCH = 1000


def serve(args: List[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether_sync", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"ws://\S+", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"serve did not start: {line!r}")
    return proc, match.group(0)


def run(url: str, n: int, queue: Optional[Dict[str, object]] = None) -> Dict[str, float]:
    client = TetherClient(url, **({"queue": queue} if queue else {}))
    client.connect(wait=True, timeout=10)
    t0 = time.perf_counter()
    for _ in range(n):
        client.send(PAYLOAD, channel="bench")
    ok = client.close(timeout=300)
    t1 = time.perf_counter()
    stats = client.stats()
    if not ok:
        raise RuntimeError("close() did not drain")
    return {"rate": n / (t1 - t0), "acked": stats.acked}


def sink_pair(
    n: int,
    repeat: int,
    pair: bool = True,
    durable: bool = True,
    pin: bool = False,
    max_size: Optional[int] = None,
) -> Dict[str, Any]:
    """Client-side cost: the same default client to /sink (off) and /acksink (on);
    and a durable outbox to /acksink. Medians (k/s) under "off", "on", "durable".

    ``pin``: this process on the first CPU, the sink on the last (as
    ``bench_client.py --pin``), so the sink never competes with the client.
    ``max_size``: the clients' ``Queue(max_size=...)`` (None: the default, 1000);
    unacknowledged messages count against it, so with acks it is the window.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import threading

    from bench_client import SinkServer, _pin, masked_frame_len

    from tether_sync.protocol import envelope

    server = SinkServer()
    if pin:
        print(f"  (pinned: {_pin(server.proc.pid)})", file=sys.stderr)
    frame = masked_frame_len(len(envelope.encode_data("bench", PAYLOAD, "x" * 36).encode()))
    tmp = tempfile.TemporaryDirectory()
    files: List[str] = []

    # CPU seconds of this process per message: the pair runs (until closed), and
    # the durable runs' calls (until the loop of calls returned; both threads).
    cpu: Dict[str, List[float]] = {"off": [], "on": [], "durable": [], "durable_many": []}

    def one(path: str, count: int, outbox: bool = False, batch: int = 0) -> Tuple[float, float]:
        """Send ``count`` messages; (rate until acknowledged and closed, rate of the calls).

        Also records this process's CPU time per message (every thread of the
        client; the sink is another process) under "on" or "off" for the pair runs.
        """
        url = f"{server.base}/{path}"
        size = {} if max_size is None else {"max_size": max_size}
        if outbox:
            files.append(os.path.join(tmp.name, f"outbox{len(files)}.sqlite"))
            client = TetherClient(url, queue=Queue(path=files[-1], **size))
        else:
            client = TetherClient(url, queue=Queue(**size))
        got = threading.Event()
        client.on("message", lambda e: got.set() if str(e.payload).startswith("done:") else None)
        client.connect(wait=True, timeout=10)
        t0 = time.perf_counter()
        c0 = time.process_time()
        if batch:
            payloads = [PAYLOAD] * batch
            for _ in range(count // batch):
                client.send_many(payloads, channel="bench")
        else:
            for _ in range(count):
                client.send(PAYLOAD, channel="bench")
        t_calls = time.perf_counter()
        c_calls = time.process_time()
        if outbox:
            cpu["durable_many" if batch else "durable"].append((c_calls - c0) / count)
        if not got.wait(300):
            raise TimeoutError(path)
        ok = client.close(timeout=60)
        t1 = time.perf_counter()
        c1 = time.process_time()
        if not ok:
            raise RuntimeError(f"close() False on {path}")
        if not outbox:
            cpu["on" if path.startswith("acksink") else "off"].append((c1 - c0) / count)
        return count / (t1 - t0), count / (t_calls - t0)

    text = envelope.encode_data("bench", PAYLOAD, "x" * 36)

    def wsc() -> float:
        """websocket-client sending the same envelope text (no acks): the reference."""
        import websocket

        ws = websocket.create_connection(f"{server.base}/sink?bytes={n * frame}", timeout=60)
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                ws.send(text)
            if ws.recv() != f"done:{n * frame}":
                raise RuntimeError("wsc: wrong done")
            return n / (time.perf_counter() - t0)
        finally:
            ws.close()

    rates: Dict[str, List[float]] = {
        key: []
        for key in (
            "wsc",
            "off",
            "on",
            "durable",
            "durable_calls",
            "durable_many",
            "durable_many_calls",
        )
    }
    n_many = n - n % BATCH
    try:
        for _ in range(repeat):
            rates["wsc"].append(wsc())
            if pair:  # ABBA within each round
                rates["on"].append(one(f"acksink?n={n}", n)[0])
                rates["off"].append(one(f"sink?bytes={n * frame}", n)[0])
                rates["off"].append(one(f"sink?bytes={n * frame}", n)[0])
                rates["on"].append(one(f"acksink?n={n}", n)[0])
            if durable:
                done, calls = one(f"acksink?n={n}", n, outbox=True)
                rates["durable"].append(done)
                rates["durable_calls"].append(calls)
                done, calls = one(f"acksink?n={n_many}", n_many, outbox=True, batch=BATCH)
                rates["durable_many"].append(done)
                rates["durable_many_calls"].append(calls)
    finally:
        server.stop()
        tmp.cleanup()
    for key, got in rates.items():
        if got:
            print(f"  ({key}: {', '.join(f'{r / 1000:.1f}' for r in got)} k/s)", file=sys.stderr)
    out: Dict[str, Any] = {key: statistics.median(got) for key, got in rates.items() if got}
    out["on_runs"] = rates["on"]
    out["cpu_durable"] = cpu["durable"]
    out["cpu_durable_many"] = cpu["durable_many"]
    out["wsc_runs2"] = [w for w in rates["wsc"] for _ in (0, 1)]  # two "on" runs a round
    for key in ("durable_calls", "durable_many_calls"):
        if rates[key]:
            out[f"{key}_vs_wsc"] = [d / w for d, w in zip(rates[key], rates["wsc"])]
    for key, got in rates.items():
        if got:
            out[f"{key}_min"], out[f"{key}_max"] = min(got), max(got)
    if pair:
        # Each ABBA round on its own: on/off within a round shares the machine's
        # state, so the median of the rounds' costs is what drift cannot move.
        on, off = rates["on"], rates["off"]
        rounds = [1 - (on[i] + on[i + 1]) / (off[i] + off[i + 1]) for i in range(0, len(on) - 1, 2)]
        # CPU per message is what acks cost the client itself, whatever the
        # sink's speed (the acking sink needs far more CPU than /sink, and on a
        # busy machine it, not the client, may set the pace of the "on" runs).
        con, coff = cpu["on"], cpu["off"]
        cpu_rounds = [
            (con[i] + con[i + 1]) / (coff[i] + coff[i + 1]) - 1 for i in range(0, len(con) - 1, 2)
        ]
        out["cpu_on_us"] = 1e6 * statistics.median(con)
        out["cpu_off_us"] = 1e6 * statistics.median(coff)
        out["cpu_cost"] = cpu_rounds
        print(
            f"  (client CPU per message, on: {', '.join(f'{1e6 * c:.1f}' for c in con)} us;"
            f" off: {', '.join(f'{1e6 * c:.1f}' for c in coff)} us)",
            file=sys.stderr,
        )
        out["paired_cost"] = statistics.median(rounds)
        out["paired_cost_min"] = min(rounds)
        out["paired_cost_max"] = max(rounds)
        print(
            f"  (cost per round: {', '.join(f'{100 * c:.1f}' for c in rounds)} %)", file=sys.stderr
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["sink", "durable"], help="just the sink rows")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sink rows: client on the first CPU, sink on the last (default; --no-pin: "
        "let the OS place them, the sink then competes with the client for a CPU)",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        help="sink rows: Queue(max_size=...) of the clients (default: the option's default)",
    )
    args = parser.parse_args()
    if args.only is not None:
        return sink_rows(
            args.n, args.repeat, pair=args.only == "sink", pin=args.pin, max_size=args.max_size
        )
    on_proc, on_url = serve([])
    off_proc, off_url = serve(["--no-extensions"])
    on: List[float] = []
    off: List[float] = []
    durable: List[float] = []
    try:
        for _ in range(args.repeat):  # ABBA: drift cancels out
            on.append(run(on_url, args.n)["rate"])
            off.append(run(off_url, args.n)["rate"])
            off.append(run(off_url, args.n)["rate"])
            on.append(run(on_url, args.n)["rate"])
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeat):
                path = os.path.join(tmp, f"outbox{i}.sqlite")
                durable.append(run(on_url, args.n, {"path": path})["rate"])
    finally:
        on_proc.terminate()
        off_proc.terminate()
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"send {args.n:,} tether envelopes then close(), bundled server, default options")
    print(f"  extension off (written)      {m_off / 1000:7.1f} k/s")
    print(f"  extension on  (acknowledged) {m_on / 1000:7.1f} k/s")
    print(f"  cost of acks                 {100 * (1 - m_on / m_off):6.1f} %   (target <= 15 %)")
    rate = statistics.median(durable) / 1000
    print(f"  durable outbox (fsync off)   {rate:7.1f} k/s  (target >= 20 k/s)")
    return sink_rows(args.n, args.repeat, pin=args.pin, max_size=args.max_size)


def sink_rows(
    n: int, repeat: int, pair: bool = True, pin: bool = False, max_size: Optional[int] = None
) -> int:
    rates = sink_pair(n, repeat, pair=pair, durable=True, pin=pin, max_size=max_size)
    print(f"send {n:,} tether envelopes, sink_server.py (the server is not the bottleneck):")

    def side(key: str) -> str:
        lo, mid, hi = rates[f"{key}_min"], rates[key], rates[f"{key}_max"]
        return f"{mid / 1000:7.1f} k/s  (min {lo / 1000:.1f}, max {hi / 1000:.1f})"

    where = "pinned: client CPU 0, sink the last CPU" if pin else "not pinned"
    queue = "default" if max_size is None else f"{max_size:,}"
    print(f"({where}; Queue max_size {queue}; {repeat} rounds; spread over all runs of a side)")
    print(f"  websocket-client (no acks)   {side('wsc')}  (the same envelope text)")
    if pair:
        s_off, s_on = rates["off"], rates["on"]
        print(f"  extension off (written)      {side('off')}")
        print(f"  extension on  (acknowledged) {side('on')}")
        ratios = [o / w for o, w in zip(rates["on_runs"], rates["wsc_runs2"])]
        print(
            f"  on / websocket-client        min {min(ratios):.2f}, median "
            f"{statistics.median(ratios):.2f}, max {max(ratios):.2f} (per run, same round)"
        )
        cost = 100 * (1 - s_on / s_off)
        paired = 100 * rates["paired_cost"]
        print(f"  cost of acks, client side    {cost:6.1f} %   (medians of all runs)")
        lo, hi = 100 * rates["paired_cost_min"], 100 * rates["paired_cost_max"]
        print(
            f"  cost of acks, paired rounds  {paired:6.1f} %   (target <= 15 %; "
            f"min {lo:.1f}, max {hi:.1f} over {repeat} ABBA rounds)"
        )
    if pair:
        c = [100 * x for x in rates["cpu_cost"]]
        print(
            f"  client CPU per message       off {rates['cpu_off_us']:.1f} us, on "
            f"{rates['cpu_on_us']:.1f} us: acks cost {statistics.median(c):.1f} % "
            f"(min {min(c):.1f}, max {max(c):.1f}; paired rounds; target <= 15 %)"
        )
    print("durable outbox (fsync off), to /acksink; 'calls': until the send loop returned (every")
    print("message committed to the file), 'acked': until the sink had all and close() returned")
    for key in ("durable_calls", "durable_many_calls"):
        r = rates[f"{key}_vs_wsc"]
        print(
            f"  ({key} / websocket-client: min {min(r):.2f}, median {statistics.median(r):.2f},"
            f" max {max(r):.2f})"
        )
    print(f"  send(), calls                {side('durable_calls')}  target >= 20 k/s")
    print(f"  send(), acked                {side('durable')}")
    print(f"  send_many({BATCH}), calls       {side('durable_many_calls')}  target >= 100 k/s")
    print(f"  send_many({BATCH}), acked       {side('durable_many')}")
    for key, name in (("cpu_durable", "send()"), ("cpu_durable_many", f"send_many({BATCH})")):
        us = sorted(1e6 * c for c in rates[key])
        print(
            f"  {name} calls, CPU per message (this process, all threads): min {us[0]:.2f},"
            f" median {statistics.median(us):.2f}, max {us[-1]:.2f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
