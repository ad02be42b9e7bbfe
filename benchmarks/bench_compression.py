"""Benchmark the client's send path with permessage-deflate negotiated vs off.

Run from the repository root::

    python benchmarks/bench_compression.py [--quick] [--check] [--only session,client]

The claim checked (issue 13): messages below the compression threshold (1 KiB)
cost within 5 % of compression off on the send path. Two measurements:

* ``session``: the whole sans-I/O send path of one connection, without threads
  or sockets: ``Session.send(batch)`` (framing into the write buffer, through the
  codec when negotiated), ``data_to_send()`` and ``sent(n)`` until empty, as the
  loop does it. Many short runs, off and on back to back (alternating which goes
  first); the overhead is the median of the paired ratios, and an A/A row (off
  vs off) shows the noise floor. Best times in microseconds per message.
  ``--check`` exits 1 if a row is over 5 %.
* ``client``: ``TetherClient(protocol="raw").send()`` N times of 64 bytes, end to end
  over 127.0.0.1, until the sink server has every byte (``benchmarks/sink_server.py``
  in a subprocess, its handshake answering permessage-deflate when offered).
  Rounds of one run off and one on (alternating which goes first); the median
  rate of each and the median of the paired time ratios. Information:
  two cores shared with other work make this row noisy, the session rows are
  the precise ones.

Then, for information, one 1 MiB JSON message: bytes framed and time, off vs on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Callable, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tether_sync import TetherClient, frames  # noqa: E402
from tether_sync.protocol.deflate import DeflateParams, accept_response, client_offer  # noqa: E402
from tether_sync.protocol.session import Continuity, Session, SessionConfig  # noqa: E402

LIMIT = 0.05
HOST = "127.0.0.1"
PARAMS = accept_response("permessage-deflate; client_max_window_bits=12", 12)


class Item:
    """What the session frames: a ``Delivery``'s slots."""

    __slots__ = ("_data", "_op", "_seq", "id")

    def __init__(self, data: bytes) -> None:
        self.id = "x"
        self._op = frames.OP_TEXT
        self._data = data
        self._seq = 0


def open_session(deflate: Optional[DeflateParams]) -> Session:
    config = SessionConfig(protocol="raw", heartbeat=None, extensions=(), deflate=deflate)
    session = Session(config, Continuity("bench"), 0.0)
    session.start(0.0)
    session.events()  # Opened
    drain(session)
    return session


def drain(session: Session) -> int:
    total = 0
    while True:
        n = len(session.data_to_send())
        if not n:
            return total
        session.sent(n)
        total += n


def bench_session(
    size: int, number: int, repeat: int, control: bool = False
) -> Tuple[float, float, float]:
    """``size``-byte messages in batches of 512, off and on.

    Returns:
        The best seconds per message off and on, and the median of the paired
        ratios on/off (each pair measured back to back, alternating which goes
        first): on a shared machine the ratio is the steadier number.
        ``control``: both sessions off (an A/A run: the noise floor).
    """
    body = json.dumps({"type": "publish", "channel": "prices", "payload": "x" * size})
    batch = [Item(body.encode()[:size]) for _ in range(512)]
    off, on = open_session(None), open_session(None if control else PARAMS)

    def run(session: Session) -> Callable[[], None]:
        def once() -> None:
            session.send(batch)
            drain(session)
            session.events()  # Written events, as the loop collects them

        return once

    run_off, run_on = run(off), run(on)
    t_off: List[float] = []
    t_on: List[float] = []
    for i in range(repeat):
        if i % 2:
            b = timeit.timeit(run_on, number=number)
            a = timeit.timeit(run_off, number=number)
        else:
            a = timeit.timeit(run_off, number=number)
            b = timeit.timeit(run_on, number=number)
        t_off.append(a)
        t_on.append(b)
    per = number * len(batch)
    ratio = statistics.median(b / a for a, b in zip(t_off, t_on))
    return min(t_off) / per, min(t_on) / per, ratio


# --------------------------------------------------------------------------- client


