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
import urllib.request
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from tether_sync import TetherClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class Example:
    """An example script as a subprocess, its stdout lines in a queue."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
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
    port = _free_port()
    if script.endswith("fastapi.py"):
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
        # As its docstring says to run it.
        argv = ["-m", "uvicorn", "own_server_fastapi:app", "--app-dir", str(EXAMPLES)]
        example = Example(*argv, "--port", str(port), "--log-level", "warning")
        url = f"ws://127.0.0.1:{port}/ws"
    else:
        example = Example(str(EXAMPLES / script), str(port))
        match = re.search(r"ws://\S+", example.next_line())
        assert match is not None
        url = match.group(0)
    examples.append(example)
    news: queue.Queue[Any] = queue.Queue()
    client = TetherClient(url, reconnect={"base_delay": 0.05, "max_delay": 0.5})
    try:
        client.subscribe("news", news.put)
        client.connect(wait=True, timeout=20)  # uvicorn may still be binding: retried
        deliveries = [client.send({"n": n}, channel="orders") for n in range(3)]
        for delivery in deliveries:
            delivery.result(timeout=10)  # resolved by the server's ack
        assert client.stats().acked == 3
        if script.endswith("fastapi.py"):
            # The publish endpoint reaches the subscriber (once its subscribe is in place).
            while True:
                _post(f"http://127.0.0.1:{port}/publish/news?text=hi")
                try:
                    assert news.get(timeout=0.2) == "hi"
                    break
                except queue.Empty:
                    continue
    finally:
        assert client.close(timeout=5) is True
    printed = [example.next_line() for _ in range(3)]
    assert printed == [f"orders {{'n': {n}}} {n + 1}" for n in range(3)]


def _post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


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
