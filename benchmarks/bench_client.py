"""Benchmark TetherClient against websocket-client and the websockets sync client.

Run from the repository root::

    python benchmarks/bench_client.py            # full run, about a minute
    python benchmarks/bench_client.py --quick    # small N, a smoke test (< 20 s)
    python benchmarks/bench_client.py --json results.json
    python benchmarks/bench_client.py --profile  # plus cProfile of TetherClient's paths
    python benchmarks/bench_client.py --pin      # client and server on separate CPUs

One run compares, against ``sink_server.py`` (a separate process, so the server
is not the bottleneck), on 127.0.0.1:

* sending 64-byte text messages: time from the first ``send()`` until the server
  has received every byte (it answers ``done:<bytes>`` then), so data queued but
  not yet written does not count as sent;
* receiving a stream of 64-byte text messages the server blasts;
* sequential echo round trips (p50, p99);
* memory per queued 64-byte message (tracemalloc, client not connected);
* TetherClient's send throughput with backpressure on (default high_water_mark)
  vs effectively off (high_water_mark=2**62).

Every measurement runs ``--repeat`` times (3); the table shows the median and
the ratio tether_sync / websocket-client. Targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import logging
import os
import platform
import pstats
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websocket
import websockets
from websockets.sync.client import connect as websockets_connect

import tether_sync
from tether_sync import TetherClient
from tether_sync.protocol import envelope

HERE = Path(__file__).resolve().parent
PAYLOAD = "0123456789abcdef" * 4  # 64 bytes of ASCII text
WAIT = 60.0  # seconds any single wait may take (bounds every blocking call)
HOST = "127.0.0.1"

Result = Dict[str, float]


# --------------------------------------------------------------------------- server


class SinkServer:
    """``sink_server.py`` in its own process; ends with us (its stdin is our pipe)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "sink_server.py"), "--host", HOST, "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10.0)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"sink_server did not start (got {line!r})")
        self.base = f"ws://{HOST}:{int(line.split()[1])}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def masked_frame_len(payload_len: int) -> int:
    """Bytes of one masked client frame carrying ``payload_len`` bytes."""
    if payload_len < 126:
        extra = 0
    elif payload_len < 65536:
        extra = 2
    else:
        extra = 8
    return 2 + extra + 4 + payload_len


def tether_frame_len(payload: str, channel: str = "default") -> int:
    """Frame size of one protocol-tether data message, from a real (unsent) one.

    The probe's send() starts its connection (to a closed port, without
    reconnecting): now and then the refusal closes the client before the
    message is queued (ClientClosed, about one call in 40), so it tries again.
    """
    for attempt in range(10):
        probe = TetherClient(f"ws://{HOST}:9/", protocol="tether", heartbeat=False, reconnect=False)
        try:
            msg_id = probe.send(payload, channel=channel).id
            break
        except tether_sync.ClientClosed:
            if attempt == 9:
                raise
        finally:
            probe.close(timeout=0.5)
    return masked_frame_len(len(envelope.encode_data(channel, payload, msg_id).encode()))


def _check_done(text: Any, expected: int) -> None:
    if text != f"done:{expected}":
        raise RuntimeError(f"sink answered {text!r}, expected 'done:{expected}'")


def _tether(url: str, protocol: str = "raw", **options: Any) -> TetherClient:
    # No heartbeat (no extra frames); no reconnection, so a failure is loud.
    return TetherClient(url, protocol=protocol, heartbeat=False, reconnect=False, **options)


# --------------------------------------------------------------------------- send


def send_websocket_client(base: str, n: int) -> Result:
    expected = n * masked_frame_len(len(PAYLOAD))
    ws = websocket.create_connection(f"{base}/sink?bytes={expected}", timeout=WAIT)
    try:
        send = ws.send
        t0 = time.perf_counter()
        for _ in range(n):
            send(PAYLOAD)
        t1 = time.perf_counter()
        _check_done(ws.recv(), expected)
        t2 = time.perf_counter()
    finally:
        ws.close()
    return {"rate": n / (t2 - t0), "call_rate": n / (t1 - t0)}


def send_websockets(base: str, n: int) -> Result:
    expected = n * masked_frame_len(len(PAYLOAD))
    with websockets_connect(
        f"{base}/sink?bytes={expected}", compression=None, open_timeout=WAIT
    ) as ws:
        send = ws.send
        t0 = time.perf_counter()
        for _ in range(n):
            send(PAYLOAD)
        t1 = time.perf_counter()
        _check_done(ws.recv(timeout=WAIT), expected)
        t2 = time.perf_counter()
    return {"rate": n / (t2 - t0), "call_rate": n / (t1 - t0)}


