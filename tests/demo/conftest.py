"""Fixtures for the demo, ``connect`` and examples tests: subprocesses read line by line.

Every wait is on a queue or a process with a timeout; nothing sleeps.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PANEL_URL = re.compile(r"control panel on (http://\S+/)")


class LineQueue:
    """Reads a text pipe on a thread; tests wait for a matching line with a timeout."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.name = name
        self.seen: List[str] = []
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        self._thread = threading.Thread(
            target=self._pump, args=(stream,), name=f"read-{name}", daemon=True
        )
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line.rstrip("\n"))
        except ValueError:  # closed under us at teardown
            pass
        finally:
            self._lines.put(None)

    def expect(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Consume lines until one matches; fail with what was seen on timeout or EOF."""
        deadline = _deadline(timeout)
        while True:
            remaining = deadline()
            try:
                line = self._lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(
                    f"no matching line on {self.name} within {timeout}s; saw:\n"
                    + "\n".join(self.seen[-40:])
                ) from None
            if line is None:
                self._lines.put(None)  # EOF stays visible to later calls
                seen = "\n".join(self.seen[-40:])
                raise AssertionError(f"{self.name} ended without a matching line; saw:\n{seen}")
            self.seen.append(line)
            if predicate(line):
                return line


def _deadline(timeout: float) -> Callable[[], float]:
    import time

    end = time.monotonic() + timeout
    return lambda: end - time.monotonic()


class Proc:
    """A ``python ...`` subprocess with line-buffered text pipes."""

    def __init__(self, args: List[str], **kwargs: Any) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.args = args
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
            cwd=str(REPO),
            env=env,
            **kwargs,
        )
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self.out = LineQueue(self.popen.stdout, "stdout")
        self.err = LineQueue(self.popen.stderr, "stderr")

    def send_line(self, text: str) -> None:
        stdin = self.popen.stdin
        assert stdin is not None
        stdin.write(text + "\n")
        stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        """SIGINT, then kill if it is still there after a few seconds."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.close_stdin()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    """Factory: ``spawn("-m", "tether_sync", ...)`` runs Python with those arguments."""
    procs: List[Proc] = []

    def factory(*args: str) -> Proc:
        proc = Proc(list(args))
        procs.append(proc)
        return proc

    yield factory
    for proc in procs:
        proc.stop()


@pytest.fixture
def demo(spawn: Callable[..., Proc]) -> Iterator[Tuple[Proc, str]]:
    """A running ``tether-sync demo`` on free ports: ``(process, panel_url)``."""
    proc = spawn("-m", "tether_sync", "demo", "--port", "0", "--server-port", "0")
    line = proc.out.expect(lambda text: PANEL_URL.search(text) is not None, timeout=20)
    match = PANEL_URL.search(line)
    assert match is not None
    yield proc, match.group(1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright.

    Missing Chromium or Playwright skips the test locally, and fails it when ``CI``
    is set: in CI the panel test must run.
    """
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the machine
        problem = f"the playwright package is not installed ({exc})"
    if problem is None and not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {problem}")
        pytest.skip(problem)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()
