"""The floor of a round trip for each way of handing it between threads (issue 22).

Run from the repository root::

    python benchmarks/bench_wakeups.py                 # 20,000 round trips x 3 repeats
    python benchmarks/bench_wakeups.py -n 5000 --repeat 5 --json out.json

No WebSocket, no framing: a 64-byte message goes to an echo peer (a separate
process, one blocking thread per connection, over 127.0.0.1 TCP) and back, and
what differs is only how many Python threads it crosses in this process:

* ``none`` (websocket-client's shape): the caller ``sendall()``\\ s and blocks in
  ``recv()`` itself. No thread hand-off.
* ``one`` (websockets sync's shape): the caller ``sendall()``\\ s itself; a
  reader thread blocks in ``recv()`` and hands the reply to the caller through
  a ``threading.Condition``. One hand-off (reader -> caller).
* ``two`` (tether_sync's shape, DESIGN §4: one thread owns the socket): the
  caller appends the message to a deque and writes a wake byte to a
  socketpair; the I/O thread, blocked in ``epoll.poll`` on the wake socket and
  the TCP socket, reads the wake byte, ``send()``\\ s, polls again, ``recv()``\\ s
  the reply and hands it to the caller through a ``threading.Condition``. Two
  hand-offs (caller -> I/O thread -> caller).
* ``two+yield``: ``two``, and the I/O thread yields the GIL once
  (``time.sleep(0)``) after the notify, as tether_sync's dispatch does for a
  consumer blocked in ``Subscription.get()``.

All the shapes' connections are open at once and each iteration does one round
trip on each, in rotating order, so load drift hits them alike. Per repetition:
p50 and p99 of each shape and the ratios (none's latency over the shape's, so
1.0 = as fast as no hand-off). The table shows min / median / max over the
repetitions. Targets are not asserted: this measures what the hand-offs cost,
the floor under which no client of that shape can go in CPython on this machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional

MSG = b"x" * 64
WAIT = 10.0  # seconds any single wait may take

ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print("PORT", srv.getsockname()[1], flush=True)
def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)
def stdin_eof():
    sys.stdin.read()
    import os
    os._exit(0)
threading.Thread(target=stdin_eof, daemon=True).start()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            raise ConnectionError("echo peer closed")
        got += chunk
    return got


class NoHandoff:
    """websocket-client's shape: the caller does the I/O."""

    name = "none"

    def __init__(self, port: int) -> None:
        self.sock = _connect(port)

    def round_trip(self) -> None:
        self.sock.sendall(MSG)
        _recv_exact(self.sock, len(MSG))

    def close(self) -> None:
        self.sock.close()


class OneHandoff:
    """websockets sync's shape: caller writes, a reader thread hands replies over."""

    name = "one"

    def __init__(self, port: int) -> None:
        self.sock = _connect(port)
        self.sock.settimeout(None)
        self.cond = threading.Condition(threading.Lock())
        self.inbox: Deque[bytes] = collections.deque()
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()

    def _reader(self) -> None:
        while True:
            try:
                data = _recv_exact(self.sock, len(MSG))
            except (ConnectionError, OSError):
                return
            with self.cond:
                self.inbox.append(data)
                self.cond.notify()

    def round_trip(self) -> None:
        self.sock.sendall(MSG)
        with self.cond:
            if not self.inbox and not self.cond.wait_for(lambda: self.inbox, WAIT):
                raise TimeoutError("one: no reply")
            self.inbox.popleft()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(WAIT)


