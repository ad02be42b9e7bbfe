"""Chaos: kill -9 the server (or reset the connections) while one client sends at full speed.

DESIGN §5 / issue 11 "Done when": with acks, a kill at any moment loses nothing. A
``tether-sync serve`` process killed with kill -9 loses its session table, so the
messages it had accepted (and written to its ``--record`` file) but not acked yet
are resent and accepted again by the restarted process: those, and only those, may
arrive twice. With the server kept alive (its session table intact) and only the
connections reset, nothing is lost and nothing is duplicated.

The client sends with ``Queue(overflow="block")``: the default ``drop-oldest``
drops messages queued while the link is down once the bound is reached, by a
policy (each drop fails its ``Delivery``), which is not what this test measures.
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest

from tether_sync import Queue, Reconnect, TetherClient

pytestmark = pytest.mark.timeout(90)

COUNT = 5000
KILLS = 10
# After each hit the sender sends this many more (so the kill lands while send() runs),
# then waits for the next aim: 10 kills x (400 + 50) stay inside COUNT.
OVERRUN = 50
RESETS = 20
CHANNEL = "chaos"
LISTENING = re.compile(r"^tether-sync server listening on (ws://\S+)$")


# ---------------------------------------------------------------- the serve process


class ServeProcess:
    """``tether-sync serve --record FILE`` in a subprocess, restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.url = ""
        self.proc: Optional[subprocess.Popen[str]] = None
        self.records: List[Path] = []
        self._stderr: List[Any] = []

    def start(self) -> None:
        """Start one more server process (a new record file) and wait for it to listen."""
        for _ in range(20):  # a port still busy right after the kill: try again
            index = len(self.records)
            record = self.workdir / f"record-{index}.jsonl"
            err = open(self.workdir / f"serve-{index}-{len(self._stderr)}.err", "w")
            self._stderr.append(err)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tether_sync",
                    "serve",
                    "--port",
                    str(self.port),
                    "--record",
                    str(record),
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
            line = _read_line(proc, timeout=30)
            match = LISTENING.match(line)
            if match is None:
                assert proc.wait(timeout=10) == 1, f"serve failed: {line!r}"
                assert self.port, "the first start must not fail"
                continue
            self.proc = proc
            self.records.append(record)
            self.url = match.group(1)
            self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
            return
        raise AssertionError(f"could not restart the server on port {self.port}")

    def kill(self) -> None:
        """kill -9, and reap it."""
        proc = self.proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert proc.stdout is not None
        proc.stdout.close()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.kill()
        for err in self._stderr:
            err.close()

    def accepted(self) -> List[Tuple[int, int]]:
        """Every record line, in order over the processes: ``(process index, number)``."""
        out: List[Tuple[int, int]] = []
        for index, path in enumerate(self.records):
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                assert entry["channel"] == CHANNEL
                out.append((index, entry["payload"]["n"]))
        return out


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            proc.kill()
            raise AssertionError(f"serve printed nothing within {timeout}s")
    return proc.stdout.readline().rstrip("\n")


# ---------------------------------------------------------------- the sender


