"""A ``tether-sync serve`` subprocess: a real server in its own process (own GIL).

Used where the in-process server would be the bottleneck or where the test
kills the server for real (SIGKILL).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, List, Optional, Sequence


class ServeProcess:
    """Starts ``python -m tether_sync serve --port PORT ARGS`` and reads its URL.

    Args:
        args: Extra ``serve`` arguments.
        port: 0 for a free port (the first start), or a fixed one (restarts).
        record: A path for ``--record`` (every accepted data message, one JSON line).
    """

    def __init__(self, args: Sequence[str] = (), port: int = 0, record: Optional[Path] = None):
        self.args = list(args)
        self.port = port
        self.record = record
        self.proc: Optional[subprocess.Popen[str]] = None
        self.url = ""

    def start(self, timeout: float = 15.0) -> ServeProcess:
        cmd = [sys.executable, "-m", "tether_sync", "serve", "--port", str(self.port)]
        if self.record is not None:
            cmd += ["--record", str(self.record)]
        proc = subprocess.Popen(
            [*cmd, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.proc = proc
        found: List[str] = []
        done = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                match = re.search(r"ws://\S+", line)
                if match and not found:
                    found.append(match.group(0))
                    done.set()
            done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(timeout) or not found:
            self.kill()
            raise RuntimeError("tether-sync serve did not start")
        self.url = found[0]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        return self

    def kill(self) -> None:
        """SIGKILL: no close frames, no flush, like a crash."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def records(self) -> List[Any]:
        """The accepted data records (``--record``), in arrival order."""
        assert self.record is not None
        if not self.record.exists():
            return []
        out = []
        for line in self.record.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # a line cut by a kill -9
        return out
