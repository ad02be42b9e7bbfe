"""Where one echo round trip's time goes, step by step (issue 22).

Run from the repository root::

    python benchmarks/bench_rtt_breakdown.py              # 2,000 round trips x 3 repeats
    python benchmarks/bench_rtt_breakdown.py -n 5000 --repeat 5 --json out.json

One raw TetherClient (default options, no heartbeat) does sequential 64-byte
echo round trips against ``sink_server.py``'s ``/echo``, back to back as in
``bench_client.py --only rtt``; each one is stamped with
``time.perf_counter_ns`` at every step it crosses between the caller and the
I/O thread:

===============  ================================================================
step ends at     where (thread)
===============  ================================================================
``written``      ``Link.send_some`` wrote the frame: on the caller's thread when
                 the loop's turn was free (``IoLoop.write_now``), else (I/O)
``sent``         ``client.send()`` returned (caller)
``waits``        the caller blocks in ``Subscription.get()`` (caller)
``io_runs``      the I/O thread is out of ``epoll.poll`` for the wake byte (I/O;
                 round trips whose request the I/O thread wrote)
``io_sleeps``    the I/O thread enters ``epoll.poll`` (I/O)
``io_readable``  ``epoll.poll`` returned: the reply is readable (I/O)
``read``         ``Link.recv`` returned the bytes (I/O)
``parsed``       ``Connection.readable`` returned: frame parsed and routed (I/O)
``handed``       ``InboundBuffer.offer_many`` entered (I/O)
``pushed``       ``InboundBuffer.offer_many`` returned: the consumer woken (I/O)
``got``          ``get()`` returned the reply (caller)
===============  ================================================================

Round trips are split in two tables: those whose request the caller wrote
itself, and those the I/O thread wrote (a hand-off each way).

It also counts the wake bytes written (and times their ``send()``), and how
often the I/O thread was asleep in ``epoll`` when the message came.

The hooks are this script's (it wraps those methods, the poller's ``epoll``
object and its wake socket while the stamped client's block of round trips
runs); the library carries no instrumentation. Each stamp costs about a
microsecond, so the stamped round trip is slower than a plain one: the script
also times, in blocks of 50 round trips taking turns in rotating order, a
plain round trip on a second TetherClient, a websocket-client round trip (its
``send()`` timed too) and a websockets sync one, and prints all the totals.
Blocks, unlike ``bench_client.py``'s round trips interleaved one by one, keep
one client's leftover work (tether_sync's I/O thread finishing its iteration)
out of the next client's round trip.

Per repetition every step's time is the median over the round trips of the
difference between its stamp and the previous step's; the table shows min /
median / max of those medians over the repetitions, and the median offset of
each stamp from the ``send()`` call. Steps on the two threads overlap, so the
steps do not add up to the total. Nothing is asserted; it exits 0.

To measure another tree, copy this script into its ``benchmarks/`` and run it
there (it imports the ``tether_sync`` beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

import websocket
from bench_client import PAYLOAD, SinkServer
from websockets.sync.client import connect as websockets_connect

from tether_sync import TetherClient
from tether_sync.engine.connection import Connection
from tether_sync.engine.transport import Link
from tether_sync.subscription import InboundBuffer

WAIT = 10.0
BLOCK = 50  # round trips per client in a row (the clients take turns, block by block)

# The steps of one round trip, in order: (name, the stamps that end it, what it is).
# A round trip's stamps are matched in the order they were logged, each step's
# stamp being the first of its names after the previous step's.
STEPS: List[Tuple[str, Tuple[str, ...], str]] = [
    ("sent", ("sent",), "caller: send() (checks, Delivery, queue, wake-up)"),
    ("waits", ("waits",), "caller: into get(), blocks"),
    ("io_runs", ("io_woken",), "I/O thread runs: out of epoll for the wake byte"),
    ("written", ("written",), "I/O: commands, pump, frame, sock.send returned"),
    ("io_sleeps", ("io_sleeps",), "I/O: rest of the iteration, into epoll"),
    ("io_readable", ("io_readable",), "reply readable: epoll returned (kernel, echo server)"),
    ("read", ("read",), "I/O: recv_into + copy"),
    ("parsed", ("parsed",), "I/O: parse the frame, route it (session, router)"),
    ("handed", ("handed",), "I/O: router.flush up to InboundBuffer.offer_many"),
    ("pushed", ("pushed",), "I/O: lock, ring push, wake the blocked consumer"),
    ("got", ("got",), "caller: wakes, takes the GIL and the reply, get() returns"),
]

# The same when the caller wrote its request itself (the loop's turn was free,
# ``IoLoop.write_now``): no hand-off to the I/O thread before the write.
DIRECT_STEPS: List[Tuple[str, Tuple[str, ...], str]] = [
    ("written", ("written_by_caller",), "caller: send() queues, pumps, frames, sock.send"),
    ("sent", ("sent",), "caller: send() returns"),
    ("waits", ("waits",), "caller: into get(), blocks"),
    ("io_readable", ("io_readable",), "reply readable: epoll returned (kernel, echo server)"),
    ("read", ("read",), "I/O: recv_into + copy"),
    ("parsed", ("parsed",), "I/O: parse the frame, route it (session, router)"),
    ("handed", ("handed",), "I/O: router.flush up to InboundBuffer.offer_many"),
    ("pushed", ("pushed",), "I/O: lock, ring push, wake the blocked consumer"),
    ("got", ("got",), "caller: wakes, takes the GIL and the reply, get() returns"),
]

clock = time.perf_counter_ns
events: List[Tuple[str, int]] = []  # (stamp, time): every stamp of a block, in order
stamp = events.append


class EpollSpy:
    """Wraps the poller's ``select.epoll`` object: stamps entering and leaving poll()."""

    def __init__(self, real: Any, wake_fd: int) -> None:
        self.real = real
        self.wake_fd = wake_fd

    def poll(self, timeout: float = -1.0, maxevents: int = -1) -> List[Tuple[int, int]]:
        stamp(("io_sleeps", clock()))
        got: List[Tuple[int, int]] = self.real.poll(timeout, maxevents)
        t = clock()
        for fd, _ in got:
            stamp(("io_woken" if fd == self.wake_fd else "io_readable", t))
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class WakeSpy:
    """Wraps the poller's wake socket: stamps each wake byte written (and its cost)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def send(self, data: bytes) -> int:
        t0 = clock()
        try:
            n: int = self.real.send(data)
        finally:
            stamp(("wake_byte", clock() - t0))  # a duration, not a time
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Hooks:
    """Installs and removes the stamping wrappers (while one client's block runs)."""

    def __init__(self, client: TetherClient) -> None:
        loop = client._loop._loop  # the IoLoop behind the Engine
        self.poller = loop._poller
        self.io_thread = loop.thread
        self.real_epoll = self.poller._epoll
        self.real_wake_w = self.poller._wake_w
        self.epoll_spy = EpollSpy(self.real_epoll, self.poller._wake_fd)
        self.wake_spy = WakeSpy(self.real_wake_w)
        self.saved: List[Tuple[Any, str, Any]] = []

    def _patch(self, owner: Any, name: str, new: Any) -> None:
        self.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def install(self) -> None:
        self.poller._epoll = self.epoll_spy
        self.poller._wake_w = self.wake_spy
        send_some, recv, readable = Link.send_some, Link.recv, Connection.readable
        offer_many, wait_and_pop = InboundBuffer.offer_many, InboundBuffer._wait_and_pop
        io_thread = self.io_thread

        def send_some_hook(link: Link, session: Any) -> int:
            n = send_some(link, session)
            if n > 0:
                by_io = threading.current_thread() is io_thread
                stamp(("written" if by_io else "written_by_caller", clock()))
            return n

        def recv_hook(link: Link) -> Optional[bytes]:
            data = recv(link)
            stamp(("read", clock()))
            return data

        def readable_hook(conn: Connection) -> None:
            readable(conn)
            stamp(("parsed", clock()))

        def offer_many_hook(buf: InboundBuffer, items: List[Any]) -> Tuple[int, int]:
            stamp(("handed", clock()))
            got = offer_many(buf, items)
            stamp(("pushed", clock()))
            return got

        def wait_hook(buf: InboundBuffer, timeout: Optional[float]) -> Any:
            stamp(("waits", clock()))
            return wait_and_pop(buf, timeout)

        self._patch(Link, "send_some", send_some_hook)
        self._patch(Link, "recv", recv_hook)
        self._patch(Connection, "readable", readable_hook)
        self._patch(InboundBuffer, "offer_many", offer_many_hook)
        self._patch(InboundBuffer, "_wait_and_pop", wait_hook)

    def remove(self) -> None:
        while self.saved:
            owner, name, old = self.saved.pop()
            setattr(owner, name, old)
        self.poller._epoll = self.real_epoll
        self.poller._wake_w = self.real_wake_w


def _tether(url: str) -> TetherClient:
    return TetherClient(url, protocol="raw", heartbeat=False, reconnect=False)


def split_round_trips(log: List[Tuple[str, int]]) -> List[Dict[str, int]]:
    """One dict per round trip (from its ``send`` stamp to the next): step -> time.

    Also ``wake_byte`` (ns the wake byte's send() took, 0 if none was written in
    that round trip) and ``sleeps_between`` (1 if the I/O thread entered epoll
    between the caller's send() and its write: it was asleep when the message came).
    """
    starts = [i for i, (name, _) in enumerate(log) if name == "send"]
    out = []
    for k, i in enumerate(starts):
        window = log[i : starts[k + 1] if k + 1 < len(starts) else len(log)]
        got: Dict[str, int] = {"send": window[0][1]}
        got["wake_byte"] = sum(t for name, t in window if name == "wake_byte")
        names_seen = [name for name, _ in window]
        direct = "written_by_caller" in names_seen and names_seen.index(
            "written_by_caller"
        ) < names_seen.index("sent")
        got["direct"] = int(direct)
        pos = 1
        for step, names, _ in DIRECT_STEPS if direct else STEPS:
            while pos < len(window) and window[pos][0] not in names:
                pos += 1
            if pos == len(window):
                break
            got[step] = window[pos][1]
            pos += 1
        if "got" not in got:
            continue  # an incomplete window (never the case in a whole block)
        sent_at = next(j for j, (name, _) in enumerate(window) if name == "sent")
        written_at = next(
            (j for j, (n, _) in enumerate(window) if n.startswith("written")), len(window)
        )
        got["sleeps_between"] = int(
            any(name == "io_sleeps" for name, _ in window[sent_at:written_at])
        )
        out.append(got)
    return out


def one_repetition(
    base: str, n: int, warmup: int
) -> Tuple[List[Dict[str, int]], Dict[str, List[int]]]:
    """n round trips per client; returns the stamped round trips and the totals."""
    wsc = websocket.create_connection(f"{base}/echo", timeout=WAIT)
    stack = contextlib.ExitStack()
    wss = stack.enter_context(
        websockets_connect(f"{base}/echo", compression=None, open_timeout=WAIT)
    )
    inst, plain = _tether(f"{base}/echo"), _tether(f"{base}/echo")
    totals: Dict[str, List[int]] = {"tether": [], "websocket-client": [], "websockets": []}
    wsc_send: List[int] = []
    trips: List[Dict[str, int]] = []
    try:
        inst_sub, plain_sub = inst.subscribe("default"), plain.subscribe("default")
        inst.connect(wait=True, timeout=WAIT)
        plain.connect(wait=True, timeout=WAIT)
        hooks = Hooks(inst)

        def stamped_block(count: int, keep: bool) -> None:
            events.clear()
            hooks.install()
            try:
                for _ in range(count):
                    stamp(("send", clock()))
                    inst.send(PAYLOAD)
                    stamp(("sent", clock()))
                    echo = inst_sub.get(timeout=WAIT)
                    stamp(("got", clock()))
                    if echo != PAYLOAD:
                        raise RuntimeError(f"bad echo {echo!r}")
            finally:
                hooks.remove()
            if keep:
                trips.extend(split_round_trips(events[:]))

        def plain_block(count: int, keep: bool) -> None:
            for _ in range(count):
                t0 = clock()
                plain.send(PAYLOAD)
                echo = plain_sub.get(timeout=WAIT)
                if keep:
                    totals["tether"].append(clock() - t0)
                if echo != PAYLOAD:
                    raise RuntimeError(f"bad echo {echo!r}")

        def wsc_block(count: int, keep: bool) -> None:
            for _ in range(count):
                t0 = clock()
                wsc.send(PAYLOAD)
                t1 = clock()
                echo = wsc.recv()
                t2 = clock()
                if keep:
                    totals["websocket-client"].append(t2 - t0)
                    wsc_send.append(t1 - t0)
                if echo != PAYLOAD:
                    raise RuntimeError(f"bad echo {echo!r}")

        def wss_block(count: int, keep: bool) -> None:
            for _ in range(count):
                t0 = clock()
                wss.send(PAYLOAD)
                echo = wss.recv(timeout=WAIT)
                if keep:
                    totals["websockets"].append(clock() - t0)
                if echo != PAYLOAD:
                    raise RuntimeError(f"bad echo {echo!r}")

        blocks: List[Callable[[int, bool], None]] = [
            stamped_block,
            plain_block,
            wsc_block,
            wss_block,
        ]
        for _ in range(-(-warmup // BLOCK)):
            for block in blocks:
                block(BLOCK, False)
        for k in range(-(-n // BLOCK)):
            j = k % len(blocks)
            order = blocks[j:] + blocks[:j]  # rotating: drift hits all alike
            for block in order:
                block(min(BLOCK, n - k * BLOCK), True)
    finally:
        wsc.close()
        stack.close()
        inst.close(timeout=5)
        plain.close(timeout=5)
    totals["tether (stamped)"] = [t["got"] - t["send"] for t in trips]
    totals["websocket-client send()"] = wsc_send
    return trips, totals


def step_medians(trips: List[Dict[str, int]]) -> Dict[str, float]:
    """Median (us) of each step, of each stamp's offset from send, and the shares."""
    med: Dict[str, float] = {}
    for tag, steps, direct in (("", STEPS, 0), ("direct ", DIRECT_STEPS, 1)):
        kind = [t for t in trips if t["direct"] == direct]
        med[f"{tag}share"] = len(kind) / len(trips)
        prev = "send"
        for step, _, _ in steps:
            diffs = [t[step] - t[prev] for t in kind if step in t and prev in t]
            offsets = [t[step] - t["send"] for t in kind if step in t]
            if diffs:
                med[f"{tag}{prev}->{step}"] = statistics.median(diffs) / 1000
                med[f"{tag}@{step}"] = statistics.median(offsets) / 1000
            prev = step
    med["wake bytes per round trip"] = sum(1 for t in trips if t["wake_byte"]) / len(trips)
    woke = [t["wake_byte"] for t in trips if t["wake_byte"]]
    med["wake byte send() us"] = statistics.median(woke) / 1000 if woke else 0.0
    med["I/O thread asleep at send"] = sum(t["sleeps_between"] for t in trips) / len(trips)
    return med


def spread(values: List[float], digits: int = 1) -> str:
    if not values:
        return f"{'-':>7} {'-':>7} {'-':>7}"
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{lo:7.{digits}f} {mid:7.{digits}f} {hi:7.{digits}f}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="round trips per client and repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    server = SinkServer()
    reps: List[Dict[str, float]] = []
    counts: List[int] = []
    try:
        for rep in range(args.repeat):
            t = time.perf_counter()
            trips, totals = one_repetition(server.base, args.n, args.warmup)
            med = step_medians(trips)
            med.update({f"total {k}": statistics.median(v) / 1000 for k, v in totals.items()})
            med.update(
                {f"p99 {k}": statistics.quantiles(v, n=100)[98] / 1000 for k, v in totals.items()}
            )
            reps.append(med)
            counts.append(len(trips))
            print(
                f"[{rep + 1}/{args.repeat}] stamped {med['total tether (stamped)']:.1f} us, "
                f"tether {med['total tether']:.1f} us, websocket-client "
                f"{med['total websocket-client']:.1f} us ({time.perf_counter() - t:.1f}s)",
                file=sys.stderr,
            )
    finally:
        server.stop()
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"echo round trips of {len(PAYLOAD)} B, raw, default options: {args.n:,} per client "
        f"x {args.repeat} repeats, interleaved; Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs; load average before {load_before}, after {load_after}"
    )
    print("medians in us; min / median / max over the repetitions\n")
    for tag, steps, title in (
        ("", STEPS, "the I/O thread wrote the request (a hand-off each way)"),
        ("direct ", DIRECT_STEPS, "the caller wrote the request itself (the loop's turn)"),
    ):
        share = [r[f"{tag}share"] for r in reps]
        print(f"Round trips where {title}: share {spread(share, 2)}")
        print(f"{'step':<22} {'us (min med max)':>23}  {'at (med)':>8}  what")
        prev = "send"
        for step, _, what in steps:
            key = f"{tag}{prev}->{step}"
            vals = [r[key] for r in reps if key in r]
            at = [r[f"{tag}@{step}"] for r in reps if f"{tag}@{step}" in r]
            at_s = f"{statistics.median(at):8.1f}" if at else f"{'-':>8}"
            print(f"{prev + '->' + step:<22} {spread(vals):>23}  {at_s}  {what}")
            prev = step
        print()
    print(f"\nround trips matched: {min(counts):,} of {args.n:,} (fewest of the repetitions)")
    for key, digits in (
        ("wake bytes per round trip", 2),
        ("wake byte send() us", 1),
        ("I/O thread asleep at send", 2),
    ):
        print(f"{key:<32}     {spread([r[key] for r in reps], digits)}")
    print()
    names = (
        "tether (stamped)",
        "tether",
        "websocket-client",
        "websockets",
        "websocket-client send()",
    )
    for name in names:
        p50 = [r[f"total {name}"] for r in reps]
        p99 = [r[f"p99 {name}"] for r in reps]
        print(f"{'total ' + name:<32} p50 {spread(p50)}   p99 {spread(p99)}")
    for peer in ("websocket-client", "websockets"):
        ratios = [r[f"total {peer}"] / r["total tether"] for r in reps]
        print(f"{'p50 ' + peer + ' / tether':<32}     {spread(ratios, 2)}")
    if args.json:
        meta = {"n": args.n, "repeat": args.repeat, "load": [load_before, load_after]}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "repetitions": reps}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
