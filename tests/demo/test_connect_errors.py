"""``tether-sync connect`` as wscat and websocat users expect it (issue 23).

A first connection that cannot succeed exits 1 with one clear line (refused, no
such host, an HTTP page, a refused subprotocol, a failing ``--token-cmd``); hints
for the two usual mistakes (a plain server without ``--raw``, an auth server
without ``--token-cmd``); feedback for lines typed while offline; and the common
flags ``--origin``, ``--proxy``, ``--cert``/``--key`` and ``--show-rtt``. Real
servers on 127.0.0.1 throughout.
"""

from __future__ import annotations

import http.server
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List

import pytest
from support.listener import Listener
from support.tls import localhost_tls

from .conftest import REPO


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _connect(*argv: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether_sync", "connect", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=_env(),
    )


def _cannot_connect(proc: subprocess.CompletedProcess[str], url: str) -> str:
    """The one "cannot connect" line; asserts exit 1, no traceback, no retries."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "reconnecting" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("* cannot connect to ")]
    assert line.startswith(f"* cannot connect to {url}: ")
    return line


class _Echo:
    """A python-websockets echo server that records each handshake's headers."""

    def __init__(self, **kwargs: Any) -> None:
        from websockets.sync.server import ServerConnection, serve

        self.headers: List[Any] = []

        def handler(conn: ServerConnection) -> None:
            assert conn.request is not None
            self.headers.append(conn.request.headers)
            for message in conn:
                conn.send(message)

        host = "localhost" if kwargs.get("ssl") else "127.0.0.1"
        self._server = serve(handler, host, 0, **kwargs)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        scheme = "wss" if kwargs.get("ssl") else "ws"
        self.port = self._server.socket.getsockname()[1]
        self.url = f"{scheme}://{host}:{self.port}/"

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


@pytest.fixture
def plain_echo() -> Iterator[_Echo]:
    server = _Echo()
    yield server
    server.close()


# ------------------------------------------------------------ a first connect that fails


@pytest.mark.timeout(30)
def test_a_refused_first_connect_exits_1_at_once(dead_url: str) -> None:
    started = time.monotonic()
    proc = _connect(dead_url, stdin="hello\n")
    assert "ConnectionRefusedError" in _cannot_connect(proc, dead_url)
    assert time.monotonic() - started < 15  # no backoff, no 30 s wait for delivery


def test_a_refused_first_connect_in_json_says_why(dead_url: str) -> None:
    proc = _connect(dead_url, "--json", "-q", stdin="")
    _cannot_connect(proc, dead_url)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    closed = [r for r in records if r["type"] == "closed"]
    assert len(closed) == 1 and "Connection refused" in closed[0]["error"]


def test_an_unresolvable_host_exits_1() -> None:
    url = "ws://no-such-host.invalid/"  # RFC 2606: never resolves
    proc = _connect(url, stdin="hello\n")
    _cannot_connect(proc, url)


def test_retry_keeps_trying_when_the_first_connect_fails(
    dead_url: str, spawn: Callable[..., Any]
) -> None:
    proc = spawn("-m", "tether_sync", "connect", dead_url, "--retry", "--json")
    proc.out.expect(lambda line: json.loads(line).get("attempt") == 2, timeout=10)
    assert proc.popen.poll() is None  # still trying


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!DOCTYPE html>\n<html><body>\n<h1>Not Found</h1>\n" + b"<p>x</p>\n" * 50
        self.send_response(404, "Not Found")
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_http_page_is_one_line_not_the_whole_page() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{httpd.server_address[1]}/page"
        proc = _connect(url, stdin="hello\n")
    finally:
        httpd.shutdown()
        thread.join(5)
    line = _cannot_connect(proc, url)
    assert "HTTP 404 Not Found" in line
    assert "<" not in proc.stderr  # no HTML at all
    assert len(proc.stderr.splitlines()) <= 3


def test_a_server_that_accepts_none_of_the_subprotocols_is_named(plain_echo: _Echo) -> None:
    # The server picks no subprotocol: websocket-client says "Invalid WebSocket Header".
    proc = _connect(plain_echo.url, "--raw", "-s", "chat.v9", "-s", "chat.v8", stdin="x\n")
    line = _cannot_connect(proc, plain_echo.url)
    assert line.endswith("accepted none of the offered subprotocols (chat.v9, chat.v8)")


def test_a_failing_token_cmd_shows_its_exit_status_and_stderr(
    make_server: Callable[..., Any],
) -> None:
    server = make_server(require_auth=True)
    command = "echo 'token service: 401 bad credentials' >&2; exit 3"
    proc = _connect(server.url, "--token-cmd", command, stdin="x\n")
    line = _cannot_connect(proc, server.url)
    assert line.endswith("--token-cmd exited with status 3: token service: 401 bad credentials")
    assert "get_token() failed" not in proc.stderr


def test_describe_is_one_line_for_anything() -> None:
    from tether_sync.cli.connect import describe

    assert describe(OSError("a\nb\nc")) == "OSError: a"
    assert describe(ValueError("x" * 500)).endswith("...")
    assert len(describe(ValueError("x" * 500))) < 230
    assert describe(RuntimeError()) == "RuntimeError"


# ------------------------------------------------------------------------- hints