class TwoHandoffs:
    """tether_sync's shape: only the I/O thread touches the socket."""

    name = "two"

    def __init__(self, port: int, yield_gil: bool = False) -> None:
        if yield_gil:
            self.name = "two+yield"
        self.yield_gil = yield_gil
        self.sock = _connect(port)
        self.sock.setblocking(False)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.epoll = select.epoll()
        self.epoll.register(self.wake_r.fileno(), select.EPOLLIN)
        self.epoll.register(self.sock.fileno(), select.EPOLLIN)
        self.outbox: Deque[bytes] = collections.deque()
        self.out_lock = threading.Lock()
        self.cond = threading.Condition(threading.Lock())
        self.inbox: Deque[bytes] = collections.deque()
        self.stop = False
        self.thread = threading.Thread(target=self._io, daemon=True)
        self.thread.start()

    def _io(self) -> None:
        wake_fd, sock_fd = self.wake_r.fileno(), self.sock.fileno()
        buf = b""
        while not self.stop:
            for fd, _ in self.epoll.poll(WAIT, 2):
                if fd == wake_fd:
                    try:
                        self.wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                    with self.out_lock:
                        pending = b"".join(self.outbox)
                        self.outbox.clear()
                    if pending:
                        self.sock.sendall(pending)  # 64 bytes: never blocks here
                elif fd == sock_fd:
                    try:
                        chunk = self.sock.recv(65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return
                    buf += chunk
                    while len(buf) >= len(MSG):
                        data, buf = buf[: len(MSG)], buf[len(MSG) :]
                        with self.cond:
                            self.inbox.append(data)
                            self.cond.notify()
                        if self.yield_gil:
                            time.sleep(0)

    def round_trip(self) -> None:
        with self.out_lock:
            self.outbox.append(MSG)
        self.wake_w.send(b"\0")
        with self.cond:
            if not self.inbox and not self.cond.wait_for(lambda: self.inbox, WAIT):
                raise TimeoutError(f"{self.name}: no reply")
            self.inbox.popleft()

    def close(self) -> None:
        self.stop = True
        self.wake_w.send(b"\0")
        self.thread.join(WAIT)
        self.epoll.close()
        for s in (self.sock, self.wake_r, self.wake_w):
            s.close()


def _pct(samples: List[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0  # us


def one_repetition(port: int, n: int, warmup: int) -> Dict[str, float]:
    shapes: List[Any] = [
        NoHandoff(port),
        OneHandoff(port),
        TwoHandoffs(port),
        TwoHandoffs(port, yield_gil=True),
    ]
    samples: Dict[str, List[int]] = {s.name: [] for s in shapes}
    clock: Callable[[], int] = time.perf_counter_ns
    try:
        for _ in range(warmup):
            for s in shapes:
                s.round_trip()
        for i in range(n):
            k = i % len(shapes)
            for s in shapes[k:] + shapes[:k]:  # rotating order
                t0 = clock()
                s.round_trip()
                samples[s.name].append(clock() - t0)
    finally:
        for s in shapes:
            s.close()
    out: Dict[str, float] = {}
    for name, got in samples.items():
        out[f"{name}.p50"] = _pct(got, 0.50)
        out[f"{name}.p99"] = _pct(got, 0.99)
    return out


def spread(values: List[float], digits: int = 1) -> str:
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{lo:7.{digits}f} {mid:7.{digits}f} {hi:7.{digits}f}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="round trips per shape and repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    peer = subprocess.Popen(
        [sys.executable, "-c", ECHO_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert peer.stdout is not None
        ready, _, _ = select.select([peer.stdout], [], [], WAIT)
        line = peer.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"echo peer did not start: {line!r}")
        port = int(line.split()[1])
        reps = []
        for rep in range(args.repeat):
            t = time.perf_counter()
            got = one_repetition(port, args.n, args.warmup)
            reps.append(got)
            shown = ", ".join(f"{k}={v:.1f}" for k, v in got.items())
            print(
                f"[{rep + 1}/{args.repeat}] {shown} ({time.perf_counter() - t:.1f}s)",
                file=sys.stderr,
            )
    finally:
        if peer.stdin is not None:
            peer.stdin.close()
        try:
            peer.wait(5)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait(5)
        if peer.stdout is not None:
            peer.stdout.close()
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"round trips of {len(MSG)} B to an echo peer process over 127.0.0.1: "
        f"{args.n:,} per shape x {args.repeat} repeats, interleaved; Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; load average before "
        f"{load_before}, after {load_after}"
    )
    print(f"{'shape':<11} {'p50 us (min med max)':>24}  {'p99 us (min med max)':>24}")
    names = ["none", "one", "two", "two+yield"]
    for name in names:
        p50 = [r[f"{name}.p50"] for r in reps]
        p99 = [r[f"{name}.p99"] for r in reps]
        print(f"{name:<11} {spread(p50):>24}  {spread(p99):>24}")
    print("\nratios per repetition, latency of the peer shape over this one (>1: faster):")
    print(f"{'':<24} {'min':>7} {'median':>7} {'max':>7}")
    for a, b in (("two", "none"), ("two", "one"), ("one", "none"), ("two+yield", "one")):
        for q in ("p50", "p99"):
            ratios = [r[f"{b}.{q}"] / r[f"{a}.{q}"] for r in reps]
            print(f"{q + ' ' + b + ' / ' + a:<24} {spread(ratios, 2)}")
    if args.json:
        meta = {"n": args.n, "repeat": args.repeat, "load": [load_before, load_after]}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "repetitions": reps}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
