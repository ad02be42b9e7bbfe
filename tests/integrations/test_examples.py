"""examples/tk_chat.py, asyncio_bridge.py and flask_app.py, each run for real."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Set

import pytest

from .conftest import REPO, Proc, Xvfb, require_module

BAD_LOG_LINE = re.compile(r"Traceback|\[ERROR\]|\[CRITICAL\]|Exception|WORKER TIMEOUT|not sent")


def test_tk_chat_sends_and_shows_the_echoes(
    tether_server: Any,
    xvfb: Xvfb,
    spawn: Callable[..., Proc],
    screenshot: Callable[[str], Path],
) -> None:
    require_module("tkinter", "install the interpreter's tkinter (apt-get install python3-tk)")
    proc = spawn("examples/tk_chat.py", tether_server.url, "--name", "ada", "--self-test", "5")
    proc.out.expect(lambda line: line == "shown 5", timeout=20)
    line = proc.out.expect(lambda line: line.startswith("callbacks on the Tk thread"), timeout=5)
    ran, total = map(int, re.findall(r"\d+", line))
    assert total >= 6 and ran == total  # 5 messages and the state changes, all on Tk
    shot = screenshot("tk_chat")
    assert tether_server.data_payloads("chat") == [
        {"from": "ada", "text": f"line {n}"} for n in range(5)
    ]
    proc.send_line("quit")
    assert proc.wait(10) == 0
    proc.out.expect(lambda line: line == "closed clean=True", timeout=5)
    assert proc.err.rest(5) == []
    assert shot.stat().st_size > 0


def test_asyncio_bridge_awaits_its_echoes(tether_server: Any, spawn: Callable[..., Proc]) -> None:
    proc = spawn("examples/asyncio_bridge.py", tether_server.url, "--count", "5")
    assert proc.wait(20) == 0
    lines = proc.out.rest(5)
    assert [json.loads(line) for line in lines[:5]] == [{"n": n} for n in range(5)]
    assert lines[5] == "callbacks in the event loop: 5 of 5"
    assert proc.err.rest(5) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _post(port: int, body: Any) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/messages",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        return json.loads(response.read())


def _gunicorn(
    tether_server: Any, tmp_path: Path, port: int, boot_message: bool
) -> subprocess.Popen[str]:
    require_module("gunicorn", "pip install gunicorn")
    env = dict(os.environ)
    env.update(
        TETHER_URL=tether_server.url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        HOME=str(tmp_path),  # gunicorn's control socket goes under $HOME: one per test
        TETHER_EXAMPLE_BOOT_MESSAGE="1" if boot_message else "0",
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "20",
            "--chdir",
            str(REPO / "examples"),
            "flask_app:app",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=str(tmp_path),
    )


@pytest.mark.parametrize(
    "boot_message",
    [
        False,
        True,  # fork safety: a worker that inherited the master's client exits promptly
    ],
    ids=["lazy", "master-used-a-client"],
)
def test_flask_app_under_gunicorn_preload_two_workers(
    tether_server: Any, tmp_path: Path, boot_message: bool
) -> None:
    from .conftest import LineQueue

    port = _free_port()
    gunicorn = _gunicorn(tether_server, tmp_path, port, boot_message)
    assert gunicorn.stdout is not None
    log = LineQueue(gunicorn.stdout, "gunicorn")
    try:
        log.expect(lambda line: "Listening at" in line, timeout=20)
        # The listening socket queues connections until the workers accept them.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: _post(port, {"n": n}), range(200)))
        assert tether_server.wait_for_data(200, channel="orders", timeout=20)
        payloads = tether_server.data_payloads("orders")
        assert sorted(p["n"] for p in payloads) == list(range(200))
        worker_pids: Set[int] = {p["pid"] for p in payloads}
        assert worker_pids == {a["pid"] for a in answers}
        assert gunicorn.pid not in worker_pids  # sent by workers, not by the master
        assert 1 <= len(worker_pids) <= 2
        if boot_message:
            assert tether_server.wait_for_data(1, channel="boot", timeout=10)
            assert tether_server.data_payloads("boot") == [{"boot": gunicorn.pid}]
        # One client (connection) per worker that served, plus the master's if it made one.
        assert tether_server.wait_for(
            lambda: tether_server.connection_count == len(worker_pids) + boot_message, 10
        )
        started = time.monotonic()
        gunicorn.send_signal(signal.SIGTERM)
        assert gunicorn.wait(15) == 0
        took = time.monotonic() - started
    finally:
        if gunicorn.poll() is None:
            gunicorn.kill()
            gunicorn.wait(5)
    lines: List[str] = log.rest(5)
    exited = [line for line in lines if "Worker exiting" in line]
    assert len(exited) == 2, lines
    assert not [line for line in lines if BAD_LOG_LINE.search(line)], lines
    # A worker that hung in its client's shutdown would hold gunicorn until its graceful
    # timeout (30 s); 3.5 s was seen on a loaded machine with nothing wrong.
    assert took < 6.0, f"gunicorn took {took:.1f}s to stop"
    # Every worker closed its client at exit: the server saw them all go.
    assert tether_server.wait_for(lambda: tether_server.connection_count == 0, 10)