class Sender(threading.Thread):
    """A plain loop of ``send()``, with two ways to pick the moments of the faults.

    ``aim(ahead)``: ``hit`` is set once ``ahead`` more messages were handed to
    ``send()`` (the test thread then acts). ``hooks``: message counts at which the
    sender thread itself calls ``on_hook(k)``, right after that ``send()`` (or at
    the first later one made while the client is open on a connection no earlier
    hook hit: one hook per ``send()``), with no thread hop.

    Each Delivery's resolution time is kept (``done_at[n]``), and its error if any.
    """

    def __init__(
        self,
        client: TetherClient,
        hooks: Sequence[int] = (),
        on_hook: Optional[Callable[[int], None]] = None,
    ) -> None:
        super().__init__(name="chaos-sender", daemon=True)
        self.client = client
        self.lock = threading.Lock()
        self.sent = 0
        self.target = -1
        self.stop_at = -1  # after a hit, pause here until the next aim()
        self.resume = threading.Event()
        self.hit = threading.Event()
        self.hooks = list(hooks)
        self.on_hook = on_hook
        self.fired: List[int] = []  # message counts at which on_hook ran
        self.done_at: List[Optional[float]] = [None] * COUNT
        self.errors: Dict[int, BaseException] = {}
        self.all_done = threading.Event()
        self._resolved = 0
        self.error: Optional[BaseException] = None

    def aim(self, ahead: int) -> None:
        """Trip ``hit`` once ``ahead`` more messages were handed to ``send()``."""
        with self.lock:
            self.target = self.sent + ahead
            self.stop_at = -1
            self.hit.clear()
            self.resume.set()

    def run(self) -> None:
        client = self.client
        try:
            for n in range(COUNT):
                if 0 <= self.stop_at <= n:
                    # Ran OVERRUN past the mark without a new aim: wait for it, so the
                    # kills land inside COUNT (without this pause a sender kept going
                    # while the server was down, and 10 kills could need more than
                    # COUNT messages: "kill 9: the sender is stuck at 5000").
                    self.resume.wait(60)
                delivery = client.send({"n": n}, channel=CHANNEL)
                delivery.add_done_callback(lambda f, n=n: self._resolve(n, f))
                with self.lock:
                    self.sent = n + 1
                    if n + 1 >= self.target > 0:
                        self.target = -1
                        self.stop_at = n + 1 + OVERRUN  # the kill lands mid-send
                        self.resume.clear()
                        self.hit.set()
                hooks = self.hooks
                if hooks and n + 1 >= hooks[0]:
                    stats = client.stats()
                    # Open, on a connection the previous fault did not already hit.
                    if stats.state == "open" and stats.reconnects >= len(self.fired):
                        assert self.on_hook is not None
                        self.on_hook(len(self.fired))
                        self.fired.append(n + 1)
                        del hooks[0]
        except BaseException as exc:
            self.error = exc
            self.hit.set()

    def _resolve(self, n: int, future: Any) -> None:
        now = time.monotonic()
        error = future.exception()
        with self.lock:
            self.done_at[n] = now
            if error is not None:
                self.errors[n] = error
            self._resolved += 1
            if self._resolved == COUNT:
                self.all_done.set()


def _on_open(client: TetherClient) -> threading.Event:
    opened = threading.Event()
    client.on("open", lambda event: opened.set())
    return opened


# ---------------------------------------------------------------- the tests