def send_tether(
    base: str,
    n: int,
    protocol: str = "raw",
    high_water_mark: Optional[int] = None,
    frame_len: Optional[int] = None,
) -> Result:
    """``client.send()`` n times, then wait for the sink's ``done`` (all bytes arrived)."""
    if frame_len is None:
        frame_len = masked_frame_len(len(PAYLOAD))
    expected = n * frame_len
    backpressure = {} if high_water_mark is None else {"high_water_mark": high_water_mark}
    client = _tether(
        f"{base}/sink?bytes={expected}",
        protocol,
        queue={"max_size": n + 10, "overflow": "reject"},
        backpressure=backpressure,
    )
    done: List[Any] = []
    got = threading.Event()
    pauses = [0]

    def on_backpressure(event: Any) -> None:
        if event.direction == "outbound":
            pauses[0] += 1

    client.on("backpressure", on_backpressure)  # costs nothing until it fires
    if protocol == "raw":
        sub = client.subscribe("default")  # raw: no frame on the wire
    else:
        # The sink's "done:N" is not JSON: it arrives as a `message` event.
        def on_message(event: Any) -> None:
            done.append(event.payload)
            got.set()

        client.on("message", on_message)
    try:
        client.connect(wait=True, timeout=10)
        send = client.send
        t0 = time.perf_counter()
        for _ in range(n):
            send(PAYLOAD)
        t1 = time.perf_counter()
        if protocol == "raw":
            answer = sub.get(timeout=WAIT)
        else:
            if not got.wait(WAIT):
                raise TimeoutError("no done from the sink")
            answer = done[0]
        t2 = time.perf_counter()
        _check_done(answer, expected)
    finally:
        client.close(timeout=5)
    return {"rate": n / (t2 - t0), "call_rate": n / (t1 - t0), "pauses": pauses[0]}


BIG_SIZES = (64 * 1024, 1024 * 1024)  # payload sizes of the big-message send rows


