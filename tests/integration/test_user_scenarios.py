"""Issue 18 as a demanding user tries it: default options, scripts as users write them.

Each test is a scenario a user would run, against a real ``tether-sync serve``
subprocess (``--record`` holds every data message the server's application
accepted) or a real socket on 127.0.0.1, and checks what that user would
notice: what arrived, what the log said, what was refused and how.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
from support.listener import Listener
from support.raw_server import MutePeer
from support.serve_process import ServeProcess

from tether_sync import ConnectTimeout, ErrorEvent, QueueFull, TetherClient


@pytest.fixture
def clients() -> Iterator[List[TetherClient]]:
    made: List[TetherClient] = []
    yield made
    for client in made:
        client.close(timeout=3)


def _payloads(server: ServeProcess, channel: str) -> List[object]:
    return [r["payload"] for r in server.records() if r["channel"] == channel]


def _wait_lines(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [r for r in caplog.records if "waiting for room" in r.getMessage()]


@pytest.mark.timeout(120)
def test_a_send_loop_faster_than_the_link_says_it_waits_once_not_hundreds_of_times(
    tmp_path: Path, clients: List[TetherClient], caplog: pytest.LogCaptureFixture
) -> None:
    # Before: connect() then a loop of sends logged "send() is waiting for
    # room" at INFO every time the I/O thread had emptied the queue: 764 lines
    # for 100,000 sends (about one per 130 messages), on a perfectly healthy link.
    server = ServeProcess(record=tmp_path / "record.jsonl").start()
    try:
        client = TetherClient(server.url)
        clients.append(client)
        with caplog.at_level(logging.INFO, logger="tether_sync"):
            client.connect()
            for n in range(20_000):
                client.send(n, channel="loop")
            assert client.close(timeout=30)
        assert _payloads(server, "loop") == list(range(20_000))
        lines = _wait_lines(caplog)
        assert lines, "a loop faster than the link waits for room, and says so"
        # One line per reason (connecting, then a link slower than the loop),
        # and a new episode only once everything was done.
        assert len(lines) <= 4, [r.getMessage()[:80] for r in lines]
        # A healthy run warns of nothing: before, the first connection (the
        # loop fills the queue before the link opens) was a WARNING every run.
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_an_outage_mid_loop_warns_once_per_outage_and_loses_nothing(
    tmp_path: Path, clients: List[TetherClient], caplog: pytest.LogCaptureFixture
) -> None:
    # A server that goes away mid-loop (kill -9) and comes back: send() waits,
    # one WARNING says why, the loop resumes, every message arrives (the
    # bundled server forgets sessions when killed: duplicates are possible).
    record = tmp_path / "record.jsonl"
    server = ServeProcess(record=record).start()
    restarted: List[ServeProcess] = []
    client = TetherClient(server.url)
    clients.append(client)
    retried = threading.Event()  # an attempt failed while the server was down
    client.on("reconnecting", lambda event: retried.set() if event.attempt >= 2 else None)
    total = 20_000

    def restart() -> None:
        # The loop is blocked in send() meanwhile (the queue fills while down).
        if retried.wait(30):
            restarted.append(ServeProcess(port=server.port, record=record).start(60))

    helper = threading.Thread(target=restart)
    try:
        with caplog.at_level(logging.INFO, logger="tether_sync"):
            client.connect()
            deliveries = []
            for n in range(total):
                if n == total // 2:
                    server.kill()
                    helper.start()
                deliveries.append(client.send(n, channel="outage"))
            assert client.flush(timeout=60)
            assert client.close(timeout=10)
        helper.join(90)
        assert all(d.done() and d.exception() is None for d in deliveries)
        got = Counter(p for p in _payloads(restarted[0], "outage"))
        assert set(got) == set(range(total))
        warnings = [r for r in _wait_lines(caplog) if r.levelno == logging.WARNING]
        # One for the outage (the wait at the first connect is INFO).
        assert len(warnings) == 1, [r.getMessage()[:80] for r in warnings]
        assert "reconnects" in warnings[0].getMessage()
    finally:
        server.kill()
        helper.join(90) if helper.is_alive() else None
        for again in restarted:
            again.stop()


@pytest.mark.timeout(30)
def test_send_with_a_timeout_on_a_full_queue_while_down_says_why_there_is_no_room(
    dead_url: str, clients: List[TetherClient]
) -> None:
    # Before: "no room in the outbound queue within 0.2s", nothing about the
    # bound or that the link is down (which is what the user can act on).
    client = TetherClient(dead_url)
    clients.append(client)
    for n in range(1000):
        client.send(n)
    with pytest.raises(QueueFull) as info:
        client.send("one more", timeout=0.2)
    text = str(info.value)
    assert "within 0.2s" in text and "1000" in text and "not open" in text, text


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "headers, kind, says",
    [
        ({"X-Trace": "a\r\nX-Admin: yes"}, ValueError, "headers['X-Trace'] must not contain CR"),
        ({"X-Trace": "a\nb"}, ValueError, "must not contain CR, LF or NUL"),
        ({"X-Count": 1}, TypeError, "headers['X-Count'] must be a str"),
        ({"Bad Name": "v"}, ValueError, "'Bad Name' is not a valid header name"),
        ({"": "v"}, ValueError, "is not a valid header name"),
        ({1: "v"}, TypeError, "header names must be str"),
    ],
)
def test_a_header_that_would_inject_a_line_or_fail_every_attempt_is_refused_at_construction(
    headers: Dict[object, object], kind: type, says: str
) -> None:
    # Before: accepted. A value with CR LF wrote a header of its own into the
    # handshake request; an int value failed every connect attempt, forever,
    # with "sequence item 1: expected str instance, int found".
    with pytest.raises(kind) as info:
        TetherClient("ws://127.0.0.1:1/", headers=headers)  # type: ignore[arg-type]
    assert says in str(info.value)


def test_a_refused_header_value_is_never_in_the_message() -> None:
    with pytest.raises(ValueError) as info:
        TetherClient("ws://127.0.0.1:1/", headers={"Authorization": "Bearer s3cr3t\r\n"})
    assert "s3cr3t" not in str(info.value)


def test_good_headers_are_accepted_as_given() -> None:
    client = TetherClient(
        "ws://127.0.0.1:1/", headers={"Authorization": "Bearer x", "X-Skip": None}
    )  # type: ignore[dict-item]
    client.close(timeout=1)


class _HandshakeCatcher:
    """Accepts TCP connections and keeps the bytes of each request's head."""

    def __init__(self) -> None:
        self.requests: List[bytes] = []
        self.connected = threading.Event()
        self._listener = Listener(self._catch, name="handshake-catcher")
        self.port = self._listener.port

    def _catch(self, conn: socket.socket) -> None:
        self.connected.set()
        with conn:
            conn.settimeout(2)
            self.requests.append(conn.recv(65536))

    def close(self) -> None:
        self._listener.close()


