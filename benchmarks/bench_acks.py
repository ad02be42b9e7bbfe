"""What acknowledged delivery costs (issue 11): the same send, extension on and off.

Run from the repository root::

    python benchmarks/bench_acks.py            # 100,000 messages per run
    python benchmarks/bench_acks.py -n 50000 --repeat 5
    python benchmarks/bench_acks.py -n 50000 --repeat 3 --only durable
    python benchmarks/bench_acks.py --only sink --repeat 3 --quads 4 --no-pin  # the OS places them
    python benchmarks/bench_acks.py --only io     # the I/O thread's work per message, sans I/O
    python benchmarks/bench_acks.py --only durable --no-pin --breakdown  # + commit latencies

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
Where the durable rows' time goes (issue 22, session 21), printed under them:
the CPU per message of each thread over the calls (the caller, the I/O thread,
the store's committer; per-thread CPU clocks, ``time.pthread_getcpuclockid``:
free, the rates are measured as before), how often and how long the caller
waited for room in the full queue (the queue's condition is wrapped: only a
wait pays), and with ``--breakdown`` the latency of every commit (p50, p99,
max, mean; two clock reads a message on the caller's thread, so it is off by
default and its rates are not comparable with runs without it).

The sink rows pin this process to the first CPU and the sink to the last (as
``bench_client.py --pin``): on a 2-CPU machine the OS otherwise often runs the
sink on the client's CPU, and the client-side cost then includes the sink's
work. ``--no-pin`` leaves placement to the OS.

How the cost of acks is judged (the method; issue 22 found the noise of a busy
2-CPU machine as large as the cost itself):

* Pairs, never sides: each round runs ``--quads`` ABBA quads (default 3) of the
  on/off pair, alternately on, off, off, on and off, on, on, off, so that
  neither side always runs first or last. A quad's cost is computed from its
  own four runs (sum of "on" over sum of "off"), which share the machine's
  state: its load, where the OS put the sink. Drift between quads moves both
  sides of a quad and cancels; the medians of all "on" and all "off" runs
  (printed too) do not have that protection.
* Two costs per quad: wall clock (rate until ``close()`` returned, the
  user-visible one, which also moves with the sink's speed and placement) and
  the client's CPU per message (``time.process_time()`` of this process, every
  client thread, the sink excluded: what acks cost the client itself).
* The spread is reported, not hidden: min, median and max over all quads, and
  a distribution-free 95 % interval of the median (order statistics; from 6
  quads on, e.g. ``--repeat 2 --quads 3``). Unpinned, use more quads
  (``--no-pin --repeat 3 --quads 4``: 12 quads, about 2 minutes), and the load
  average printed before and after.
* Both sides end at the same point: the sink has every message (``done:``
  from ``/sink`` once it counted every byte, from ``/acksink`` with the last
  ack), then ``close()``. (``run()``'s rows against the bundled server end
  at ``close()``, which with acks waits for them and without does not.)
* ``--only io`` measures the I/O thread's own protocol work per message
  without a socket (:func:`io_breakdown`): deterministic enough to compare two
  trees where the sink rows cannot.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tether_sync import Queue, TetherClient

PAYLOAD = "0123456789abcdef" * 4
#: ABBA quads (on, off, off, on) of the sink pair per round (``--quads``).
QUADS = 3
#: Messages per ``send_many()`` call in the durable ``send_many`` row.
BATCH = 1000
#: ``--breakdown``: the durable rows also time every commit (two clock reads a
#: message on the sender's thread, so off by default).
BREAKDOWN = False
#: The durable rows' CPU per message by thread: names of the client's threads.
THREADS = (("caller", ""), ("I/O", "tether-io"), ("committer", "tether_sync-outbox"))


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


def median_ci(values: List[float], level: float = 0.95) -> Optional[Tuple[float, float]]:
    """A distribution-free confidence interval of the median (order statistics).

    The interval between the j-th smallest and the j-th largest value, with j
    the largest rank such that the chance of fewer than j values below the true
    median (a Binomial(k, 1/2) count) is at most (1 - level) / 2. None with too
    few values for that (fewer than 6 at 95 %).
    """
    k = len(values)
    tail = (1 - level) / 2
    j, below = 0, 0.0
    while True:
        below += math.comb(k, j) / 2**k  # P(count == j)
        if below > tail:
            break
        j += 1
    if j == 0:
        return None
    ordered = sorted(values)
    return ordered[j - 1], ordered[k - j]


def spread(values: List[float]) -> str:
    """min / median / max of ``values`` (fractions) in %, and the median's 95 % interval."""
    pct = [100 * v for v in values]
    text = f"min {min(pct):.1f}, median {statistics.median(pct):.1f}, max {max(pct):.1f}"
    ci = median_ci(pct)
    if ci is not None:
        text += f"; median 95 % interval {ci[0]:.1f} to {ci[1]:.1f}"
    return f"{text}; {len(pct)} quads"