def sink_main(argv: List[str]) -> int:
    """``--sink``: sink_server.py whose handshake also accepts permessage-deflate."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import base64
    import hashlib
    import socket

    import sink_server

    def handshake(sock: socket.socket) -> Tuple[str, bytes]:
        # sink_server.handshake, plus the answer websockets gives to our offer.
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        key = fields.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1(key.encode() + sink_server.GUID).digest()).decode()
        answer = ""
        if "permessage-deflate" in fields.get("sec-websocket-extensions", ""):
            answer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=12\r\n"
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{answer}\r\n"
            ).encode()
        )
        return lines[0].split(" ")[1], rest

    sink_server.handshake = handshake
    return int(sink_server.main(argv))


class Sink:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--sink"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"sink did not start: {line!r}")
        self.base = f"ws://{HOST}:{int(line.split()[1])}"

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def send_client(base: str, n: int, compression: Optional[str], payload: str) -> float:
    """Messages per second from the first send() until the sink has every byte."""
    expected = n * (6 + len(payload))  # 2 header + 4 mask key + payload (< 126 B)
    client = TetherClient(
        f"{base}/sink?bytes={expected}",
        protocol="raw",
        heartbeat=False,
        reconnect=False,
        queue={"max_size": n + 10, "overflow": "reject"},
        compression=compression,
    )
    try:
        sub = client.subscribe("default")
        client.connect(wait=True, timeout=10)
        # No public view of the negotiation: peek, so a run that did not agree fails.
        io_loop = getattr(getattr(client, "_loop", None), "_loop", None)  # Engine -> IoLoop
        session = getattr(io_loop, "session", None)
        if session is not None:
            agreed = session.config.deflate is not None
            assert agreed == bool(compression), "the sink's answer was not what we offered"
        send = client.send
        t0 = time.perf_counter()
        for _ in range(n):
            send(payload)
        answer = sub.get(timeout=120)
        t1 = time.perf_counter()
    finally:
        client.close(timeout=5)
    if answer != f"done:{expected}":
        raise RuntimeError(f"sink answered {answer!r}")
    return n / (t1 - t0)


def bench_client(n: int, rounds: int) -> Tuple[float, float, float]:
    sink = Sink()
    try:
        payload = "x" * 64
        send_client(sink.base, n // 10, None, payload)  # warm up
        off: List[float] = []
        on: List[float] = []
        for i in range(rounds):
            order = (None, "deflate") if i % 2 == 0 else ("deflate", None)
            for compression in order:
                rate = send_client(sink.base, n, compression, payload)
                (on if compression else off).append(rate)
        # Time ratio on/off per round (the rates' inverse), then the median.
        ratio = statistics.median(a / b for a, b in zip(off, on))
        return statistics.median(off), statistics.median(on), ratio
    finally:
        sink.stop()


# --------------------------------------------------------------------------- report


def bench_big() -> None:
    rows = [{"seq": i, "symbol": f"SYM{i % 97}", "bid": i * 0.5, "ok": True} for i in range(20000)]
    item = Item(json.dumps(rows, separators=(",", ":")).encode())
    for name, params in (("off", None), ("on", PARAMS)):
        session = open_session(params)
        t0 = time.perf_counter()
        session.send([item])
        size = drain(session)
        elapsed = time.perf_counter() - t0
        print(
            f"1 MiB JSON ({len(item._data)} B), compression {name:<3}: "
            f"{size} bytes framed in {elapsed * 1e3:.1f} ms"
        )


def main() -> int:
    if "--sink" in sys.argv:
        return sink_main([a for a in sys.argv[1:] if a != "--sink"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--only", default="session,client")
    args = parser.parse_args()
    only = set(args.only.split(","))
    number, repeat = (4, 20) if args.quick else (8, 300)
    ok = True
    print(f"offer: {client_offer()}; threshold 1024 B; below it nothing is compressed")
    if "session" in only:
        off, on, ratio = bench_session(64, number, repeat, control=True)
        print(
            f"control: off vs off,   64 B   off {off * 1e6:6.3f} us/msg  "
            f"off {on * 1e6:6.3f} us/msg  {(ratio - 1) * 100:+5.1f} %  (noise floor)"
        )
        for size in (20, 64, 200, 1000):
            off, on, ratio = bench_session(size, number, repeat)
            overhead = ratio - 1
            good = overhead <= LIMIT
            ok &= good
            print(
                f"session send path, {size:>4} B   off {off * 1e6:6.3f} us/msg  "
                f"on {on * 1e6:6.3f} us/msg  {overhead * 100:+5.1f} %  "
                f"{'ok' if good else 'OVER 5 %'}"
            )
    if "client" in only:
        n, rounds = (20_000, 2) if args.quick else (200_000, 6)
        off_rate, on_rate, ratio = bench_client(n, rounds)
        print(
            f"client send 64 B raw, {n} msgs  off {off_rate:,.0f} msg/s  "
            f"on {on_rate:,.0f} msg/s  {(ratio - 1) * 100:+5.1f} % time  "
            f"(median of {rounds} paired rounds, info)"
        )
    bench_big()
    if args.check and not ok:
        print("below-threshold overhead over 5 %")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
