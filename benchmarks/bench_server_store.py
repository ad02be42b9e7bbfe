"""A node on Redis against the same node on MemoryStore (issue 20), side by side.

Run from the repository root (needs ``redis-server`` on PATH and redis-py)::

    python benchmarks/bench_server_store.py              # 50,000 messages per run
    python benchmarks/bench_server_store.py -n 100000 --repeat 3

Starts a ``redis-server`` on a free loopback port (append-only, ``appendfsync
everysec``: Redis' default durability, a temp dir) and, as subprocesses, two nodes
of each kind: a user's python-websockets server around a ``Hub`` (the README's
example, ``on_message`` counting), and the bundled ``tether-sync serve`` (which
also echoes every message back: a batch's echoes and its ack leave in one
write, and the client reads them); one of each with ``--store redis://...``,
one with the default MemoryStore.
Each run: ``TetherClient(url)`` with default options sends N tether envelopes
(64-byte payload) in a loop and ``close()``\\ s, which returns once every message
was acknowledged; the rate counts from the first ``send()`` until then. Runs go
in ABBA order so drift cancels out; the medians are printed.

Besides the rates it prints the server's CPU per message (the node, plus
redis-server for the Redis node) and the client's (this process), which the
machine's load changes much less than the rates.

Targets: >= 20,000 acknowledged msg/s on Redis, and >= 50 % of MemoryStore's rate.
``tether-sync serve`` on Redis, 4c7a0d7 against the echo-path work after it (same
sittings, ``--repeat 3``, load average 5-7 on 2 CPUs from other jobs): 11.0, 8.8
and 9.0 k/s before; 21.8, 15.9, 17.2 and 18.5 k/s after (medians of 6 runs): at
that load not reliably above 20 k/s. Server CPU per message 55-58 -> 28-33 us on
Redis and 47-55 -> 22-28 us in memory, as low as the Hub node's (21-28 us). The
client spends 12-14 us per message against it (about 4 us more than against the
Hub node: it reads the echoes).
On a quiet machine (load average 1.4, 6065e4b, ``--repeat 3``; min / median / max
of 6 runs): ``tether-sync serve`` 28.4 / 33.8 / 37.4 k/s on Redis, 47.6 k/s median on
MemoryStore (70.9 %); the Hub node 37.4 / 41.3 / 55.6 k/s on Redis, 62.7 k/s on
MemoryStore (65.9 %). Both meet both targets.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tether_sync import TetherClient

PAYLOAD = "0123456789abcdef" * 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: str) -> Tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "yes", "--dir", directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            threading.Event().wait(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def serve(args: List[str]) -> Tuple[subprocess.Popen[str], str]:
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


HUB_NODE = """
import asyncio, sys
from websockets.asyncio.server import serve
from tether_sync.server import Hub, MemoryStore
store = MemoryStore()
if len(sys.argv) > 1:
    from tether_sync.server import RedisStore
    store = RedisStore(sys.argv[1])
count = 0
def on_message(msg):
    global count
    count += 1
hub = Hub(store=store, on_message=on_message)
async def main():
    async with serve(hub.serve_websockets, "127.0.0.1", 0) as server:
        print(f"listening on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", flush=True)
        await server.serve_forever()