@pytest.mark.timeout(30)
def test_a_headers_callable_that_returns_a_bad_header_fails_the_attempt_naming_it() -> None:
    # A callable is evaluated at every connect: its result is checked there,
    # and the attempt fails with an error event that names headers(), before
    # anything is written (nothing injected on the wire).
    peer = _HandshakeCatcher()
    errors: List[BaseException] = []
    failed = threading.Event()

    def on_error(event: ErrorEvent) -> None:
        errors.append(event.error)
        failed.set()

    client = TetherClient(
        f"ws://127.0.0.1:{peer.port}/",
        headers=lambda: {"X-Trace": "a\r\nX-Admin: yes"},
        connect_timeout=2,
    )
    try:
        client.on("error", on_error)
        client.connect()
        assert failed.wait(10)
        first: Optional[BaseException] = errors[0]
        assert isinstance(first, ValueError)
        assert "headers()['X-Trace'] must not contain CR" in str(first)
    finally:
        assert client.close(timeout=5) is not None
        peer.close()
    assert not any(b"X-Admin" in r for r in peer.requests)


# ---------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "argv",
    [
        ["connect", "ws://bob:pw-SECRET@127.0.0.1:abc/x?token=tok-SECRET"],
        ["connect", "http://bob:pw-SECRET@127.0.0.1:80/x?token=tok-SECRET"],
        ["connect", "ws://bob:pw-SECRET@127.0.0.1:0/x?access_token=tok-SECRET"],
        ["connect", "ws://127.0.0.1:1/", "-H", "Authorization Bearer tok-SECRET"],
        ["connect", "ws://127.0.0.1:1/", "-H", "X-Api-Key: tok-SECRET\r\nX: y"],
    ],
    ids=["bad-port", "bad-scheme", "port-0", "header-no-colon", "header-crlf"],
)
def test_the_cli_refuses_a_bad_url_or_header_without_printing_its_secrets(
    argv: List[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: argparse printed the URL as typed, password and token included
    # ("invalid URL 'ws://bob:pw-SECRET@...?token=tok-SECRET'"), and a header
    # as typed (its value is often the credential).
    from tether_sync.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid" in err
    assert "SECRET" not in err, err


# ---------------------------------------------------------------- TLS options


def test_a_misspelt_sslopt_key_is_refused_at_construction_naming_it() -> None:
    # Before: accepted, and ignored by websocket-client: "ca_cert" for
    # "ca_certs" connected with the default trust store instead of the CA the
    # user named, and "cert_req" turned nothing off, without a word.
    with pytest.raises(ValueError, match="sslopt: unknown option 'ca_cert'"):
        TetherClient("wss://127.0.0.1:1/", sslopt={"ca_cert": "/etc/ssl/ca.pem"})
    with pytest.raises(TypeError, match="sslopt must be a dict"):
        TetherClient("wss://127.0.0.1:1/", sslopt="ca.pem")  # type: ignore[arg-type]
    client = TetherClient("wss://127.0.0.1:1/", sslopt={"ca_certs": "ca.pem", "cert_reqs": 2})
    client.close(timeout=1)


# ---------------------------------------------------------------- connect(wait=True)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "upgrade, phase",
    [(False, "the WebSocket handshake"), (True, "hello-ok")],
    ids=["http", "hello"],
)
def test_connect_wait_that_times_out_during_the_first_attempt_says_where_it_is_stuck(
    upgrade: bool, phase: str
) -> None:
    # Default connect_timeout (10 s) and a shorter wait: the first attempt is
    # still in progress when connect(wait=True, timeout=1) gives up. Before:
    # "not open within 1s", nothing about where or what it waits for.
    peer = MutePeer(upgrade)
    url = f"ws://bob:pw-SECRET@127.0.0.1:{peer.port}/?token=tok-SECRET"
    client = TetherClient(url)
    try:
        with pytest.raises(ConnectTimeout) as info:
            client.connect(wait=True, timeout=1)
        text = str(info.value)
        assert f"127.0.0.1:{peer.port}" in text and f"waiting for {phase}" in text, text
        assert "SECRET" not in text and "SECRET" not in repr(info.value)
    finally:
        assert client.close(timeout=3)
        peer.close()


# ---------------------------------------------------------------- exit without close()


@pytest.mark.timeout(60)
def test_a_script_that_ends_with_messages_it_could_not_send_says_so_on_stderr(
    dead_url: str,
) -> None:
    # No close(), no logging configured, the server unreachable: the exit flush
    # gives up after exit_flush_timeout. Before: exit 0 and an empty stderr (the
    # library's warning went to its NullHandler): ten messages lost in silence.
    url = dead_url.replace("ws://", "ws://bob:pw-SECRET@") + "?token=tok-SECRET"
    script = textwrap.dedent(
        f"""
        from tether_sync import TetherClient
        client = TetherClient({url!r})
        for n in range(10):
            client.send({{"n": n}})
        print("queued")
        """
    )
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=40,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert done.stdout.strip() == "queued"
    assert "10 message(s)" in done.stderr and "were not sent" in done.stderr, done.stderr
    assert "SECRET" not in done.stderr


@pytest.mark.timeout(60)
def test_a_script_whose_messages_all_went_out_at_exit_prints_nothing(tmp_path: Path) -> None:
    server = ServeProcess(record=tmp_path / "record.jsonl").start()
    try:
        script = textwrap.dedent(
            f"""
            from tether_sync import TetherClient
            client = TetherClient({server.url!r})
            for n in range(1000):
                client.send(n, channel="exit")
            """
        )
        root = str(Path(__file__).resolve().parents[2])
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=40,
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
        )
        assert done.returncode == 0 and done.stderr == ""
        assert _payloads(server, "exit") == list(range(1000))
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_ctrl_c_in_a_send_loop_says_how_many_messages_were_not_sent(dead_url: str) -> None:
    # Ctrl-C while send() waits for room (the server is unreachable): no exit
    # flush (the user wants out), but the messages left behind are not lost
    # in silence.
    script = textwrap.dedent(
        f"""
        import sys
        from tether_sync import TetherClient
        client = TetherClient({dead_url!r})
        for n in range(1000):
            client.send(n)
        print("full", flush=True)
        client.send("waits for room")
        """
    )
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "full"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "KeyboardInterrupt" in err
    assert "1000 message(s)" in err and "Ctrl-C" in err, err
