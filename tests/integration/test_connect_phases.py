"""connect_timeout bounds each attempt from the TCP connect until open, in every phase.

Scripted peers on 127.0.0.1 stall one connecting phase each (no HTTP answer, silence
after the upgrade, an endless frame trickled byte by byte, hello-ok but never auth-ok,
a TCP connect that never completes): each attempt fails within connect_timeout + 0.5 s
with a ConnectTimeout naming the phase, as an ``error`` event and the ``reconnecting``
event's cause, and the client then opens on the real server next in the endpoint list.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest
from support.listener import Listener
from support.raw_server import _read_frame, accept_handshake, server_frame
from support.recorder import Recorder, client_threads

from tether_sync import (
    Auth,
    ConnectTimeout,
    ErrorEvent,
    OpenEvent,
    ReconnectingEvent,
    TetherClient,
)
from tether_sync.protocol.frames import OP_TEXT
from tether_sync.server import TetherServer, mint_token

TIMEOUT = 1.0  # the connect_timeout under test
SLACK = 0.5  # what the attempt may take beyond it
FAST = {"base_delay": 0.01, "max_delay": 0.05}


class StallPeer:
    """Accepts TCP connections and stalls each in one connecting phase.

    Modes: ``"no-http"`` (never answers the upgrade request), ``"silent"`` (upgrades,
    then answers nothing), ``"trickle"`` (upgrades, then sends an endless frame one
    byte at a time), ``"no-auth-ok"`` (upgrades and answers the hello with hello-ok,
    never the auth).

    Attributes:
        stalls: Seconds from each accept until the client hung up.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stalls = Recorder()
        self.heard = threading.Event()  # the first bytes of a client arrived
        self._stop = threading.Event()
        self._listener = Listener(self._handle, threaded=True, name="staller")
        self.url = self._listener.url

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _handle(self, conn: socket.socket) -> None:
        accepted = time.monotonic()
        with conn:
            try:
                if self.mode != "no-http":
                    accept_handshake(conn)
                if self.mode == "no-auth-ok":
                    self._hello_ok_only(conn)
                else:
                    self._stall(conn)
            except OSError:
                pass
            self.stalls(time.monotonic() - accepted)

    def _stall(self, conn: socket.socket) -> None:
        """Read (and drop) what the client sends until it hangs up; trickle if asked."""
        if self.mode == "trickle":
            conn.sendall(bytes([0x80 | OP_TEXT, 126]) + (60000).to_bytes(2, "big"))
        while not self._stop.is_set():
            readable, _, _ = select.select([conn], [], [], 0.02)
            if readable:
                if not conn.recv(65536):
                    return
                self.heard.set()
            if self.mode == "trickle":
                conn.sendall(b"x")  # the frame never completes

    def _hello_ok_only(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        while not self._stop.is_set():
            try:
                frame = _read_frame(conn)
            except socket.timeout:
                continue
            if frame is None or frame[0] == 0x8:
                return
            try:
                message = json.loads(frame[1])
            except ValueError:
                continue
            if message.get("type") == "tether:hello":
                reply = {
                    "type": "tether:hello-ok",
                    "session": message["session"],
                    "features": message["features"],
                    "acked": 0,
                }
                conn.sendall(server_frame(OP_TEXT, json.dumps(reply).encode()))
            # tether:auth and everything else: never answered


@pytest.fixture
def stall_peer() -> Iterator[Callable[[str], StallPeer]]:
    made: List[StallPeer] = []

    def factory(mode: str) -> StallPeer:
        peer = StallPeer(mode)
        made.append(peer)
        return peer

    yield factory
    for peer in made:
        peer.close()


def _token() -> str:
    return mint_token("phase-user", ttl=300.0)


BEATING = {"interval": 0.1, "timeout": 0.1}  # a heartbeat far shorter than the timeout

CASES = [
    ("no-http", "the WebSocket handshake", False, False),
    ("silent", "hello-ok", False, False),
    ("silent-heartbeat", "hello-ok", False, True),
    ("trickle", "hello-ok", False, False),
    ("trickle-heartbeat", "hello-ok", False, True),
    ("no-auth-ok", "auth-ok", True, False),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("mode", "phase", "auth", "beat"), CASES, ids=[c[0] for c in CASES])
def test_a_stalled_phase_fails_the_attempt_in_time_naming_it_then_the_next_endpoint_opens(
    mode: str,
    phase: str,
    auth: bool,
    beat: bool,
    stall_peer: Callable[[str], StallPeer],
    make_server: Callable[..., TetherServer],
    make_client: Callable[..., TetherClient],
) -> None:
    peer = stall_peer(mode.replace("-heartbeat", ""))
    server = make_server(require_auth=auth)
    options: dict[str, Any] = {"connect_timeout": TIMEOUT, "reconnect": FAST}
    if beat:  # the heartbeat runs once open: the bound before that is connect_timeout
        options["heartbeat"] = BEATING
    if auth:
        options["auth"] = Auth(_token)
    client = make_client([peer.url, server.url], **options)
    errors, retries, opens = Recorder(), Recorder(), Recorder()
    client.on("error", errors)
    client.on("reconnecting", retries)
    client.on("open", opens)
    got = Recorder()
    client.on("message", lambda event: got(event.payload))
    started = time.monotonic()
    client.connect()

    assert peer.stalls.wait_count(1, timeout=10)
    assert peer.stalls.snapshot()[0] <= TIMEOUT + SLACK  # the client hung up in time
    assert errors.wait_count(1)
    error: ErrorEvent = errors.snapshot()[0]
    assert isinstance(error.error, ConnectTimeout)
    assert str(error.error) == f"connect timed out after {TIMEOUT}s waiting for {phase}"
    assert retries.wait_count(1)
    retry: ReconnectingEvent = retries.snapshot()[0]
    assert retry.cause is error.error

    assert opens.wait_count(1)
    opened: OpenEvent = opens.snapshot()[0]
    assert (opened.url, opened.index) == (server.url, 1)
    assert time.monotonic() - started < TIMEOUT + SLACK + 2.0
    client.subscribe("news")
    assert server.wait_for(lambda: any("news" in c.subscriptions for c in server.connections))
    assert client.send("after the stall").result(timeout=5) is None
    assert server.wait_for_data(1, timeout=5)
    assert server.broadcast("news", {"n": 1}) == 1
    assert got.wait_for(lambda items: {"n": 1} in items)


@pytest.mark.timeout(30)
def test_a_get_token_that_takes_too_long_fails_the_attempt_naming_it_then_opens(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    server = make_server(require_auth=True)
    gate, asked = threading.Event(), threading.Event()

    def slow_token() -> str:
        asked.set()
        assert gate.wait(10), "the test never released get_token()"
        return _token()

    client = make_client(server.url, connect_timeout=TIMEOUT, auth=Auth(slow_token))
    retries, opens = Recorder(), Recorder()
    client.on("reconnecting", retries)
    client.on("open", opens)
    client.connect()
    assert asked.wait(10)
    assert retries.wait_count(1)
    cause = retries.snapshot()[0].cause
    assert isinstance(cause, ConnectTimeout)
    assert str(cause) == f"connect timed out after {TIMEOUT}s waiting for the token (get_token())"
    gate.set()
    assert opens.wait_count(1)
    assert client.send("with the token").result(timeout=5) is None
    assert server.wait_for_data(1, timeout=5)


@pytest.mark.timeout(30)
def test_every_attempt_at_a_silent_peer_is_bounded_and_retried(
    stall_peer: Callable[[str], StallPeer], make_client: Callable[..., TetherClient]
) -> None:
    peer = stall_peer("silent")
    client = make_client(peer.url, connect_timeout=0.3, reconnect=FAST)
    retries = Recorder()
    client.on("reconnecting", retries)
    client.connect()
    assert retries.wait_count(3)
    assert peer.stalls.wait_count(3)
    assert all(stall <= 0.3 + SLACK for stall in peer.stalls.snapshot()[:3])
    causes = [event.cause for event in retries.snapshot()[:3]]
    assert all(isinstance(cause, ConnectTimeout) for cause in causes)
    assert client.state in ("connecting", "reconnecting")


class FullBacklog:
    """A listener whose accept queue is full: a TCP connect to it never completes."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        port = self._listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"
        self._fillers: List[socket.socket] = []
        for _ in range(4):  # the kernel then drops every further SYN
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            self._fillers.append(filler)

    def close(self) -> None:
        for sock in (*self._fillers, self._listener):
            sock.close()


@pytest.fixture
def full_backlog() -> Iterator[FullBacklog]:
    backlog = FullBacklog()
    yield backlog
    backlog.close()


@pytest.mark.timeout(30)
def test_a_tcp_connect_that_never_completes_times_out_naming_it(
    full_backlog: FullBacklog, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(full_backlog.url, connect_timeout=TIMEOUT, reconnect=FAST)
    retries = Recorder()
    client.on("reconnecting", retries)
    started = time.monotonic()
    client.connect()
    assert retries.wait_count(1)
    assert time.monotonic() - started <= TIMEOUT + SLACK
    cause = retries.snapshot()[0].cause
    assert isinstance(cause, ConnectTimeout)
    assert str(cause) == f"connect timed out after {TIMEOUT}s waiting for the TCP connect"


@pytest.mark.timeout(30)
def test_a_tls_handshake_that_never_completes_times_out_naming_it(
    stall_peer: Callable[[str], StallPeer], make_client: Callable[..., TetherClient]
) -> None:
    peer = stall_peer("no-http")  # takes the ClientHello, never answers it
    url = peer.url.replace("ws://", "wss://")
    client = make_client(url, connect_timeout=TIMEOUT, reconnect=FAST)
    retries = Recorder()
    client.on("reconnecting", retries)
    client.connect()
    assert peer.stalls.wait_count(1)
    assert peer.stalls.snapshot()[0] <= TIMEOUT + SLACK
    assert retries.wait_count(1)
    cause = retries.snapshot()[0].cause
    assert isinstance(cause, ConnectTimeout)
    assert str(cause) == f"connect timed out after {TIMEOUT}s waiting for the TLS handshake"


def _close_ends_every_thread_in_time(client: TetherClient, started: threading.Event) -> None:
    client.connect()
    assert started.wait(10)
    began = time.monotonic()
    assert client.close(timeout=2)
    took = time.monotonic() - began
    assert took < 2.0 + SLACK
    assert client_threads() == []


@pytest.mark.timeout(30)
def test_close_aborts_a_tcp_connect_in_progress_and_leaves_no_thread(
    full_backlog: FullBacklog,
) -> None:
    # connect_timeout far beyond close's 2 s: only an abort can end the connector.
    client = TetherClient(full_backlog.url, connect_timeout=30.0, heartbeat=False)
    connecting = threading.Event()
    client.on("state_change", lambda e: connecting.set() if e.current == "connecting" else None)
    _close_ends_every_thread_in_time(client, connecting)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_close_aborts_a_websocket_or_tls_handshake_in_progress_and_leaves_no_thread(
    scheme: str, stall_peer: Callable[[str], StallPeer]
) -> None:
    peer = stall_peer("no-http")
    url = peer.url.replace("ws://", f"{scheme}://")
    client = TetherClient(url, connect_timeout=30.0, heartbeat=False)
    # The upgrade request (or the TLS ClientHello) arrived: the connector waits for the answer.
    _close_ends_every_thread_in_time(client, peer.heard)
    assert peer.stalls.wait_count(1)
