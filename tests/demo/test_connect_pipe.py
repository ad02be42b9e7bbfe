"""``tether-sync connect`` as the end of a pipe: nothing piped in is dropped, and a loss
is visible in the exit status and the summary (issue 10).

NEEDS THE NEW CORE: these tests use ``queue={"overflow": "block"}`` (``send()`` waits for
room in every state). Until the core accepts it, ``connect`` exits 1 with
"queue.overflow must be one of ..." and they fail; the lead runs them after merging it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import pytest

from .conftest import REPO

UNDELIVERED = re.compile(r"^\* (\d+) of (\d+) lines not delivered")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("NO_COLOR", None)
    return env


# NEEDS THE NEW CORE (queue overflow "block").
@pytest.mark.timeout(90)
def test_seq_20000_piped_all_echoed_exit_0(tether_server: Any) -> None:
    command = (
        f"seq 1 20000 | {shlex.quote(sys.executable)} -m tether_sync connect "
        f"{shlex.quote(tether_server.url)}"
    )
    proc = subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=80, cwd=REPO, env=_env()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    echoed = proc.stdout.splitlines()
    assert echoed == [f"[default] {n}" for n in range(1, 20001)]
    assert tether_server.data_payloads("default") == list(range(1, 20001))
    assert "* all 20000 lines delivered" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr


# NEEDS THE NEW CORE (queue overflow "block": send() waits for room, so reading stdin
# stops while the server does not read; the stall ends with the count after --wait).
@pytest.mark.timeout(60)
def test_server_that_stops_reading_exits_1_naming_the_undelivered_count(
    tether_server: Any,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether_sync", "connect", tether_server.url, "--wait", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=_env(),
    )
    assert proc.stdin is not None and proc.stderr is not None
    try:
        line = proc.stderr.readline()  # the first status line: connected
        assert line.startswith("* connected to"), line
        tether_server.pause_reading(True)
        # 20,000 lines of 1 KB: far more than the queue plus every socket buffer.
        padding = "x" * 1000

        def feed() -> None:
            try:
                for n in range(1, 20001):
                    proc.stdin.write(f"{n} {padding}\n")  # type: ignore[union-attr]
                proc.stdin.close()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError, ValueError):
                pass  # connect gave up and stopped reading: expected

        writer = threading.Thread(target=feed, daemon=True)
        started = time.monotonic()
        writer.start()
        code = proc.wait(timeout=30)
        took = time.monotonic() - started
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        tether_server.pause_reading(False)
    assert code == 1, err
    assert took < 15, f"took {took:.1f}s with --wait 2"
    counts = [UNDELIVERED.match(text) for text in err.splitlines()]
    found = [m for m in counts if m]
    assert found, err
    undelivered, lines = int(found[0].group(1)), int(found[0].group(2))
    assert 0 < undelivered <= lines <= 20000
    assert "Traceback" not in err


def test_usage_errors_exit_2_without_a_traceback(spawn: Callable[..., Any]) -> None:
    for argv in (
        ["connect", "ws://127.0.0.1:99999/"],
        ["connect", "http://127.0.0.1:8765/"],
        ["connect", "ws://127.0.0.1:8765/", "-H", "no colon"],
        ["connect", "ws://127.0.0.1:8765/", "--wait", "soon"],
        ["connect", "ws://127.0.0.1:8765/", "--ca-file", "/nonexistent/ca.pem"],
        ["connect", "ws://127.0.0.1:8765/", "--compression", "gzip"],
        ["demo", "--port", "65536"],
        ["serve", "--port", "http"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "tether_sync", *argv],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=REPO,
            env=_env(),
        )
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "usage: tether-sync" in proc.stderr
        assert "Traceback" not in proc.stderr, (argv, proc.stderr)
