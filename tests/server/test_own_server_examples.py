"""``examples/own_server_*.py`` (the README's "Reliable delivery on your own server") run.

Each is started as its own process, a real ``TetherClient`` sends with acks, and
the example's ``on_message`` prints every message once.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List

import pytest

from tether_sync import TetherClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class Example:
    """An example script as a subprocess, its stdout lines in a queue."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            # This checkout's tether_sync, whatever is installed.
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 20.0) -> str:
        return self.lines.get(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def examples() -> Iterator[List[Example]]:
    started: List[Example] = []
    yield started
    for example in started:
        example.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", ["own_server_websockets.py", "own_server_fastapi.py"])
def test_the_example_acks_every_send_and_handles_each_once(
    script: str, examples: List[Example]
) -> None:
    if script.endswith("fastapi.py"):
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
    example = Example(script, str(_free_port()))
    examples.append(example)
    match = re.search(r"ws://\S+", example.next_line())
    assert match is not None
    client = TetherClient(match.group(0), reconnect={"base_delay": 0.05, "max_delay": 0.5})
    try:
        client.connect(wait=True, timeout=20)  # uvicorn may still be binding: retried
        deliveries = [client.send({"n": n}, channel="orders") for n in range(3)]
        for delivery in deliveries:
            delivery.result(timeout=10)  # resolved by the server's ack
        assert client.stats().acked == 3
        session = client.stats().session_id
    finally:
        assert client.close(timeout=5) is True
    printed = [example.next_line() for _ in range(3)]
    assert printed == [f"orders: {{'n': {n}}} (session {session}, seq {n + 1})" for n in range(3)]


def test_the_own_server_guide_shows_the_examples_as_they_are() -> None:
    """docs/guides/own-server.rst shows each example file verbatim (this file runs them)."""
    guide = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "own-server.rst").read_text(
        encoding="utf-8"
    )
    for name in ("own_server_fastapi.py", "own_server_websockets.py"):
        assert f"examples/{name}" in guide
        source = (Path(__file__).resolve().parents[2] / "examples" / name).read_text(
            encoding="utf-8"
        )
        body = source.split('"""', 2)[2] if source.startswith('"""') else source
        indented = "\n".join(("    " + line) if line else "" for line in body.strip().splitlines())
        assert indented in guide, f"{name} differs from its copy in the guide"