def test_tether_mode_against_a_plain_server_hints_raw(plain_echo: _Echo) -> None:
    proc = _connect(plain_echo.url, "--wait", "5", stdin="hi\n")
    assert proc.returncode == 0, proc.stderr
    hints = [line for line in proc.stderr.splitlines() if "use --raw" in line]
    assert len(hints) == 1, proc.stderr


def test_an_auth_server_without_token_hints_token_cmd(make_server: Callable[..., Any]) -> None:
    server = make_server(require_auth=True)
    proc = _connect(server.url, "--wait", "5", stdin="one\ntwo\n")
    assert proc.returncode == 1
    hints = [line for line in proc.stderr.splitlines() if "pass --token-cmd" in line]
    assert len(hints) == 1, proc.stderr
    assert "2 of 2 lines not delivered" in proc.stderr


def test_no_hint_against_the_right_server(tether_server: Any) -> None:
    proc = _connect(tether_server.url, "--wait", "5", stdin="hi\n")
    assert proc.returncode == 0, proc.stderr
    assert "--raw" not in proc.stderr and "--token-cmd" not in proc.stderr


# ------------------------------------------------------------- lines typed while offline


def test_lines_sent_while_offline_say_they_are_queued(
    make_server: Callable[..., Any], spawn: Callable[..., Any]
) -> None:
    server = make_server()
    proc = spawn("-m", "tether_sync", "connect", server.url, "--channel", "c")
    proc.err.expect(lambda line: line.startswith("* connected to"), timeout=10)
    server.stop(abrupt=True)
    proc.err.expect(lambda line: line.startswith("* reconnecting"), timeout=10)
    proc.send_line("while down")
    proc.err.expect(lambda line: line.startswith("* not connected: lines are queued"), timeout=10)
    server.start()
    proc.out.expect(lambda line: line == "[c] while down", timeout=15)
    proc.close_stdin()
    assert proc.wait(timeout=15) == 0


# ---------------------------------------------------------------------- common flags


def test_origin_reaches_the_handshake(plain_echo: _Echo) -> None:
    proc = _connect(plain_echo.url, "--raw", "--origin", "https://app.example", stdin="o\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["o"]
    (headers,) = plain_echo.headers
    assert headers.get_all("Origin") == ["https://app.example"]


class _ConnectProxy:
    """A minimal HTTP CONNECT proxy on 127.0.0.1 that records the tunnels it opened."""

    def __init__(self) -> None:
        self.tunnels: List[str] = []
        self.auth: List[str] = []
        self._listener = Listener(self._tunnel, threaded=True, name="connect-proxy")
        self.port = self._listener.port

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            _method, target, _ = lines[0].split(" ")
            self.auth += [x for x in lines[1:] if x.lower().startswith("proxy-authorization")]
            host, port = target.rsplit(":", 1)
            self.tunnels.append(target)
            with socket.create_connection((host, int(port)), timeout=5) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pair = {client: upstream, upstream: client}
                while True:
                    ready, _, _ = select.select(list(pair), [], [], 10)
                    if not ready:
                        return
                    for sock in ready:
                        data = sock.recv(65536)
                        if not data:
                            return
                        pair[sock].sendall(data)

    def close(self) -> None:
        self._listener.close()


def test_proxy_tunnels_the_connection(tether_server: Any) -> None:
    proxy = _ConnectProxy()
    try:
        proc = _connect(
            tether_server.url, "--proxy", f"http://user:pw@127.0.0.1:{proxy.port}", stdin="p\n"
        )
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[default] p"]
    assert proxy.tunnels == [f"127.0.0.1:{tether_server.port}"]
    assert len(proxy.auth) == 1  # Basic credentials from the URL


def test_a_bad_proxy_is_a_usage_error() -> None:
    proc = _connect("ws://127.0.0.1:1/", "--proxy", "ftp://x:1")
    assert proc.returncode == 2
    assert "invalid proxy" in proc.stderr


def test_client_certificate_for_mutual_tls(tmp_path: Any) -> None:
    context, ca_file, ca = localhost_tls(tmp_path)
    context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no connection
    ca.configure_trust(context)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    client_cert = ca.issue_cert("client@example")
    client_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    client_cert.private_key_pem.write_to_path(str(key_file))
    server = _Echo(ssl=context)
    try:
        refused = _connect(server.url, "--raw", "--ca-file", str(ca_file), stdin="x\n")
        proc = _connect(
            server.url, "--raw", "--ca-file", str(ca_file),
            "--cert", str(cert_file), "--key", str(key_file),
            stdin="mtls\n",
        )  # fmt: skip
    finally:
        server.close()
    _cannot_connect(refused, server.url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["mtls"]


def test_show_rtt_prints_round_trips(tether_server: Any, spawn: Callable[..., Any]) -> None:
    proc = spawn(
        "-m", "tether_sync", "connect", tether_server.url,
        "--ping-interval", "0.2", "--show-rtt", "--json",
    )  # fmt: skip
    line = proc.out.expect(lambda text: json.loads(text).get("type") == "rtt", timeout=10)
    assert 0 < json.loads(line)["rtt"] < 5
    proc.close_stdin()
    assert proc.wait(timeout=10) == 0


def test_help_lists_the_new_flags() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tether_sync", "connect", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=_env(),
    )
    assert proc.returncode == 0
    for flag in ("--retry", "--origin", "--proxy", "--cert", "--key", "--show-rtt"):
        assert flag in proc.stdout, flag