def test_kill_9_at_10_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    serve = ServeProcess(tmp_path)
    serve.start()
    client = TetherClient(
        serve.url,
        reconnect=Reconnect(base_delay=0.05, max_delay=0.5),
        queue=Queue(overflow="block"),
    )
    sender = Sender(client)
    kill_times: List[float] = []
    try:
        opened = _on_open(client)
        client.connect(wait=True, timeout=10)
        sender.aim(rng.randint(100, 400))
        sender.start()
        for kill in range(KILLS):
            assert sender.hit.wait(30), f"kill {kill}: the sender is stuck at {sender.sent}"
            assert sender.error is None, sender.error
            with sender.lock:
                sent = sender.sent
            assert sent < COUNT, f"kill {kill} would come after the last send (seed {seed})"
            stats = client.stats()
            opened.clear()
            kill_times.append(time.monotonic())
            serve.kill()
            print(
                f"kill {kill}: sent {sent}, acked {stats.acked}, unacked {stats.unacked}, "
                f"queued {stats.queue_depth}"
            )
            serve.start()
            # The next kill: some messages after the client is back on the new process.
            assert opened.wait(30), f"kill {kill}: the client did not reconnect"
            sender.aim(rng.randint(50, 400))
        sender.aim(COUNT)  # no more kills: the rest without a pause
        sender.join(60)
        assert not sender.is_alive() and sender.error is None, sender.error
        assert sender.all_done.wait(30), "not every Delivery resolved"
        assert sender.errors == {}, dict(list(sender.errors.items())[:5])
        stats = client.stats()
        assert client.close(timeout=10) is True
    finally:
        client.close(timeout=1)
        serve.stop()

    accepted = serve.accepted()
    first: List[int] = []
    seen_in: Dict[int, int] = {}  # number -> process that accepted it first
    duplicates: List[int] = []
    per_process: Dict[int, set[int]] = {}
    for index, n in accepted:
        numbers = per_process.setdefault(index, set())
        assert n not in numbers, f"process {index} accepted {n} twice (its dedupe failed)"
        numbers.add(n)
        if n in seen_in:
            duplicates.append(n)
            # Only a message the dead process had accepted and not acked comes again:
            # the process that took it first is an earlier one, killed before the
            # client saw the ack (its Delivery resolved after that kill).
            killed_at = kill_times[seen_in[n]]
            assert seen_in[n] < index
            done_at = sender.done_at[n]
            assert done_at is not None and done_at > killed_at, (
                f"{n} was acked before process {seen_in[n]} died, yet it came again"
            )
        else:
            seen_in[n] = index
            first.append(n)
    assert first == list(range(COUNT)), "a number is missing, or first arrivals are out of order"
    assert stats.resent >= len(duplicates)
    print(
        f"\nCHAOS kill -9 x{KILLS} (seed {seed}): {COUNT} sent, 0 lost, "
        f"{len(duplicates)} duplicate(s) (accepted but not acked when the process died), "
        f"{stats.resent} resent, {len(serve.records)} processes"
    )


def test_connection_resets_20_times_lose_and_duplicate_nothing(make_server: Any) -> None:
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    server = make_server(port=0)
    # A window (queue bound) of 200: during each outage the sender runs on until
    # the window is full, so with the default 1000 twenty resets would not fit in
    # 5,000 messages.
    client = TetherClient(
        server.url,
        reconnect=Reconnect(base_delay=0.05, max_delay=0.5),
        queue=Queue(max_size=200, overflow="block"),
    )
    how = {"drop_all": 0, "force_close_all": 0}
    reset_counts: List[int] = []

    def reset(k: int) -> None:
        # On the sender thread, between two send() calls: the client is open,
        # with a full window of unacked messages in flight.
        if rng.random() < 0.5:
            how["drop_all"] += 1
            reset_counts.append(server.drop_all())
        else:
            how["force_close_all"] += 1
            reset_counts.append(server.force_close_all())

    moments = sorted(rng.sample(range(50, COUNT - 1000), RESETS))
    sender = Sender(client, hooks=moments, on_hook=reset)
    try:
        client.connect(wait=True, timeout=10)
        sender.start()
        sender.join(60)
        assert not sender.is_alive() and sender.error is None, sender.error
        assert len(sender.fired) == RESETS, f"resets after sends {sender.fired} (seed {seed})"
        assert all(count >= 1 for count in reset_counts), reset_counts
        assert sender.all_done.wait(30), "not every Delivery resolved"
        assert sender.errors == {}, dict(list(sender.errors.items())[:5])
        assert client.close(timeout=10) is True
        stats = client.stats()
    finally:
        client.close(timeout=1)
    payloads = server.data_payloads(CHANNEL)
    assert [p["n"] for p in payloads] == list(range(COUNT)), f"seed {seed}"
    assert stats.acked == COUNT
    print(
        f"\nCHAOS resets x{RESETS} (seed {seed}, {how}, after sends {sender.fired}): 0 lost, "
        f"0 duplicated at the application, {server.duplicates_dropped} duplicate(s) dropped "
        f"by the server, {stats.resent} resent, {stats.reconnects} reconnects"
    )
