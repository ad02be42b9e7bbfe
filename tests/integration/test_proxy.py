"""Through a real HTTP proxy: Debian's ``tinyproxy`` on 127.0.0.1, CONNECT tunnels.

The proxy options are websocket-client's, handed over with ``ws_options``::

    TetherClient(url, ws_options={"http_proxy_host": "proxy.example", "http_proxy_port": 3128,
                                  "proxy_type": "http"})

Decision (README, "HTTP proxies"): the environment is honoured, because the opening
handshake is websocket-client's and it reads it when no ``http_proxy_host`` is given:
``http_proxy`` / ``HTTP_PROXY`` for ``ws://``, ``https_proxy`` / ``HTTPS_PROXY`` for
``wss://``, and ``no_proxy`` / ``NO_PROXY`` (host names, domain suffixes, CIDR subnets,
``*``) to go direct. ``NO_PROXY`` applies to an explicit ``http_proxy_host`` too, unless
``http_no_proxy`` is given. That is what curl, requests and python-websockets do with
the same variables, so a client behind a corporate proxy works without code changes.

Each test reads the proxy's own log to see whether it tunnelled the connection.
Without tinyproxy the tests skip, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest

from tether_sync import TetherClient

PROXY_ENV = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


class Tinyproxy:
    """``tinyproxy -d`` in the foreground with a temporary config; its log read by a thread."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as sock:  # tinyproxy has no "port 0": take a free one
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config = directory / "tinyproxy.conf"
        # No Allow/Deny lines: every client may use it; no ConnectPort lines: CONNECT
        # to any port (the bundled server's is random).
        config.write_text(
            f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Info\nMaxClients 20\n"
        )
        self.log: List[str] = []
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait_for("Accepting connections", timeout=10)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.log.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first log line (from now on) containing ``text``; fail after ``timeout``."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"tinyproxy never logged {text!r}:\n" + self.text()) from None
            if line is None:
                raise AssertionError(f"tinyproxy exited:\n{self.text()}")
            if text in line:
                return line

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.log)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tinyproxy]:
    if shutil.which("tinyproxy") is None:
        message = "tinyproxy is not installed (apt-get install tinyproxy)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {message}")
        pytest.skip(message)
    for name in PROXY_ENV:  # the machine's own proxy settings must not interfere
        monkeypatch.delenv(name, raising=False)
    instance = Tinyproxy(tmp_path)
    try:
        yield instance
    finally:
        instance.stop()


def _echo_round(client: TetherClient, count: int = 50) -> None:
    inbox = client.subscribe("proxied")
    client.connect(wait=True, timeout=10)
    for n in range(count):
        client.send({"n": n}, channel="proxied")
    assert [inbox.get(timeout=10) for _ in range(count)] == [{"n": n} for n in range(count)]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


def test_ws_options_send_the_connection_through_the_proxy(
    proxy: Tinyproxy, tether_server: Any, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(
        tether_server.url,
        ws_options={
            "http_proxy_host": "127.0.0.1",
            "http_proxy_port": proxy.port,
            "proxy_type": "http",
        },
    )
    _echo_round(client)
    proxy.wait_for(f"CONNECT 127.0.0.1:{_port(tether_server.url)}", timeout=5)


def test_http_proxy_environment_variable_is_honoured(
    proxy: Tinyproxy,
    tether_server: Any,
    make_client: Callable[..., TetherClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    _echo_round(make_client(tether_server.url))
    proxy.wait_for(f"CONNECT 127.0.0.1:{_port(tether_server.url)}", timeout=5)


def test_no_proxy_environment_variable_goes_direct(
    proxy: Tinyproxy,
    tether_server: Any,
    make_client: Callable[..., TetherClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    _echo_round(make_client(tether_server.url))
    # Had it gone through the proxy, the CONNECT would be logged before the tunnel
    # carried anything, so before the echoes above arrived.
    assert "CONNECT" not in proxy.text()


def test_a_tunnel_the_proxy_refuses_is_a_failed_attempt_not_a_hang(
    proxy: Tinyproxy, make_client: Callable[..., TetherClient], dead_url: str
) -> None:
    attempts: queue.Queue[int] = queue.Queue()
    client = make_client(
        dead_url,
        ws_options={"http_proxy_host": "127.0.0.1", "http_proxy_port": proxy.port},
    )
    client.on("reconnecting", lambda event: attempts.put(event.attempt))
    client.connect()
    # The proxy cannot reach the target and answers the CONNECT with an error status:
    # the handshake fails at once, and the client backs off and tries again.
    proxy.wait_for(f"CONNECT 127.0.0.1:{_port(dead_url)}", timeout=5)
    assert attempts.get(timeout=10) == 1
    assert client.state in ("connecting", "reconnecting")
