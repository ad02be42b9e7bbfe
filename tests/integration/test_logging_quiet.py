"""Logging (DESIGN §8): silent unless the application configures it; structured fields when it does.

A script in a subprocess (so the test's own logging set-up cannot hide
anything) hits a refused port, survives a kill -9 of a real server
subprocess, and sees a channel that cannot be recovered after the restart:
each of those logs a WARNING in the library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, logging, socket, sys, threading
    from tether_sync import TetherClient
    from tests.support.serve_process import ServeProcess

    if sys.argv[1] == "json":
        class JsonFormatter(logging.Formatter):
            def format(self, record):
                out = {"level": record.levelname, "logger": record.name,
                       "message": record.getMessage()}
                for key in ("client", "endpoint", "attempt", "cause"):
                    out[key] = getattr(record, key, "MISSING")
                return json.dumps(out)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)

    # 1. A refused port: two failed attempts, then the client gives up.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = threading.Event()
    client = TetherClient(
        f"ws://user:hunter2@127.0.0.1:{port}/ws?token=s3cr3t-value",
        reconnect={"base_delay": 0.01, "max_delay": 0.02, "max_attempts": 2},
    )
    client.on("state_change", lambda e: e.current == "closed" and closed.set())
    client.connect()
    assert closed.wait(20), "the client did not give up"
    client.close(5)

    # 2. A server killed with SIGKILL and started again on the same port,
    # 3. where the channel's history is gone: recovery fails.
    server = ServeProcess(["--broadcast"]).start()
    got, recovered = threading.Event(), threading.Event()
    client = TetherClient(server.url, reconnect={"base_delay": 0.05, "max_delay": 0.2})
    client.subscribe("chat", lambda payload: got.set())
    client.on("recovery", lambda e: recovered.set())
    client.connect(wait=True, timeout=10)
    client.send({"n": 1}, channel="chat")
    assert got.wait(10), "no published copy"
    server.kill()
    server.start()
    assert recovered.wait(30), "no recovery event"
    client.close(5)
    server.stop()
    print("DONE")
    """
)


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "scenario.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(script), mode],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=str(ROOT),
        env=env,
    )


@pytest.mark.timeout(120)
def test_nothing_on_stderr_without_logging_configured(tmp_path: Path) -> None:
    done = _run(tmp_path, "plain")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "DONE"
    # Three warnings were logged (attempt failed, client closed, recovery
    # failed); none of them may reach the terminal through logging.lastResort.
    assert done.stderr == ""


@pytest.mark.timeout(120)
def test_json_records_carry_client_endpoint_attempt_cause(tmp_path: Path) -> None:
    done = _run(tmp_path, "json")
    assert done.returncode == 0, done.stderr
    records: List[Dict[str, Any]] = [
        json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")
    ]
    ours = [r for r in records if r["logger"] == "tether_sync"]
    assert ours, done.stderr
    # Every record of the library's logger has all four fields.
    assert all(r[k] != "MISSING" for r in ours for k in ("client", "endpoint", "attempt", "cause"))

    failed = [r for r in ours if r["message"].startswith("connection attempt failed")]
    assert failed, [r["message"] for r in ours]
    first = failed[0]
    assert first["client"] == "tether-1"
    # Credentials redacted: the password and every query value masked.
    assert first["endpoint"].startswith("ws://user:***@127.0.0.1:")
    assert first["endpoint"].endswith("/ws?token=***")
    assert "ConnectionRefusedError" in first["cause"]
    assert isinstance(first["attempt"], int)

    lost = [r for r in ours if r["message"].startswith("connection closed")]
    assert lost and all(r["client"] == "tether-2" for r in lost)
    assert lost[0]["cause"].startswith("closed 1006")
    retry = [r for r in ours if r["message"].startswith("reconnecting")]
    assert retry and retry[0]["attempt"] == 1
    recovery = [r for r in ours if "could not be recovered" in r["message"]]
    assert recovery and recovery[0]["client"] == "tether-2"
    assert recovery[0]["endpoint"].startswith("ws://127.0.0.1:")
    # No field carries a credential (the messages are the redaction change's).
    for r in ours:
        for key in ("endpoint", "cause"):
            assert "hunter2" not in r[key] and "s3cr3t" not in r[key]
