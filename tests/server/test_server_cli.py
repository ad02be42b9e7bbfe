"""``python -m tether_sync serve`` runs the server in the foreground and stops on signals."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time

import pytest
import websocket

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

LISTENING = re.compile(r"^tether-sync server listening on (ws://127\.0\.0\.1:(\d+)/)$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tether_sync", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One stdout line, waiting at most ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        remaining = deadline - time.monotonic()
        if not selector.select(max(remaining, 0)):
            proc.kill()
            raise AssertionError(f"no output within {timeout}s; stderr: {proc.stderr.read()}")
    return proc.stdout.readline().rstrip("\n")


def _ping(url: str) -> None:
    ws = websocket.create_connection(url, timeout=5)
    try:
        ws.send(json.dumps({"type": "tether:ping", "ts": 42}))
        assert json.loads(ws.recv()) == {"type": "tether:pong", "ts": 42}
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("signum", "port"),
    [(signal.SIGINT, "free"), (signal.SIGTERM, "free"), (signal.SIGTERM, "0")],
)
def test_serve_answers_then_exits_0_on_signal(signum, port):
    wanted = _free_port() if port == "free" else 0
    proc = _start("--port", str(wanted))
    try:
        line = _read_line(proc, timeout=20)
        match = LISTENING.match(line)
        assert match, line
        if wanted:
            assert int(match.group(2)) == wanted
        _ping(match.group(1))
        # A connection left open must not keep the process alive.
        lingering = websocket.create_connection(match.group(1), timeout=5)
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        lingering.close()
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_serve_require_auth_and_busy_port():
    proc = _start("--port", "0", "--require-auth", "--verbose")
    try:
        match = LISTENING.match(_read_line(proc, timeout=20))
        assert match
        ws = websocket.create_connection(match.group(1), timeout=5)
        ws.send(json.dumps({"channel": "c", "type": "data", "payload": 1, "id": "d"}))
        assert json.loads(ws.recv()) == {
            "type": "tether:error",
            "error": "auth required",
            "id": "d",
        }
        ws.close()

        busy = subprocess.run(
            [sys.executable, "-m", "tether_sync", "serve", "--port", match.group(2)],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert busy.returncode == 1
        assert "cannot listen" in busy.stderr

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "connection 1 opened" in proc.stderr.read()  # --verbose logs connections
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