def sink_pair(
    n: int,
    repeat: int,
    pair: bool = True,
    durable: bool = True,
    pin: bool = False,
    max_size: Optional[int] = None,
    quads: int = QUADS,
) -> Dict[str, Any]:
    """Client-side cost: the same default client to /sink (off) and /acksink (on);
    and a durable outbox to /acksink. Medians (k/s) under "off", "on", "durable".

    Each of the ``repeat`` rounds runs websocket-client once, then ``quads``
    ABBA quads of the pair (``pair``), then the durable rows (``durable``).

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
    # The durable runs' calls, per row ("durable", "durable_many"): CPU per message
    # of each thread (seconds), the caller's waits for room in a full queue
    # (count, seconds) and, with --breakdown, every commit's latency (seconds).
    threads: Dict[str, Dict[str, List[float]]] = {"durable": {}, "durable_many": {}}
    waits: Dict[str, List[Tuple[int, float]]] = {"durable": [], "durable_many": []}
    commits: Dict[str, List[float]] = {"durable": [], "durable_many": []}

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
        row = "durable_many" if batch else "durable"
        if outbox:
            clocks = _thread_clocks()
            wait = _count_room_waits(client)
            if BREAKDOWN:
                _time_commits(client, commits[row])
            t_cpu = {name: _cpu(clock) for name, clock in clocks.items()}
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
            cpu[row].append((c_calls - c0) / count)
            for name, clock in clocks.items():
                used = (_cpu(clock) - t_cpu[name]) / count
                threads[row].setdefault(name, []).append(used)
            waits[row].append((wait[0], wait[1]))
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
    wsc_of: Dict[str, List[float]] = {"on": [], "off": []}  # each run's round's wsc rate
    try:
        for _ in range(repeat):
            rates["wsc"].append(wsc())
            for q in range(quads if pair else 0):
                # One ABBA quad: on, off, off, on; every other quad off, on, on, off,
                # so that neither side always runs first or last in a quad.
                for side in (
                    ("on", "off", "off", "on") if q % 2 == 0 else ("off", "on", "on", "off")
                ):
                    path = f"acksink?n={n}" if side == "on" else f"sink?bytes={n * frame}"
                    rates[side].append(one(path, n)[0])
                    wsc_of[side].append(rates["wsc"][-1])
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
    out["wsc_runs2"] = wsc_of["on"]  # the wsc rate of each "on" run's round
    out["cpu_durable"] = cpu["durable"]
    out["cpu_durable_many"] = cpu["durable_many"]
    for row in ("durable", "durable_many"):
        out[f"threads_{row}"] = threads[row]
        out[f"waits_{row}"] = waits[row]
        out[f"commits_{row}"] = commits[row]
    for key in ("durable_calls", "durable_many_calls"):
        if rates[key]:
            out[f"{key}_vs_wsc"] = [d / w for d, w in zip(rates[key], rates["wsc"])]
    for key, got in rates.items():
        if got:
            out[f"{key}_min"], out[f"{key}_max"] = min(got), max(got)
    if pair:
        # Each ABBA quad on its own: on and off within a quad share the machine's
        # state (its load, the sink's placement), so the median of the quads'
        # costs is what drift between quads cannot move.
        on, off = rates["on"], rates["off"]
        quad_costs = [
            1 - (on[i] + on[i + 1]) / (off[i] + off[i + 1]) for i in range(0, len(on) - 1, 2)
        ]
        # CPU per message is what acks cost the client itself, whatever the
        # sink's speed (the acking sink needs far more CPU than /sink, and on a
        # busy machine it, not the client, may set the pace of the "on" runs).
        con, coff = cpu["on"], cpu["off"]
        cpu_quads = [
            (con[i] + con[i + 1]) / (coff[i] + coff[i + 1]) - 1 for i in range(0, len(con) - 1, 2)
        ]
        out["cpu_on_us"] = 1e6 * statistics.median(con)
        out["cpu_off_us"] = 1e6 * statistics.median(coff)
        out["cpu_cost"] = cpu_quads
        print(
            f"  (client CPU per message, on: {', '.join(f'{1e6 * c:.1f}' for c in con)} us;"
            f" off: {', '.join(f'{1e6 * c:.1f}' for c in coff)} us)",
            file=sys.stderr,
        )
        out["paired_cost"] = quad_costs
        print(
            f"  (wall-clock cost per quad: {', '.join(f'{100 * c:.1f}' for c in quad_costs)} %;"
            f" CPU cost per quad: {', '.join(f'{100 * c:.1f}' for c in cpu_quads)} %)",
            file=sys.stderr,
        )
    return out


# ---------------------------------------------------------------- the I/O thread's share

#: Stages of :func:`io_breakdown`, in the order the I/O thread runs them.
STAGES = ("take", "frame", "written", "acks in", "resolve")


def io_breakdown(
    batch: int = 512, reps: int = 200, ack_every: int = 64
) -> Dict[str, Dict[str, float]]:
    """What the I/O thread's protocol work costs per message, acks on and off (sans I/O).

    The I/O thread's steps for one batch of ``batch`` tether envelopes, run on
    this thread with the library's own objects and no socket, so nothing but
    this process's CPU moves the figures: ``take`` (from the
    :class:`~tether_sync.engine.outbox.Outbox`), ``frame`` (``Session.send`` and
    ``chunks_to_send``: seq numbers and framing), ``written`` (``Session.sent``
    for every byte), ``acks in`` (``receive_data`` of one cumulative
    ``tether:ack`` per ``ack_every`` messages, all in one read; acks on only) and
    ``resolve`` (the session's events through :class:`~tether_sync.engine.
    session_events.Handoff`: Deliveries resolved, counters, room released).
    Each stage is timed on its own. The two sides take turns batch by batch
    (off then on, then on then off), so a busy spell of the machine falls on
    both; the figure is each stage's minimum over the ``reps`` batches of a
    side (the least disturbed one: load only adds time), in microseconds per
    message. The Deliveries are made (as ``send()`` makes them, on the
    caller's side) and queued outside the timed steps.
    """
    from tether_sync.delivery import Delivery
    from tether_sync.engine.outbox import Outbox
    from tether_sync.engine.session_events import Handoff
    from tether_sync.protocol import envelope, frames
    from tether_sync.protocol.events import Acked, Written
    from tether_sync.protocol.reliability import FEATURES, Continuity
    from tether_sync.protocol.session import Session, SessionConfig
    from tether_sync.stats import Counters

    def server_text(payload: bytes) -> bytes:
        return bytes((0x81, len(payload))) + payload  # < 126 bytes, unmasked

    def size(d: Delivery) -> int:
        return len(d._data)

    def one_side(acked: bool) -> Callable[[int], List[float]]:
        """A session open with acks (or without) and a function that runs one batch."""
        cfg = SessionConfig(heartbeat=None, extensions=FEATURES if acked else ())
        session = Session(cfg, Continuity("bench-session"), 0.0)
        session.start(0.0)
        if acked:
            hello_ok = b'{"type":"tether:hello-ok","session":"bench-session","features":'
            session.receive_data(server_text(hello_ok + b'["ack","resume"],"acked":0}'), 0.0)
        session.events()
        assert session.is_open and (session.features != ()) == acked
        outbox: Outbox[Delivery] = Outbox(batch, "block")
        outbox.set_open(True)
        handoff = Handoff(Counters(), outbox, lambda event: None, lambda name: False)
        table: Dict[type, Callable[[Any], None]] = {Written: handoff.written, Acked: handoff.acked}

        def run_batch(rep: int) -> List[float]:
            for i in range(batch):
                msg_id = f"{rep:08d}-0000-4000-8000-{i:012d}"
                text = envelope.encode_data("bench", PAYLOAD, msg_id).encode()
                outbox.put(Delivery(None, "bench", PAYLOAD, frames.OP_TEXT, text))
            t0 = time.perf_counter()
            items = outbox.take(batch, 1 << 30, size)
            t1 = time.perf_counter()
            session.send(items)
            chunks = session.chunks_to_send(64, 1 << 20)
            t2 = time.perf_counter()
            session.sent(sum(len(c) for c in chunks))
            t3 = time.perf_counter()
            acks_in = 0.0
            if acked:
                seqs = [d._seq for d in items[ack_every - 1 :: ack_every]]
                if seqs[-1] != items[-1]._seq:
                    seqs.append(items[-1]._seq)
                read = b"".join(server_text(b'{"type":"tether:ack","seq":%d}' % n) for n in seqs)
                t = time.perf_counter()
                session.receive_data(read, 0.0)
                acks_in = time.perf_counter() - t
            t4 = time.perf_counter()
            for event in session.events():
                table[type(event)](event)
            t5 = time.perf_counter()
            if not all(d.done() for d in items):
                raise RuntimeError("a message was not resolved")
            return [t1 - t0, t2 - t1, t3 - t2, acks_in, t5 - t4]

        return run_batch

    runs = {"off": one_side(False), "on": one_side(True)}
    best = {side: [float("inf")] * len(STAGES) for side in runs}
    for rep in range(reps):
        for side in ("off", "on") if rep % 2 == 0 else ("on", "off"):
            best[side] = [min(b, t) for b, t in zip(best[side], runs[side](rep))]
    return {
        side: {stage: 1e6 * took / batch for stage, took in zip(STAGES, times)}
        for side, times in best.items()
    }


def io_rows(batch: int, reps: int) -> int:
    res = io_breakdown(batch, reps)
    print(f"the I/O thread's protocol work per message (sans I/O, batches of {batch},")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"min over {reps} batches, us per message; load {load})")
    print(f"  {'stage':<10} {'off':>7} {'on':>7} {'on - off':>9}")
    for stage in (*STAGES, "total"):
        if stage == "total":
            off, on = sum(res["off"].values()), sum(res["on"].values())
        else:
            off, on = res["off"][stage], res["on"][stage]
        print(f"  {stage:<10} {off:7.3f} {on:7.3f} {on - off:+9.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        choices=["sink", "durable", "io"],
        help="sink: just the sink rows; durable: just the durable rows; io: the I/O "
        "thread's per-message protocol work, sans I/O, acks on and off",
    )
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
    parser.add_argument(
        "--quads",
        type=int,
        default=QUADS,
        help=f"sink rows: ABBA quads of the on/off pair per round (default {QUADS})",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="durable rows: also time every commit (p50/p99/max; costs the sender two "
        "clock reads a message)",
    )
    args = parser.parse_args()
    global BREAKDOWN
    BREAKDOWN = args.breakdown
    if args.only == "io":
        return io_rows(512, 200)
    if args.only is not None:
        pair = args.only == "sink"
        return sink_rows(args.n, args.repeat, pair, args.pin, args.max_size, args.quads)
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
    return sink_rows(args.n, args.repeat, True, args.pin, args.max_size, args.quads)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def sink_rows(
    n: int,
    repeat: int,
    pair: bool = True,
    pin: bool = False,
    max_size: Optional[int] = None,
    quads: int = QUADS,
) -> int:
    load = _load()
    rates = sink_pair(n, repeat, pair, True, pin, max_size, quads)
    print(f"send {n:,} tether envelopes, sink_server.py (the server is not the bottleneck):")
    print(f"(load average {load} before, {_load()} after)")

    def side(key: str) -> str:
        lo, mid, hi = rates[f"{key}_min"], rates[key], rates[f"{key}_max"]
        return f"{mid / 1000:7.1f} k/s  (min {lo / 1000:.1f}, max {hi / 1000:.1f})"

    where = "pinned: client CPU 0, sink the last CPU" if pin else "not pinned"
    queue = "default" if max_size is None else f"{max_size:,}"
    quad_text = f", {quads} ABBA quads each" if pair else ""
    print(f"({where}; Queue max_size {queue}; {repeat} rounds{quad_text}; k/s: over all runs)")
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
        print(f"  cost of acks, client side    {cost:6.1f} %   (medians of all runs)")
        print(f"  cost of acks, wall clock     {spread(rates['paired_cost'])}  (target <= 15 %)")
        print(
            f"  client CPU per message       off {rates['cpu_off_us']:.2f} us, on "
            f"{rates['cpu_on_us']:.2f} us (medians of all runs)"
        )
        print(f"  cost of acks, client CPU     {spread(rates['cpu_cost'])}  (target <= 15 %)")
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
    for row, name in (("durable", "send()"), ("durable_many", f"send_many({BATCH})")):
        _durable_breakdown(name, rates[f"threads_{row}"], rates[f"waits_{row}"])
        if rates[f"commits_{row}"]:
            lat = sorted(rates[f"commits_{row}"])
            # Every transaction: the appends' and those carrying only discards.
            print(
                f"  {name} commit latency ({len(lat):,} transactions): p50"
                f" {1e6 * lat[len(lat) // 2]:.1f}, p99 {1e6 * lat[int(len(lat) * 0.99)]:.1f},"
                f" max {1e6 * lat[-1]:.1f} us; mean {1e6 * statistics.fmean(lat):.1f} us"
            )
    return 0


def _thread_clocks() -> Dict[str, int]:
    """CPU-time clocks of the caller and the client's threads (see :data:`THREADS`).

    Empty where the platform has no per-thread clock (``time.pthread_getcpuclockid``).
    """
    import threading

    if not hasattr(time, "pthread_getcpuclockid"):
        return {}
    clocks: Dict[str, int] = {}
    for t in threading.enumerate():
        for name, prefix in THREADS:
            if t.name.startswith(prefix) if prefix else t is threading.current_thread():
                assert t.ident is not None
                clocks[name] = time.pthread_getcpuclockid(t.ident)
    return clocks


def _cpu(clock: int) -> float:
    return time.clock_gettime(clock)


def _count_room_waits(client: TetherClient) -> List[float]:
    """Count the caller's waits for room in the full queue: ``[count, seconds]``.

    Wraps the queue's condition (the durable rows only; a private attribute):
    only a sender that waits pays for it.
    """
    room = client._loop.outbox._room
    wait = room.wait
    got = [0, 0.0]

    def timed(timeout: Optional[float] = None) -> bool:
        t = time.perf_counter()
        try:
            return wait(timeout)
        finally:
            got[0] += 1
            got[1] += time.perf_counter() - t

    room.wait = timed  # type: ignore[method-assign]
    return got


def _time_commits(client: TetherClient, into: List[float]) -> None:
    """``--breakdown``: record the latency of every commit of the client's store.

    A lone ``send()`` commits by the store's INSERT (``_insert``), a batch by
    ``_write`` (private attributes; two clock reads per commit).
    """
    store = client._store
    assert store is not None
    for attr in ("_insert", "_write"):
        inner = getattr(store, attr)

        def timed(*args: Any, _inner: Callable[..., Any] = inner) -> Any:
            t = time.perf_counter()
            try:
                return _inner(*args)
            finally:
                into.append(time.perf_counter() - t)

        setattr(store, attr, timed)


def _durable_breakdown(
    name: str, threads: Dict[str, List[float]], waits: List[Tuple[int, float]]
) -> None:
    """Print a durable row's CPU per message by thread and its caller's waits for room."""
    parts = []
    for thread, _ in THREADS:
        got = sorted(1e6 * c for c in threads.get(thread, []))
        if got:
            parts.append(f"{thread} {statistics.median(got):.2f} ({got[0]:.2f}-{got[-1]:.2f})")
    if parts:
        print(
            f"  {name} calls, CPU per message by thread, median (min-max) us: " + ", ".join(parts)
        )
    if waits:
        print(
            f"  {name} calls, caller waited for room in the full queue: "
            + ", ".join(f"{n:,} times {1e3 * t:.0f} ms" for n, t in waits)
            + " (per run)"
        )


if __name__ == "__main__":
    sys.exit(main())
