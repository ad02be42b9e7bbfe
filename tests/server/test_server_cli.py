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
import threading
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


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def test_serve_record_file_holds_every_acked_message_after_kill_9(tmp_path):
    record = tmp_path / "accepted.jsonl"
    proc = _start("--port", "0", "--record", str(record))
    try:
        match = LISTENING.match(_read_line(proc, timeout=20))
        assert match, "no listening line"
        ws = websocket.create_connection(match.group(1), timeout=10)
        ws.send(json.dumps({"type": "tether:hello", "session": "chaos", "features": ["ack"]}))
        assert json.loads(ws.recv())["type"] == "tether:hello-ok"
        acked = [0]

        def read() -> None:
            # Echoes and acks until the kill ends the connection.
            try:
                while True:
                    message = json.loads(ws.recv())
                    if message.get("type") == "tether:ack":
                        acked[0] = max(acked[0], message["seq"])
            except Exception:
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        sent = 0
        # Full speed, then kill -9 while the server is still working through
        # the burst (it reads slower than we write): nothing is quiesced.
        for seq in range(1, 100_001):
            ws.send(json.dumps({"channel": "n", "type": "data", "payload": seq, "seq": seq}))
            sent = seq
            if seq >= 1000 and acked[0] >= 200:
                break
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reader.join(10)
        ws.shutdown()
        lines = [json.loads(line) for line in record.read_text().splitlines()]
        seqs = [line["seq"] for line in lines]
        assert acked[0] >= 200
        assert seqs == list(range(1, len(seqs) + 1))  # in order, none twice
        assert len(seqs) >= acked[0]  # everything acked is in the file
        assert len(seqs) <= sent
        assert lines[0] == {"session": "chaos", "seq": 1, "channel": "n", "payload": 1}
    finally:
        _stop(proc)


def test_serve_extension_flags():
    proc = _start(
        "--port",
        "0",
        "--broadcast",
        "--session-ttl",
        "5",
        "--history-size",
        "10",
        "--history-max-age",
        "30",
        "--compression",
        "deflate",
    )
    plain = _start("--port", "0", "--no-extensions")
    try:
        url = LISTENING.match(_read_line(proc, timeout=20)).group(1)
        alice = websocket.create_connection(url, timeout=5)
        bob = websocket.create_connection(url, timeout=5)
        for ws, sid in ((alice, "a"), (bob, "b")):
            ws.send(json.dumps({"type": "tether:hello", "session": sid, "features": ["resume"]}))
            assert json.loads(ws.recv())["features"] == ["resume"]
            ws.send(json.dumps({"channel": "chat", "type": "subscribe", "id": sid}))
            assert json.loads(ws.recv())["type"] == "tether:subscribed"
        alice.send(json.dumps({"channel": "chat", "type": "data", "payload": "hi", "id": "1"}))
        for ws in (alice, bob):
            message = json.loads(ws.recv())
            assert (message["payload"], message["offset"]) == ("hi", 1)
        alice.close()
        bob.close()

        url = LISTENING.match(_read_line(plain, timeout=20)).group(1)
        ws = websocket.create_connection(url, timeout=5)
        ws.send(json.dumps({"type": "tether:hello", "session": "s", "features": ["ack"]}))
        ws.send(json.dumps({"type": "tether:ping", "ts": 5}))
        assert json.loads(ws.recv()) == {"type": "tether:pong", "ts": 5}  # hello ignored
        ws.close()
        for each in (proc, plain):
            each.send_signal(signal.SIGTERM)
            assert each.wait(timeout=10) == 0
    finally:
        _stop(proc)
        _stop(plain)


def test_serve_refuses_bad_option_values(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "tether_sync", "serve", "--port", "0", "--history-size", "-1"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert bad.returncode == 2 and "history_size" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether_sync",
            "serve",
            "--port",
            "0",
            "--record",
            str(tmp_path / "no" / "such" / "dir.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert missing.returncode == 1 and "cannot open" in missing.stderr


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc")
@pytest.mark.timeout(120)
def test_serve_memory_does_not_grow_with_the_messages_it_received():
    # tether-sync serve kept a record of every frame (text and parsed JSON) that
    # nobody in its process could read: a long-running node grew without bound.
    from support.serve_process import ServeProcess

    node = ServeProcess().start()
    ws = websocket.create_connection(node.url, timeout=10)
    try:
        payload = "x" * 8192

        def exchange(count: int) -> None:
            for index in range(count):
                ws.send(json.dumps({"channel": "c", "type": "data", "payload": payload}))
                assert json.loads(ws.recv())["payload"] == payload, index

        assert node.proc is not None
        exchange(200)  # warm up: buffers and allocator arenas
        before = _rss_bytes(node.proc.pid)
        exchange(1500)  # 12 MB of payloads: kept twice over (text and parsed) when recorded
        growth = _rss_bytes(node.proc.pid) - before
        assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
    finally:
        ws.close()
        node.stop()