def big_count(size: int, total: int) -> int:
    """Messages of ``size`` bytes per big-message send run: ``total`` bytes, at least 20."""
    return max(20, total // size)


#: The orders the big-message rows run their three clients in, by repetition
#: (``--big-order rotate``): each client goes first, second and third once in
#: three repetitions. ``--big-order fixed`` keeps the first one for every
#: repetition (the method before session 21).
BIG_ORDERS = ("cwt", "wtc", "tcw")  # c: websocket-client, w: websockets, t: tether_sync
BIG_CLIENTS = {"c": "wsc", "w": "websockets", "t": "tether"}


def big_order(rep: int, rotate: bool) -> str:
    """The order of the big rows' clients in repetition ``rep`` (0-based); see BIG_ORDERS."""
    return BIG_ORDERS[rep % len(BIG_ORDERS)] if rotate else BIG_ORDERS[0]


def _minor_faults() -> int:
    """This process's minor page faults so far (first touches of fresh memory)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rate_and_cpu(n: int, size: int, t0: float, c0: float) -> Tuple[float, float]:
    """MB/s of payload since ``t0``, and this process's CPU time per message since ``c0`` (us)."""
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n * size / wall / 1e6, cpu / n * 1e6


def send_big_all(
    base: str, size: int, n: int, hwms: Tuple[int, ...] = (), order: str = BIG_ORDERS[0]
) -> Result:
    """Send ``n`` binary messages of ``size`` bytes with each client, until the sink has them.

    The three clients run one after the other within one repetition, so the
    ratios are taken within a repetition (paired), in ``order`` (see
    :data:`BIG_ORDERS`; ``order`` is recorded as ``first``: the index in
    "cwt" of the client that ran first). The order matters for websockets: its
    ``send()`` allocates two fresh 1 MiB buffers per message, and whether
    glibc serves them from the heap or maps (and faults in) new pages depends
    on what earlier runs in the process freed (websocket-client's 1 MiB run
    raises glibc's mmap threshold); ``faults.<client>`` records each client's
    minor page faults per message, and ``cpu.<client>`` this process's CPU
    time per message (us, all its threads: the sender's, and tether_sync's I/O
    thread; not the server's), which other processes' load moves far less
    than the rates. Each is told to send a ``bytes`` payload
    (a binary frame): what is timed is framing, masking and writing, not
    UTF-8 encoding. Rates are in MB/s of payload. ``hwms``: extra TetherClient
    runs with these ``high_water_mark`` values (keys ``hwm=<v>``), the
    default run and these alternating in ABBA order within the repetition.
    """
    payload = os.urandom(size)
    expected = n * masked_frame_len(size)
    out: Result = {"first": float("cwt".index(order[0]))}

    def wsc_run() -> Tuple[float, float]:
        ws = websocket.create_connection(f"{base}/bigsink?bytes={expected}", timeout=WAIT)
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                ws.send_binary(payload)
            _check_done(ws.recv(), expected)
            return _rate_and_cpu(n, size, t0, c0)
        finally:
            ws.close()

    def websockets_run() -> Tuple[float, float]:
        with websockets_connect(
            f"{base}/bigsink?bytes={expected}", compression=None, open_timeout=WAIT, max_size=None
        ) as wss:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                wss.send(payload)
            _check_done(wss.recv(timeout=WAIT), expected)
            return _rate_and_cpu(n, size, t0, c0)

    def tether_run(**options: Any) -> Tuple[float, float]:
        client = _tether(
            f"{base}/bigsink?bytes={expected}",
            queue={"max_size": n + 10, "overflow": "reject"},
            max_message_size=max(size, 16 * 2**20),
            **options,
        )
        try:
            sub = client.subscribe("default")
            client.connect(wait=True, timeout=10)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                client.send(payload)
            _check_done(sub.get(timeout=WAIT), expected)
            return _rate_and_cpu(n, size, t0, c0)
        finally:
            client.close(timeout=5)

    def tether_all() -> None:
        if not hwms:
            out["tether"], out["cpu.tether"] = tether_run()
            return
        # ABBA: default, each hwm, each hwm again (reversed), default again.
        rates: Dict[str, List[float]] = {}
        cpus: List[float] = []
        runs: List[Optional[int]] = [None, *hwms, *reversed(hwms), None]
        for hwm in runs:
            key = "tether" if hwm is None else f"hwm={hwm}"
            opts = {} if hwm is None else {"backpressure": {"high_water_mark": hwm}}
            rate, cpu = tether_run(**opts)
            rates.setdefault(key, []).append(rate)
            if hwm is None:
                cpus.append(cpu)
        for key, got in rates.items():
            out[key] = statistics.mean(got)
        out["cpu.tether"] = statistics.mean(cpus)

    def wsc_all() -> None:
        out["wsc"], out["cpu.wsc"] = wsc_run()

    def websockets_all() -> None:
        out["websockets"], out["cpu.websockets"] = websockets_run()

    runners = {"c": wsc_all, "w": websockets_all, "t": tether_all}
    for who in order:
        faults = _minor_faults()
        runners[who]()
        runs_of_it = 1 if who != "t" or not hwms else 2 * len(hwms) + 2
        out[f"faults.{BIG_CLIENTS[who]}"] = (_minor_faults() - faults) / (n * runs_of_it)
    return out


def send_backpressure_pair(base: str, n: int) -> Result:
    """TetherClient send throughput, default high_water_mark vs 2**62 (off).

    Four runs in ABBA order (on, off, off, on), so drift within the repetition
    cancels out. The table's ratio is the median over all repetitions of the
    pair ratios on1/off1 and on2/off2.
    """
    on1 = send_tether(base, n)
    off1 = send_tether(base, n, high_water_mark=2**62)
    off2 = send_tether(base, n, high_water_mark=2**62)
    on2 = send_tether(base, n)
    return {
        "on1": on1["rate"],
        "off1": off1["rate"],
        "off2": off2["rate"],
        "on2": on2["rate"],
        "on": (on1["rate"] + on2["rate"]) / 2,
        "off": (off1["rate"] + off2["rate"]) / 2,
        "pauses_on": on1["pauses"] + on2["pauses"],
    }


# --------------------------------------------------------------------------- receive


def recv_websocket_client(base: str, n: int, skip_utf8: bool = False) -> Result:
    ws = websocket.create_connection(
        f"{base}/blast?n={n}&size={len(PAYLOAD)}", timeout=WAIT, skip_utf8_validation=skip_utf8
    )
    try:
        recv = ws.recv
        t0 = time.perf_counter()
        ws.send("go")
        for _ in range(n):
            last = recv()
        t1 = time.perf_counter()
    finally:
        ws.close()
    assert last == PAYLOAD, last
    return {"rate": n / (t1 - t0)}


def recv_websockets(base: str, n: int) -> Result:
    with websockets_connect(
        f"{base}/blast?n={n}&size={len(PAYLOAD)}", compression=None, open_timeout=WAIT
    ) as ws:
        recv = ws.recv
        t0 = time.perf_counter()
        ws.send("go")
        for _ in range(n):
            last = recv(timeout=WAIT)
        t1 = time.perf_counter()
    assert last == PAYLOAD, last
    return {"rate": n / (t1 - t0)}


def recv_tether(base: str, n: int, mode: str = "buffer") -> Result:
    """Receive n messages: ``buffer`` (sub.get, buffer > n), ``block`` (sub.get,
    inbound_overflow=block with the default buffer size) or ``callback``."""
    if mode == "block":
        backpressure: Dict[str, Any] = {"inbound_overflow": "block"}
    else:
        backpressure = {"inbound_buffer_size": n + 10}
    client = _tether(f"{base}/blast?n={n}&size={len(PAYLOAD)}", backpressure=backpressure)
    finished = threading.Event()
    count = [0]
    last: Any = None
    try:
        if mode == "callback":

            def on_payload(payload: Any) -> None:
                count[0] += 1
                if count[0] == n:
                    finished.set()

            client.subscribe("default", on_payload)
        else:
            sub = client.subscribe("default")
        client.connect(wait=True, timeout=10)
        t0 = time.perf_counter()
        client.send("go")
        if mode == "callback":
            if not finished.wait(WAIT):
                raise TimeoutError(f"callback saw {count[0]} of {n} messages")
            last = PAYLOAD
        else:
            get = sub.get
            for _ in range(n):
                last = get(timeout=WAIT)
        t1 = time.perf_counter()
        dropped = client.stats().dropped_inbound
    finally:
        client.close(timeout=5)
    if dropped:
        raise RuntimeError(f"{dropped} inbound messages dropped")
    assert last == PAYLOAD, last
    return {"rate": n / (t1 - t0)}


# --------------------------------------------------------------------------- RTT


def _percentiles(samples_ns: List[int]) -> Result:
    q = statistics.quantiles(samples_ns, n=100)
    return {"p50": statistics.median(samples_ns) / 1000, "p99": q[98] / 1000}


def rtt_all(base: str, n: int, warmup: int = 200) -> Result:
    """Sequential echo round trips, interleaved across the clients.

    All four connections are open at once and each iteration does one round trip
    on each, in a rotating order, so that drift in machine load (other processes,
    CPU frequency) hits every client alike rather than whichever ran last.
    """
    wsc = websocket.create_connection(f"{base}/echo", timeout=WAIT)
    stack = contextlib.ExitStack()
    wss = stack.enter_context(
        websockets_connect(f"{base}/echo", compression=None, open_timeout=WAIT)
    )
    raw = _tether(f"{base}/echo")
    env = _tether(f"{base}/echo", "tether")
    try:
        raw_sub = raw.subscribe("default")
        env_sub = env.subscribe("bench")  # the echoed subscribe envelope is ignored
        raw.connect(wait=True, timeout=10)
        env.connect(wait=True, timeout=10)

        def wsc_rt() -> Any:
            wsc.send(PAYLOAD)
            return wsc.recv()

        def wss_rt() -> Any:
            wss.send(PAYLOAD)
            return wss.recv(timeout=WAIT)

        def raw_rt() -> Any:
            raw.send(PAYLOAD)
            return raw_sub.get(timeout=WAIT)

        def env_rt() -> Any:
            env.send(PAYLOAD, "bench")
            return env_sub.get(timeout=WAIT)

        clients: List[Tuple[str, Callable[[], Any]]] = [
            ("wsc", wsc_rt),
            ("websockets", wss_rt),
            ("tether", raw_rt),
            ("tether_protocol", env_rt),
        ]
        samples: Dict[str, List[int]] = {name: [] for name, _ in clients}
        clock = time.perf_counter_ns
        k = len(clients)
        for i in range(warmup + n):
            order = clients[i % k :] + clients[: i % k]
            for name, fn in order:
                t0 = clock()
                echo = fn()
                t1 = clock()
                if echo != PAYLOAD:
                    raise RuntimeError(f"{name}: bad echo {echo!r}")
                if i >= warmup:
                    samples[name].append(t1 - t0)
    finally:
        wsc.close()
        stack.close()
        raw.close(timeout=5)
        env.close(timeout=5)
    out: Result = {}
    for name, values in samples.items():
        for key, value in _percentiles(values).items():
            out[f"{name}.{key}"] = value
    return out


def rtt_tether(base: str, n: int, warmup: int = 200) -> Result:
    """Sequential round trips on one raw TetherClient alone (used by --profile)."""
    client = _tether(f"{base}/echo")
    samples: List[int] = []
    try:
        sub = client.subscribe("default")
        client.connect(wait=True, timeout=10)
        send, get, clock = client.send, sub.get, time.perf_counter_ns
        for i in range(warmup + n):
            t0 = clock()
            send(PAYLOAD)
            echo = get(timeout=WAIT)
            t1 = clock()
            if i >= warmup:
                samples.append(t1 - t0)
    finally:
        client.close(timeout=5)
    assert echo == PAYLOAD, echo
    return _percentiles(samples)


# --------------------------------------------------------------------------- memory


def _closed_port() -> int:
    s = socket.socket()
    s.bind((HOST, 0))
    port: int = s.getsockname()[1]
    s.close()  # nothing listens there now: every connection attempt is refused
    return port


def memory_tether(n: int, protocol: str = "raw") -> Result:
    """tracemalloc bytes per message queued while the server is not listening.

    The caller's payload strings are made before tracing starts: what is counted
    is what the client allocates per message (its Delivery, id, encoded bytes,
    queue slot), not the payload the application already holds.
    """
    payloads = [f"{i:016d}" + PAYLOAD[16:] for i in range(n)]
    # Reconnection on (the first attempt is refused), with a long backoff: the
    # client sits in "reconnecting" with everything queued.
    client = TetherClient(
        f"ws://{HOST}:{_closed_port()}/",
        protocol=protocol,
        heartbeat=False,
        reconnect={"base_delay": 10.0, "max_delay": 10.0},
        queue={"max_size": max(200_000, n + 10), "overflow": "reject"},
    )
    try:
        client.connect()
        deadline = time.monotonic() + 5
        while client.state.value != "reconnecting" and time.monotonic() < deadline:
            time.sleep(0.005)
        state = client.state.value
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            send = client.send
            for p in payloads:
                send(p)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        depth = client.queue_depth
    finally:
        client.close(timeout=0.2)  # fails the queued messages: expected here
    if depth != n:
        raise RuntimeError(f"queue depth {depth}, expected {n} (state {state})")
    return {"bytes_per_msg": (after - before) / n}


# --------------------------------------------------------------------------- running


def median_of(samples: List[Result], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def run_all(base: str, args: argparse.Namespace, log: Callable[[str], None]) -> Dict[str, Any]:
    n_send, n_recv, n_rtt, n_mem = args.n_send, args.n_recv, args.n_rtt, args.n_mem
    tether_len = tether_frame_len(PAYLOAD)
    current = {"rep": 0}  # the repetition running (the big rows' client order)
    cases: List[Tuple[str, Callable[[], Result]]] = [
        ("send.wsc", lambda: send_websocket_client(base, n_send)),
        ("send.websockets", lambda: send_websockets(base, n_send)),
        ("send.tether", lambda: send_tether(base, n_send)),
        (
            "send.tether_protocol",
            lambda: send_tether(base, n_send, protocol="tether", frame_len=tether_len),
        ),
        ("recv.wsc", lambda: recv_websocket_client(base, n_recv)),
        ("recv.wsc_skip_utf8", lambda: recv_websocket_client(base, n_recv, skip_utf8=True)),
        ("recv.websockets", lambda: recv_websockets(base, n_recv)),
        ("recv.tether", lambda: recv_tether(base, n_recv, "buffer")),
        ("recv.tether_block", lambda: recv_tether(base, n_recv, "block")),
        ("recv.tether_callback", lambda: recv_tether(base, n_recv, "callback")),
        ("rtt", lambda: rtt_all(base, n_rtt)),
        *[
            (
                f"big.{size // 1024}k",
                lambda size=size: send_big_all(
                    base,
                    size,
                    big_count(size, args.big_bytes),
                    args.big_hwm,
                    big_order(current["rep"], args.big_order == "rotate"),
                ),
            )
            for size in BIG_SIZES
        ],
        ("bp", lambda: send_backpressure_pair(base, n_send)),
        ("mem.tether", lambda: memory_tether(n_mem)),
        ("mem.tether_protocol", lambda: memory_tether(n_mem, protocol="tether")),
    ]
    only = set(args.only.split(",")) if args.only else None
    samples: Dict[str, List[Result]] = {}
    for rep in range(args.repeat):
        current["rep"] = rep
        for name, fn in cases:
            if only and not any(name.startswith(o) for o in only):
                continue
            gc.collect()
            t = time.perf_counter()
            result = fn()
            samples.setdefault(name, []).append(result)
            shown = ", ".join(f"{k}={v:,.1f}" for k, v in result.items())
            log(f"[{rep + 1}/{args.repeat}] {name:<22} {shown}  ({time.perf_counter() - t:.2f}s)")
    return {"samples": samples, "tether_frame_len": tether_len}


def _rate(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:,.1f}k/s"


def build_rows(samples: Dict[str, List[Result]]) -> List[Dict[str, Any]]:
    def med(name: str, key: str) -> Optional[float]:
        return median_of(samples[name], key) if name in samples else None

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    rows: List[Dict[str, Any]] = []

    def row(
        metric: str,
        unit: str,
        tether: Optional[float],
        wsc: Optional[float],
        wss: Optional[float],
        target: str = "-",
        met: Optional[bool] = None,
        fmt: Callable[[Optional[float]], str] = _rate,
        r: Optional[float] = None,
    ) -> None:
        if tether is None and wsc is None and wss is None:
            return
        rows.append(
            {
                "metric": metric,
                "unit": unit,
                "tether_sync": tether,
                "websocket_client": wsc,
                "websockets": wss,
                "ratio": r if r is not None else ratio(tether, wsc),
                "target": target,
                "met": met,
                "_fmt": fmt,
            }
        )

    wsc_send = med("send.wsc", "rate")
    t_send = med("send.tether", "rate")
    r = ratio(t_send, wsc_send)
    row(
        "send 64B raw (until server has all bytes)",
        "msg/s",
        t_send,
        wsc_send,
        med("send.websockets", "rate"),
        ">= 2x",
        None if r is None else r >= 2,
    )
    row(
        "send() call rate only (returns before written)",
        "msg/s",
        med("send.tether", "call_rate"),
        med("send.wsc", "call_rate"),
        med("send.websockets", "call_rate"),
    )
    row(
        "send 64B, protocol tether (envelope)",
        "msg/s",
        med("send.tether_protocol", "rate"),
        wsc_send,
        med("send.websockets", "rate"),
    )
    row(
        "send 64B raw, high_water_mark=2**62 (bp off)",
        "msg/s",
        med("bp", "off"),
        wsc_send,
        None,
    )
    pair_ratios = [
        s[f"on{i}"] / s[f"off{i}"] for s in samples.get("bp", []) for i in (1, 2) if s[f"off{i}"]
    ]
    bp = statistics.median(pair_ratios) if pair_ratios else None
    pauses = sum(int(s["pauses_on"]) for s in samples.get("bp", []))
    row(
        f"send: bp on (default hwm) / off [{pauses} pauses]",
        "ratio",
        bp,
        None,
        None,
        ">= 0.90",
        None if bp is None else bp >= 0.9,
        fmt=lambda v: "-" if v is None else f"{v:.3f}",
        r=bp,
    )
    wsc_recv = med("recv.wsc", "rate")
    for name, label in (
        ("recv.tether", "recv 64B stream, sub.get(), buffer=N+10"),
        ("recv.tether_block", "recv 64B stream, sub.get(), overflow=block"),
    ):
        t = med(name, "rate")
        r = ratio(t, wsc_recv)
        row(
            label,
            "msg/s",
            t,
            wsc_recv,
            med("recv.websockets", "rate"),
            ">= 5x",
            None if r is None else r >= 5,
        )
    row(
        "recv 64B stream, subscribe(callback)",
        "msg/s",
        med("recv.tether_callback", "rate"),
        wsc_recv,
        med("recv.websockets", "rate"),
    )
    row(
        "recv 64B (vs wsc skip_utf8_validation=True)",
        "msg/s",
        med("recv.tether", "rate"),
        med("recv.wsc_skip_utf8", "rate"),
        med("recv.websockets", "rate"),
    )

    def us(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:,.1f}us"

    t50, w50 = med("rtt", "tether.p50"), med("rtt", "wsc.p50")
    # The clients ran interleaved in each repetition: compare them within a
    # repetition (paired), then take the median, so one loaded repetition
    # cannot pair one client's good run with another's bad one.
    rtt_runs = samples.get("rtt", [])
    delta = (
        statistics.median(s["tether.p50"] - s["wsc.p50"] for s in rtt_runs) if rtt_runs else None
    )
    rtt_ratio = (
        statistics.median(s["tether.p50"] / s["wsc.p50"] for s in rtt_runs) if rtt_runs else None
    )
    row(
        "echo RTT p50 (raw; delta, ratio paired)",
        "us",
        t50,
        w50,
        med("rtt", "websockets.p50"),
        "delta <= +30us" + ("" if delta is None else f" ({delta:+.1f})"),
        None if delta is None else delta <= 30,
        fmt=us,
        r=rtt_ratio,
    )
    row(
        "echo RTT p99 (raw)",
        "us",
        med("rtt", "tether.p99"),
        med("rtt", "wsc.p99"),
        med("rtt", "websockets.p99"),
        fmt=us,
    )
    row(
        "echo RTT p50, protocol tether",
        "us",
        med("rtt", "tether_protocol.p50"),
        w50,
        med("rtt", "websockets.p50"),
        fmt=us,
    )

    def mbps(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:,.0f} MB/s"

    for size in BIG_SIZES:
        name = f"big.{size // 1024}k"
        runs = samples.get(name, [])
        big_ratio = statistics.median(s["tether"] / s["websockets"] for s in runs) if runs else None
        row(
            f"send {size // 1024} KiB binary (ratio vs websockets, paired)",
            "MB/s",
            med(name, "tether"),
            med(name, "wsc"),
            med(name, "websockets"),
            ">= 1x websockets",
            None if big_ratio is None else big_ratio >= 1,
            fmt=mbps,
            r=big_ratio,
        )
        hwm_keys = sorted(
            {k for s in runs for k in s if k.startswith("hwm=")}, key=lambda k: int(k[4:])
        )
        for key in hwm_keys:
            hwm_ratio = statistics.median(s[key] / s["websockets"] for s in runs)
            row(
                f"send {size // 1024} KiB binary, high_water_mark={int(key[4:]):,}",
                "MB/s",
                med(name, key),
                med(name, "wsc"),
                med(name, "websockets"),
                ">= 1x websockets",
                hwm_ratio >= 1,
                fmt=mbps,
                r=hwm_ratio,
            )

    def nbytes(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:,.0f} B"

    for name, label in (
        ("mem.tether", "memory per queued 64B message (raw)"),
        ("mem.tether_protocol", "memory per queued 64B message (tether)"),
    ):
        m = med(name, "bytes_per_msg")
        row(label, "bytes", m, None, None, "< 1024 B", None if m is None else m < 1024, nbytes)
    return rows


#: (label, case, tether key, peer key): per-repetition ratios whose spread is shown.
SPREADS: Tuple[Tuple[str, str, str, str], ...] = (
    ("send 64B raw / wsc", "send.", "send.tether:rate", "send.wsc:rate"),
    ("send 64B tether / wsc", "send.", "send.tether_protocol:rate", "send.wsc:rate"),
    ("recv 64B buffer / wsc", "recv.", "recv.tether:rate", "recv.wsc:rate"),
    ("rtt p50 raw, wsc / tether", "rtt", "rtt:wsc.p50", "rtt:tether.p50"),
    ("rtt p50 raw, websockets / tether", "rtt", "rtt:websockets.p50", "rtt:tether.p50"),
    ("rtt p99 raw, websockets / tether", "rtt", "rtt:websockets.p99", "rtt:tether.p99"),
    ("rtt p50 tether, websockets / tether", "rtt", "rtt:websockets.p50", "rtt:tether_protocol.p50"),
    *[
        (
            f"send {s // 1024} KiB, tether / websockets",
            f"big.{s // 1024}k",
            f"big.{s // 1024}k:tether",
            f"big.{s // 1024}k:websockets",
        )
        for s in BIG_SIZES
    ],
)


def spread_rows(samples: Dict[str, List[Result]]) -> List[Tuple[str, float, float, float, int]]:
    """Per-repetition ratios (speed of tether over the peer: > 1 is faster): min, median, max.

    Repetition i of one case is paired with repetition i of the other; the
    cases of one repetition ran back to back (the RTT ones interleaved).
    """
    out = []
    for label, _, a, b in SPREADS:
        (ca, ka), (cb, kb) = a.split(":"), b.split(":")
        if ca not in samples or cb not in samples:
            continue
        ratios = [x[ka] / y[kb] for x, y in zip(samples[ca], samples[cb]) if y[kb]]
        if ratios:
            out.append((label, min(ratios), statistics.median(ratios), max(ratios), len(ratios)))
    for size in BIG_SIZES:
        runs = samples.get(f"big.{size // 1024}k", [])
        for key in sorted(
            {k for s in runs for k in s if k.startswith("hwm=")}, key=lambda k: int(k[4:])
        ):
            ratios = [s[key] / s["websockets"] for s in runs if key in s and s["websockets"]]
            label = f"send {size // 1024} KiB, {key}, tether / websockets"
            out.append((label, min(ratios), statistics.median(ratios), max(ratios), len(ratios)))
        # The same ratio split by the client that ran first in the repetition
        # (--big-order rotate): does the order move it?
        for i, who in enumerate("cwt"):
            ratios = [
                s["tether"] / s["websockets"]
                for s in runs
                if s.get("first") == i and s.get("websockets")
            ]
            if ratios and len({s.get("first") for s in runs}) > 1:
                label = f"send {size // 1024} KiB, tether / websockets, {BIG_CLIENTS[who]} first"
                out.append(
                    (label, min(ratios), statistics.median(ratios), max(ratios), len(ratios))
                )
    return out


def print_spreads(samples: Dict[str, List[Result]], out: Any = sys.stdout) -> None:
    rows = spread_rows(samples)
    if not rows:
        return
    print("\nratios per repetition (tether's speed over the peer's; > 1: tether faster)", file=out)
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}    min  median    max  (n)", file=out)
    for label, lo, mid, hi, n in rows:
        print(f"{label:<{width}}  {lo:5.2f}  {mid:6.2f}  {hi:5.2f}  ({n})", file=out)
    for size in BIG_SIZES:
        runs = samples.get(f"big.{size // 1024}k", [])
        kib = size // 1024
        _print_per_client(runs, "faults", f"page faults per {kib} KiB message", out)
        if _print_per_client(runs, "cpu", f"client CPU us per {kib} KiB message", out):
            ratios = [
                s["cpu.websockets"] / s["cpu.tether"]
                for s in runs
                if s.get("cpu.tether") and "cpu.websockets" in s
            ]
            if ratios:
                print(
                    f"  websockets' CPU over tether's, per repetition: min {min(ratios):.2f} "
                    f"median {statistics.median(ratios):.2f} max {max(ratios):.2f} "
                    "(> 1: tether spends less)",
                    file=out,
                )


def _print_per_client(runs: List[Result], key: str, what: str, out: Any) -> bool:
    """Print ``what``'s min / median / max per client from the ``<key>.<client>`` samples.

    Returns whether any client had a sample (nothing is printed otherwise).
    """
    values = {
        who: [s[f"{key}.{who}"] for s in runs if f"{key}.{who}" in s]
        for who in BIG_CLIENTS.values()
    }
    if not any(values.values()):
        return False
    shown = ", ".join(
        f"{who} {min(v):,.0f} / {statistics.median(v):,.0f} / {max(v):,.0f}"
        for who, v in values.items()
        if v
    )
    print(f"{what} (min / median / max): {shown}", file=out)
    return True


def print_table(rows: List[Dict[str, Any]], out: Any = sys.stdout) -> None:
    header = ("metric", "tether_sync", "websocket-client", "websockets", "ratio", "target", "met?")
    lines = [header]
    for r in rows:
        fmt = r["_fmt"]
        ratio = r["ratio"]
        lines.append(
            (
                r["metric"],
                fmt(r["tether_sync"]),
                fmt(r["websocket_client"]),
                fmt(r["websockets"]),
                "-" if ratio is None else f"{ratio:.2f}x",
                r["target"],
                {True: "yes", False: "NO", None: "-"}[r["met"]],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        print("  ".join(cells), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)


# --------------------------------------------------------------------------- profile


@contextlib.contextmanager
def profile_threads() -> Iterator[List[Tuple[str, cProfile.Profile]]]:
    """Profile the calling thread and every thread started inside the block.

    cProfile only sees the thread that enabled it, so ``Thread.run`` is wrapped
    to give each new thread (tether-io, tether-dispatch...) its own profiler.
    """
    profiles: List[Tuple[str, cProfile.Profile]] = []
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        profiles.append((self.name, prof))
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    main = cProfile.Profile()
    profiles.append(("main (caller)", main))
    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        main.enable()
        try:
            yield profiles
        finally:
            main.disable()
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]


def print_profiles(title: str, profiles: List[Tuple[str, cProfile.Profile]], top: int) -> str:
    merged: Dict[str, pstats.Stats] = {}
    buf = io.StringIO()
    for name, prof in profiles:
        try:
            st = pstats.Stats(prof, stream=buf)
        except TypeError:  # a thread that never ran any Python code
            continue
        if name in merged:
            merged[name].add(st)
        else:
            merged[name] = st
    print(f"\n==== cProfile: {title} (top {top} by tottime, per thread) ====", file=buf)
    for name, st in merged.items():
        if name.startswith("tether-connect"):
            continue  # the handshake: not the hot path
        print(f"\n---- thread {name}: {st.total_calls:,} calls, {st.total_tt:.3f}s ----", file=buf)
        st.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def run_profiles(base: str, n_send: int, n_recv: int, n_rtt: int, top: int) -> str:
    text = ""
    with profile_threads() as profiles:
        send_tether(base, n_send)
    text += print_profiles(f"TetherClient raw send path, {n_send:,} x 64B", profiles, top)
    with profile_threads() as profiles:
        recv_tether(base, n_recv, "buffer")
    text += print_profiles(
        f"TetherClient raw receive path (sub.get), {n_recv:,} x 64B", profiles, top
    )
    with profile_threads() as profiles:
        rtt_tether(base, n_rtt)
    text += print_profiles(
        f"TetherClient raw echo round trips, {n_rtt:,} sequential", profiles, top
    )
    return text


# --------------------------------------------------------------------------- main


def _git_state() -> str:
    """Commit of the tree under test, and whether tether_sync/ has local changes."""
    root = HERE.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tether_sync"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head or '?'}{' + local changes in tether_sync/' if dirty else ''}"


def _pin(server_pid: int) -> str:
    """Client on the first allowed CPU, server on the last: steadier numbers."""
    setaffinity = getattr(os, "sched_setaffinity", None)
    if setaffinity is None:
        return "no (not supported here)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "no (one CPU)"
    setaffinity(server_pid, {cpus[-1]})
    setaffinity(0, {cpus[0]})  # threads started later (tether-io...) inherit it
    return f"client CPU {cpus[0]}, server CPU {cpus[-1]}"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N: a smoke test")
    parser.add_argument("--json", metavar="PATH", help="write results as JSON")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument("--n-send", type=int, help="messages per send run")
    parser.add_argument("--n-recv", type=int, help="messages per receive run")
    parser.add_argument("--n-rtt", type=int, help="round trips per RTT run")
    parser.add_argument("--n-mem", type=int, help="messages queued for the memory run")
    parser.add_argument(
        "--big-bytes", type=int, help="payload bytes per big-message send run (per client)"
    )
    parser.add_argument(
        "--big-hwm",
        type=lambda text: tuple(int(float(v)) for v in text.split(",") if v),
        default=(),
        help="big-message rows: also run TetherClient with these high_water_mark values "
        "(comma-separated bytes, e.g. 1e6,4e6,16e6), ABBA with the default run",
    )
    parser.add_argument(
        "--big-order",
        choices=("rotate", "fixed"),
        default="rotate",
        help="big-message rows: the clients' order per repetition: rotate (each first, "
        "second and third in turn; the default) or fixed (websocket-client, websockets, "
        "tether_sync every time: the method before session 21)",
    )
    parser.add_argument("--only", help="comma-separated case prefixes (e.g. send,rtt,bp)")
    parser.add_argument("--profile", action="store_true", help="also cProfile TetherClient")
    parser.add_argument("--profile-only", action="store_true", help="only the cProfile runs")
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin this process to the first CPU and the server to the last (Linux)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-run progress lines")
    args = parser.parse_args(argv)
    defaults = (
        (20_000, 20_000, 500, 20_000, 32 * 2**20)
        if args.quick
        else (200_000, 200_000, 2000, 100_000, 256 * 2**20)
    )
    for attr, value in zip(("n_send", "n_recv", "n_rtt", "n_mem", "big_bytes"), defaults):
        if getattr(args, attr) is None:
            setattr(args, attr, value)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    # The memory runs close clients with messages still queued, on purpose.
    logging.getLogger("tether_sync").setLevel(logging.ERROR)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    meta = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tether_sync": getattr(tether_sync, "__version__", "?"),
        "websocket_client": websocket.__version__,
        "websockets": websockets.__version__,
        "payload_bytes": len(PAYLOAD),
        "n_send": args.n_send,
        "n_recv": args.n_recv,
        "n_rtt": args.n_rtt,
        "n_mem": args.n_mem,
        "repeat": args.repeat,
        "git": _git_state(),
        "load_before": _load(),
    }
    started = time.perf_counter()
    server = SinkServer()
    meta["pinned"] = _pin(server.proc.pid) if args.pin else "no"
    try:
        results: Dict[str, Any] = {"samples": {}}
        if not args.profile_only:
            results = run_all(server.base, args, log)
        profile_text = ""
        if args.profile or args.profile_only:
            profile_text = run_profiles(
                server.base, args.n_send, args.n_recv, args.n_rtt, args.profile_top
            )
    finally:
        server.stop()
    elapsed = time.perf_counter() - started
    meta["load_after"] = _load()

    rows = build_rows(results["samples"])
    print(
        f"tether_sync {meta['tether_sync']} | websocket-client {meta['websocket_client']} | "
        f"websockets {meta['websockets']} | Python {meta['python']} | {meta['cpus']} CPUs"
    )
    print(
        f"N: send {args.n_send:,}, recv {args.n_recv:,}, rtt {args.n_rtt:,}, "
        f"memory {args.n_mem:,}; median of {args.repeat}; 64-byte text payload; "
        f"ratio = tether_sync / websocket-client; total {elapsed:.1f}s"
    )
    print(
        f"tree {meta['git']}; pinned: {meta['pinned']}; load average before "
        f"{meta['load_before']}, after {meta['load_after']} (other processes skew the numbers)"
    )
    if "tether_frame_len" in results:
        print(f"(protocol tether frame: {results['tether_frame_len']} bytes vs 70 raw)")
    print()
    if rows:
        print_table(rows)
        print_spreads(results["samples"])
    if profile_text:
        print(profile_text)
    if args.json:
        data = {
            "meta": meta,
            "elapsed_s": elapsed,
            "rows": [{k: v for k, v in r.items() if k != "_fmt"} for r in rows],
            "samples": results["samples"],
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
