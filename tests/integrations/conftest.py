"""Fixtures for the GUI, asyncio and WSGI integration tests.

* ``xvfb``: a real X server (Debian's ``Xvfb``) on a display it picks itself
  (``-displayfd``), started once per session; tests get ``DISPLAY`` set.
* ``spawn``: ``python ...`` subprocesses whose output is read line by line.
* ``screenshot``: saves the X screen as a PNG under ``tests/artifacts/``.

A missing Xvfb, tkinter, PySide6, gunicorn or Pillow skips the tests that need
it locally and fails them when ``CI`` is set: in CI they must run.
"""

from __future__ import annotations

import importlib
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"


def require(problem: Optional[str]) -> None:
    """Skip (locally) or fail (CI) when something the test needs is missing."""
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {problem}")
    pytest.skip(problem)


def require_module(name: str, install: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        require(f"{name} cannot be imported ({exc}); {install}")


class Xvfb:
    def __init__(self, display: str, proc: subprocess.Popen[bytes]) -> None:
        self.display = display
        self.proc = proc


@pytest.fixture(scope="session")
def xvfb_server() -> Iterator[Xvfb]:
    binary = shutil.which("Xvfb")
    require(None if binary else "Xvfb is missing (apt-get install xvfb)")
    assert binary is not None
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [binary, "-displayfd", str(write_fd), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=[write_fd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(write_fd)
    try:
        # Xvfb writes the display number once it accepts clients.
        ready, _, _ = select.select([read_fd], [], [], 20)
        number = os.read(read_fd, 32).decode().strip() if ready else ""
        if not number:
            proc.kill()
            _, err = proc.communicate(timeout=5)
            pytest.fail(f"Xvfb did not start: {err.decode(errors='replace')[-2000:]}")
        yield Xvfb(f":{number}", proc)
    finally:
        os.close(read_fd)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def xvfb(xvfb_server: Xvfb, monkeypatch: pytest.MonkeyPatch) -> Xvfb:
    """A running X server; ``DISPLAY`` points at it for this test."""
    monkeypatch.setenv("DISPLAY", xvfb_server.display)
    return xvfb_server


@pytest.fixture
def screenshot(xvfb: Xvfb) -> Callable[[str], Path]:
    """``screenshot("name")`` saves the whole X screen to tests/artifacts/name.png."""
    image_grab = require_module("PIL.ImageGrab", "pip install Pillow")

    def take(name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        image = image_grab.grab(xdisplay=xvfb.display)
        image.save(path)
        return path

    return take


class LineQueue:
    """Reads a text pipe on a thread; tests wait for a matching line with a timeout."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.name = name
        self.seen: List[str] = []
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

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
        end = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no matching line on {self.name} within {timeout}s; saw:\n"
                    + "\n".join(self.seen[-40:])
                ) from None
            if line is None:
                self._lines.put(None)
                seen = "\n".join(self.seen[-40:])
                raise AssertionError(f"{self.name} ended without a matching line; saw:\n{seen}")
            self.seen.append(line)
            if predicate(line):
                return line

    def rest(self, timeout: float = 10.0) -> List[str]:
        """Every line up to the end of the stream (the process must be exiting)."""
        try:
            self.expect(lambda _line: False, timeout)
        except AssertionError as exc:
            if "ended without" not in str(exc):
                raise
        return list(self.seen)


class Proc:
    """A subprocess with line-buffered text pipes, ``tether_sync`` from this tree."""

    def __init__(self, args: List[str], env: Optional[dict] = None, **kwargs: Any) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
        )
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
            cwd=str(REPO),
            env=full_env,
            **kwargs,
        )
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self.out = LineQueue(self.popen.stdout, "stdout")
        self.err = LineQueue(self.popen.stderr, "stderr")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send_line(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    """``spawn("examples/x.py", "arg", env={...})`` runs ``python`` with those arguments."""
    procs: List[Proc] = []

    def factory(*args: str, env: Optional[dict] = None) -> Proc:
        proc = Proc([sys.executable, *args], env=env)
        procs.append(proc)
        return proc

    yield factory
    for proc in procs:
        proc.stop()
