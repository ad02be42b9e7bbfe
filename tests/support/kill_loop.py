"""kill -9 a sender process mid-stream, again and again (the durable outbox tests).

The sender prints each number once its ``send()`` (or ``send_many()``) has
returned, that is once it is committed to the outbox file. Each run starts at
the number after the last one known committed, is killed once it has printed
one past a random target, and the next run takes over from the same file.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
from typing import Callable, List, Tuple

from tether_sync.server import TetherServer


def kill_mid_send(
    start: Callable[[int], subprocess.Popen[str]],
    server: TetherServer,
    ahead: Tuple[int, int],
    runs: int = 3,
    channel: str = "d",
) -> int:
    """Start a sender with ``start(first_number)`` and kill it ``runs`` times.

    Args:
        start: Starts the sender process at a number (its stdout a text pipe).
        server: Where the numbers go (on ``channel``).
        ahead: The random target of each run, as numbers past the last committed.
        runs: How many runs are killed.
        channel: The channel the sender sends on.

    Returns:
        The highest number known committed: the last one a run printed, or the
        server already has (a send acked just before the kill was never printed).
    """
    rng = random.Random()
    committed = -1
    for run in range(runs):
        proc = start(committed + 1)
        assert proc.stdout is not None
        target = committed + rng.randint(*ahead)
        lines: List[str] = []
        done = threading.Event()

        def read(
            p: subprocess.Popen[str] = proc,
            lines: List[str] = lines,
            target: int = target,
            done: threading.Event = done,
        ) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                lines.append(line.strip())
                if line.strip().isdigit() and int(line) >= target:
                    done.set()
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert done.wait(60), f"run {run}: the sender stalled"
        proc.send_signal(signal.SIGKILL)  # mid-send, nothing flushed or closed
        proc.wait(10)
        reader.join(5)
        numbers = [int(x) for x in lines if x.isdigit()]
        assert numbers, f"run {run} sent nothing"
        committed = max([*numbers, *server.data_payloads(channel)])
    return committed