asyncio.run(main())
"""


def hub_node(args: List[str]) -> Tuple[subprocess.Popen[str], str]:
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", HUB_NODE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"ws://\S+", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"hub node did not start: {line!r}")
    return proc, match.group(0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process used so far (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(url: str, n: int, pids: Sequence[int] = ()) -> Tuple[float, float, float]:
    """Send ``n`` and close: the rate; CPU seconds per message of ``pids`` and of the client."""
    client = TetherClient(url)
    client.connect(wait=True, timeout=10)
    cpu0 = sum(cpu_seconds(pid) for pid in pids)
    own0 = time.process_time()  # this process: the client's threads
    t0 = time.perf_counter()
    for _ in range(n):
        client.send(PAYLOAD, channel="bench")
    ok = client.close(timeout=300)
    t1 = time.perf_counter()
    own1 = time.process_time()
    cpu1 = sum(cpu_seconds(pid) for pid in pids)
    if not ok:
        raise RuntimeError("close() did not get every ack")
    if client.stats().acked != n:
        raise RuntimeError(f"acked {client.stats().acked} of {n}")
    return n / (t1 - t0), (cpu1 - cpu0) / n, (own1 - own0) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=2, help="ABBA rounds (2 runs of each)")
    parser.add_argument(
        "--only", choices=("hub", "serve"), help="only the Hub node or only tether-sync serve"
    )
    args = parser.parse_args()
    print(f"send {args.n:,} tether envelopes then close(), one client, acknowledged")
    print(f"load average before: {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, redis_url = start_redis(tmp)
        try:
            for title, start in (
                ("Hub in a websockets server", hub_node),
                ("tether-sync serve", serve),
            ):
                if args.only is not None and (start is serve) != (args.only == "serve"):
                    continue
                store_args = ["--store", redis_url] if start is serve else [redis_url]
                compare(title, start(store_args), start([]), args.n, args.repeat, redis_proc.pid)
        finally:
            redis_proc.terminate()
            redis_proc.wait(10)
    print(f"load average after: {_load()}")
    return 0


Node = Tuple[subprocess.Popen[str], str]


def compare(
    title: str, on_redis: Node, in_memory: Node, n: int, repeat: int, redis_pid: int
) -> None:
    redis: List[float] = []
    memory: List[float] = []
    # Server-side CPU per message (the node, plus redis-server for the Redis
    # node): what the machine's load does not change, unlike the rates.
    redis_cpu: List[float] = []
    memory_cpu: List[float] = []
    # The client's CPU per message (it also reads the bundled server's echoes).
    client_cpu: List[float] = []

    def on(node: Node, rates: List[float], cpus: List[float], *pids: int) -> None:
        rate, cpu, own = run(node[1], n, [node[0].pid, *pids])
        rates.append(rate)
        cpus.append(cpu)
        client_cpu.append(own)

    try:
        for _ in range(repeat):  # ABBA: drift cancels out
            on(on_redis, redis, redis_cpu, redis_pid)
            on(in_memory, memory, memory_cpu)
            on(in_memory, memory, memory_cpu)
            on(on_redis, redis, redis_cpu, redis_pid)
    finally:
        for proc, _ in (on_redis, in_memory):
            proc.terminate()
            proc.wait(10)
    for name, rates in (("redis", redis), ("memory", memory)):
        print(f"  ({name}: {', '.join(f'{r / 1000:.1f}' for r in rates)} k/s)", file=sys.stderr)
    m_redis, m_memory = statistics.median(redis), statistics.median(memory)
    c_redis, c_memory = statistics.median(redis_cpu), statistics.median(memory_cpu)
    print(f"{title}:  (min / median / max of {len(redis)} runs each)")
    print(f"  on MemoryStore               {_spread(memory)} k/s")
    print(f"  on Redis                     {_spread(redis)} k/s   (target >= 20 k/s)")
    print(f"  Redis / MemoryStore          {100 * m_redis / m_memory:6.1f} %   (target >= 50 %)")
    print(
        f"  server CPU per message       {c_memory * 1e6:5.1f} us in memory, "
        f"{c_redis * 1e6:5.1f} us on Redis (node + redis-server): "
        f"{1 / c_memory / 1000:.0f} k/s and {1 / c_redis / 1000:.0f} k/s per free core"
    )
    c_client = statistics.median(client_cpu)
    print(
        f"  client CPU per message       {c_client * 1e6:5.1f} us "
        f"({1 / c_client / 1000:.0f} k/s per free core)"
    )


def _spread(rates: List[float]) -> str:
    low, mid, high = min(rates), statistics.median(rates), max(rates)
    return f"{low / 1000:5.1f} / {mid / 1000:5.1f} / {high / 1000:5.1f}"


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


if __name__ == "__main__":
    sys.exit(main())
