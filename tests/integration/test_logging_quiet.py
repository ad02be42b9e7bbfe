"""Logging (DESIGN §8): silent unless the application configures it; structured fields when it does.

A script in a subprocess (so the test's own logging set-up cannot hide
anything) hits a refused port, survives a kill -9 of a real server
subprocess, and sees a channel that cannot be recovered after the restart:
each of those logs a WARNING in the library.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

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


class _Collect(logging.Handler):
    """Keeps each record and its text formatted with a format naming the four fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []
        self.failures: List[str] = []
        self.cond = threading.Condition()
        self.setFormatter(logging.Formatter("%(client)s %(endpoint)s %(attempt)s %(cause)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.format(record)
        except Exception as exc:  # a format naming the fields must work for every record
            self.failures.append(f"{record.name}: {exc!r}")
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def wait(self, text: str, count: int = 1, timeout: float = 10.0) -> List[logging.LogRecord]:
        def found() -> List[logging.LogRecord]:
            return [r for r in self.records if text in r.getMessage()]

        with self.cond:
            self.cond.wait_for(lambda: len(found()) >= count, timeout)
            return found()


@pytest.fixture
def collected() -> Iterator[_Collect]:
    handler = _Collect()
    logger = logging.getLogger("tether_sync")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.timeout(60)
def test_records_off_the_io_thread_carry_their_clients_fields(
    collected: _Collect, dead_url: str
) -> None:
    """A callback that raised, on our dispatcher or the user's, and a send() that waits.

    On the code before, those records (logged on the dispatcher's or the
    caller's thread) had ``client`` None and ``endpoint`` "": a JSON log could
    not tell which client they were about.
    """
    from tether_sync import QueueFull, TetherClient
    from tether_sync.testing import TetherTestServer

    tasks: queue.Queue[Any] = queue.Queue()
    with TetherTestServer() as server:
        own_url = server.url + "?token=s3cr3t"
        with TetherClient(own_url) as own, TetherClient(server.url, dispatcher=tasks.put) as user:
            for client in (own, user):
                client.subscribe("news", lambda payload: 1 / 0)
                client.connect(wait=True, timeout=10)
            assert server.wait_subscribed("news", count=2)
            server.publish("news", 1)
            tasks.get(timeout=10)()  # the user's dispatcher runs the callback here
            raised = collected.wait("exception in subscription callback", count=2)
            assert len(raised) == 2
            by_endpoint = {r.endpoint: r for r in raised}  # type: ignore[attr-defined]
            assert set(by_endpoint) == {server.url + "?token=***", server.url}
            names = {r.client for r in raised}  # type: ignore[attr-defined]
            assert None not in names and len(names) == 2
            assert all(r.attempt == 0 for r in raised)  # type: ignore[attr-defined]

    # send() that waits for room, on the caller's thread, while the link is down.
    client = TetherClient(
        dead_url + "?key=hidden",
        queue={"max_size": 1},
        reconnect={"base_delay": 5.0, "max_delay": 5.0},
    )
    try:
        client.connect()
        client.send(1)
        with pytest.raises(QueueFull):
            client.send(2, timeout=0.2)
        waiting = collected.wait("send() is waiting for room")
        assert waiting and waiting[0].threadName == threading.current_thread().name
        assert waiting[0].client is not None  # type: ignore[attr-defined]
        assert waiting[0].endpoint == dead_url + "?key=***"  # type: ignore[attr-defined]
    finally:
        client.close(0.5)  # the queued message cannot be sent: no need to wait for it
    unsent = collected.wait("queued message(s) were not sent")
    assert unsent and unsent[0].client == waiting[0].client  # type: ignore[attr-defined]
    assert collected.failures == []


@pytest.mark.timeout(60)
def test_a_format_naming_the_fields_works_for_the_bundled_servers_records(
    collected: _Collect,
) -> None:
    """The server's records (its own loggers beneath tether_sync) have the four fields too.

    On the code before, each of them made ``%(client)s`` fail (a logging
    error on stderr per record), e.g. in an app's tests using the fixture.
    """
    from tether_sync import TetherClient
    from tether_sync.testing import TetherTestServer

    server_logger = logging.getLogger("tether_sync.server")
    level = server_logger.level
    server_logger.setLevel(logging.INFO)
    try:
        with TetherTestServer() as server:
            with TetherClient(server.url) as client:
                client.connect(wait=True, timeout=10)
                client.send(1).result(timeout=10)
    finally:
        server_logger.setLevel(level)
    servers = [r for r in collected.records if r.name.startswith("tether_sync.server")]
    assert servers
    assert collected.failures == []
    assert all(r.client is None for r in servers)  # type: ignore[attr-defined]
