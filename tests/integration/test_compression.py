"""``TetherClient(compression="deflate")``: permessage-deflate (RFC 7692) end to end.

Against three independent implementations of the server side: the bundled server,
python-websockets' threaded server and Node's ``ws``. A :class:`CountingProxy`
between client and server counts the bytes really on the wire, so "compressed"
is measured, not assumed. A hand-made peer sends what no real server does: a
deflate bomb and extension answers that break the RFC.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional

import pytest
from support.counting_proxy import CountingProxy
from support.deflate_peer import DeflatePeer, compressed, deflate_bomb, server_frame

from tether_sync import TetherClient
from tether_sync.events import CloseEvent, ErrorEvent
from tether_sync.exceptions import ProtocolError
from tether_sync.protocol.deflate import client_offer
from tether_sync.protocol.frames import OP_BINARY, OP_CLOSE, OP_TEXT

MiB = 2**20
REPO = Path(__file__).resolve().parents[2]
CONNECT_ARGS = ("--raw", "--compression", "deflate")
WS_ECHO_JS = REPO / "tests" / "support" / "ws_echo.js"


def _payload() -> List[Dict[str, Any]]:
    """A JSON document of a little over 1 MiB (quotes, the kind of thing people send)."""
    return [
        {"seq": i, "symbol": f"SYM{i % 97}", "bid": i * 0.5, "ask": i * 0.5 + 0.25, "ok": True}
        for i in range(16000)
    ]


class Echo(NamedTuple):
    """A running echo server: where it listens, how to talk to it, what it saw."""

    name: str
    host: str
    port: int
    protocol: str  # the client protocol to use: "tether" (bundled) or "raw"
    # Per connection, the server's side of the negotiation: the Sec-WebSocket-Extensions
    # it answered (websockets, ws), or, for the bundled server, which records the
    # request's headers, the offer it got (its answer shows in the bytes on the wire).
    extensions: Callable[[], List[Optional[str]]]


# ---------------------------------------------------------------- servers


@contextlib.contextmanager
def _websockets_echo(compression: Optional[str]) -> Iterator[Echo]:
    from websockets.sync.server import ServerConnection, serve

    agreed: List[Optional[str]] = []

    def handler(conn: ServerConnection) -> None:
        assert conn.response is not None
        agreed.append(conn.response.headers.get("Sec-WebSocket-Extensions"))
        for message in conn:
            conn.send(message)

    with serve(
        handler, "127.0.0.1", 0, compression=compression, max_size=64 * MiB, ping_interval=None
    ) as server:
        thread = threading.Thread(target=server.serve_forever, name="ws-echo", daemon=True)
        thread.start()
        try:
            yield Echo(
                "websockets", "127.0.0.1", server.socket.getsockname()[1], "raw", agreed.copy
            )
        finally:
            server.shutdown()
            thread.join(10)


def _bundled_echo() -> Iterator[Echo]:
    from tether_sync.server import TetherServer

    server = TetherServer(port=0, compression="deflate", max_size=64 * MiB)
    server.start()

    def agreed() -> List[Optional[str]]:
        return [conn.headers.get("sec-websocket-extensions") for conn in server.all_connections]

    try:
        yield Echo("bundled", "127.0.0.1", server.port, "tether", agreed)
    finally:
        server.stop()


def _node_modules() -> Path:
    """A directory holding ``ws`` (npm-installed once, then cached)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tether-sync-node"
    prefix = Path(os.environ.get("TETHER_NODE_PREFIX", default))
    modules = prefix / "node_modules"
    if not (modules / "ws" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not (apt-get install npm)")
        prefix.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), "ws@8"],
            capture_output=True,
            text=True,
            timeout=50,  # inside the test's 60 s
        )
        if proc.returncode != 0:
            pytest.fail(f"npm install ws failed:\n{proc.stdout}\n{proc.stderr}")
    return modules


def _node_echo() -> Iterator[Echo]:
    node = shutil.which("node")
    if node is None:
        message = "node is not installed (apt-get install nodejs npm): no Node ws peer"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {message}")
        pytest.skip(message)
    env = dict(os.environ, NODE_PATH=str(_node_modules()))
    proc = subprocess.Popen(
        [node, str(WS_ECHO_JS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdin is not None
    agreed: List[Optional[str]] = []
    ready = threading.Event()
    port: List[int] = []

    def read() -> None:  # the server's stdout: its port, then one line per connection
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            if "port" in record:
                port.append(record["port"])
                ready.set()
            else:
                agreed.append(record["extensions"] or None)
        ready.set()

    reader = threading.Thread(target=read, name="node-stdout", daemon=True)
    reader.start()
    try:
        assert ready.wait(30) and port, "the node ws echo server did not start"
        yield Echo("node-ws", "127.0.0.1", port[0], "raw", agreed.copy)
    finally:
        proc.stdin.close()  # the script exits at EOF on stdin
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        reader.join(5)


@pytest.fixture(params=["bundled", "websockets", "node-ws"])
def echo(request: pytest.FixtureRequest) -> Iterator[Echo]:
    if request.param == "bundled":
        yield from _bundled_echo()
    elif request.param == "websockets":
        with _websockets_echo("deflate") as server:
            yield server
    else:
        yield from _node_echo()


@pytest.fixture
def plain_websockets() -> Iterator[Echo]:
    """python-websockets without compression: it declines every offer."""
    with _websockets_echo(None) as server:
        yield server


@pytest.fixture
def proxy_to() -> Iterator[Callable[[Echo], CountingProxy]]:
    made: List[CountingProxy] = []

    def factory(server: Echo) -> CountingProxy:
        proxy = CountingProxy(server.host, server.port)
        made.append(proxy)
        return proxy

    yield factory
    for proxy in made:
        proxy.close()


# ---------------------------------------------------------------- helpers


class Inbox:
    """What the client received, as decoded JSON, in order, with a condition to wait on."""

    def __init__(self) -> None:
        self.items: List[Any] = []
        self._cond = threading.Condition()

    def __call__(self, payload: Any) -> None:
        with self._cond:
            self.items.append(json.loads(payload) if isinstance(payload, str) else payload)
            self._cond.notify_all()

    def wait(self, n: int, timeout: float = 20.0) -> List[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= n, timeout), (
                f"received {len(self.items)} of {n} messages"
            )
            return list(self.items)


def _open(
    make_client: Callable[..., TetherClient], url: str, protocol: str, inbox: Inbox, **options: Any
) -> TetherClient:
    client = make_client(url, protocol=protocol, **options)
    client.subscribe("chat" if protocol == "tether" else "default", inbox)
    client.connect(wait=True, timeout=10)
    return client


def _send(client: TetherClient, protocol: str, payload: Any) -> None:
    if protocol == "tether":
        client.send(payload, channel="chat")
    else:
        client.send(payload)


# ---------------------------------------------------------------- tests


def test_one_mib_json_crosses_compressed_both_ways(
    echo: Echo, proxy_to: Callable[[Echo], CountingProxy], make_client: Callable[..., TetherClient]
) -> None:
    proxy = proxy_to(echo)
    inbox = Inbox()
    client = _open(make_client, proxy.url, echo.protocol, inbox, compression="deflate")
    payload = _payload()
    assert len(json.dumps(payload, separators=(",", ":"))) > MiB
    before = proxy.counts()
    _send(client, echo.protocol, payload)
    assert inbox.wait(1)[0] == payload
    up, down = (after - start for after, start in zip(proxy.counts(), before))
    # JSON like this deflates about 8:1; uncompressed it would be > 1 MiB each way.
    assert up < MiB // 4, f"{up} bytes went up for a 1 MiB message"
    assert down < MiB // 4, f"{down} bytes came down for a 1 MiB message"
    agreed = echo.extensions()[0]
    assert agreed is not None and "permessage-deflate" in agreed


def test_context_takeover_across_many_messages(
    echo: Echo, proxy_to: Callable[[Echo], CountingProxy], make_client: Callable[..., TetherClient]
) -> None:
    proxy = proxy_to(echo)
    inbox = Inbox()
    client = _open(make_client, proxy.url, echo.protocol, inbox, compression="deflate")
    # Messages over the threshold that resemble each other: with context takeover
    # each one is mostly a back-reference into the previous one.
    messages = [
        {
            "n": i,
            "rows": [{"name": f"row {j}", "value": j * 7, "flag": j % 3 == 0} for j in range(40)],
        }
        for i in range(300)
    ]
    one = zlib.compressobj(6, zlib.DEFLATED, -12)  # a fresh context, 4 KiB window
    alone = len(one.compress(json.dumps(messages[0]).encode()) + one.flush(zlib.Z_SYNC_FLUSH))
    assert len(json.dumps(messages[0])) > 1024
    before = proxy.counts()
    for message in messages:
        _send(client, echo.protocol, message)
    assert inbox.wait(len(messages)) == messages  # every one inflated, in order
    up, down = (after - start for after, start in zip(proxy.counts(), before))
    # Without context takeover each would cost about `alone` bytes (plus framing).
    assert up < len(messages) * alone / 3, (up, alone)
    assert down < len(messages) * alone / 3, (down, alone)


def test_compression_is_off_by_default(
    proxy_to: Callable[[Echo], CountingProxy], make_client: Callable[..., TetherClient]
) -> None:
    # A server that would compress, and a client left at its default: no offer,
    # so the 1 MiB message crosses uncompressed (and fine).
    with _websockets_echo("deflate") as server:
        proxy = proxy_to(server)
        inbox = Inbox()
        client = _open(make_client, proxy.url, "raw", inbox)
        payload = _payload()
        client.send(payload)
        assert inbox.wait(1)[0] == payload
        up, down = proxy.counts()
        assert up > MiB and down > MiB
        assert server.extensions() == [None]
    peer = DeflatePeer(answer=None, scripts=[b""])
    try:
        make_client(peer.url, protocol="raw").connect()
        assert peer.wait(handshakes=1)
        assert peer.offers[0] is None  # no Sec-WebSocket-Extensions at all
        make_client(peer.url, protocol="raw", compression="deflate").connect()
        assert peer.wait(handshakes=2)
        assert peer.offers[1] == client_offer() == "permessage-deflate; client_max_window_bits=12"
    finally:
        peer.close()


def test_a_server_that_declines_runs_uncompressed(
    plain_websockets: Echo,
    proxy_to: Callable[[Echo], CountingProxy],
    make_client: Callable[..., TetherClient],
) -> None:
    proxy = proxy_to(plain_websockets)
    inbox = Inbox()
    client = _open(make_client, proxy.url, "raw", inbox, compression="deflate")
    payload = _payload()
    client.send(payload)
    client.send({"small": True})
    assert inbox.wait(2) == [payload, {"small": True}]
    up, down = proxy.counts()
    assert up > MiB and down > MiB  # nothing was compressed
    assert plain_websockets.extensions() == [None]


def test_zip_bomb_is_refused_with_1009_never_inflated_and_the_client_reconnects(
    make_client: Callable[..., TetherClient],
) -> None:
    bomb = deflate_bomb()  # ~1 MiB on the wire, 1 GiB inflated
    assert len(bomb) < 2 * MiB
    peer = DeflatePeer(
        answer="permessage-deflate",
        scripts=[
            server_frame(OP_BINARY, bomb, rsv1=True),
            server_frame(OP_TEXT, compressed('{"still": "here"}'), rsv1=True),
        ],
    )
    closes: List[CloseEvent] = []
    inbox = Inbox()
    try:
        client = make_client(
            peer.url, protocol="raw", compression="deflate", max_message_size=2 * MiB
        )
        client.on("close", closes.append)
        client.subscribe("default", inbox)
        tracemalloc.start()
        try:
            client.connect()
            # The second connection's message arrives: the client reconnected.
            assert inbox.wait(1) == [{"still": "here"}]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The 1 GiB was never allocated: the inflater stopped at max_message_size.
        assert peak < 64 * MiB, f"peak {peak / MiB:.1f} MiB while refusing the bomb"
        client.send("pong")
        assert peer.wait(replies=2)
        (op, close_payload), second = peer.replies[:2]
        assert op == OP_CLOSE and int.from_bytes(close_payload[:2], "big") == 1009
        assert second == (OP_TEXT, b"pong")
        assert closes and closes[0].code == 1009
    finally:
        peer.close()


def _inflating_to(size: int) -> bytes:
    """One permessage-deflate payload (fresh compressor) of ``size`` zero bytes: ~1/1000 of it."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    return (c.compress(bytes(size)) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.timeout(120)
def test_300_kib_of_compressed_messages_cost_a_few_max_message_sizes_not_hundreds(
    make_client: Callable[..., TetherClient],
) -> None:
    # Before: one 256 KiB read completed ~250 messages of 1 MiB each, all
    # inflated at once before the client could push back: 175 MiB peak here
    # (450 MB with the default limit and text). Now a compressed connection
    # reads no more than can inflate to about max_message_size at a time.
    limit = MiB
    one = _inflating_to(limit - 1024)  # each message is legal: just under the limit
    count = (300 * 1024) // len(one)
    peer = DeflatePeer(
        answer="permessage-deflate; server_no_context_takeover",
        scripts=[
            b"".join(server_frame(OP_BINARY, one, rsv1=True) for _ in range(count))
            # ... then one that inflates past the limit (a bomb: 64 KiB for 64 MiB).
            + server_frame(OP_BINARY, _inflating_to(64 * MiB), rsv1=True),
            server_frame(OP_TEXT, compressed('{"still": "here"}'), rsv1=True),
        ],
    )
    sizes: List[int] = []
    texts: List[str] = []
    cond = threading.Condition()  # guards sizes and texts
    closes: List[CloseEvent] = []
    errors: List[BaseException] = []

    def on_message(payload: Any) -> None:
        with cond:
            if isinstance(payload, str):
                texts.append(payload)
            else:
                sizes.append(len(payload))
            cond.notify_all()

    try:
        # One message held at a time (a consumer's buffer is counted in messages:
        # its bound is the user's to choose; the read is the client's).
        client = make_client(
            peer.url, protocol="raw", compression="deflate", max_message_size=limit
        )
        client.on("close", closes.append)
        client.on("error", lambda e: errors.append(e.error))
        client.subscribe("default", on_message, buffer_size=1)
        tracemalloc.start()
        try:
            client.connect()
            with cond:
                assert cond.wait_for(lambda: len(sizes) >= count and texts, 60), (
                    f"received {len(sizes)} of {count}, then {texts}"
                )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 10 * limit, f"peak {peak / MiB:.1f} MiB for 300 KiB on the wire"
        # Every legal message arrived whole; the bomb cost the connection (1009),
        # and the client came back for the next one.
        assert sizes == [limit - 1024] * count
        assert texts == ['{"still": "here"}']
        assert closes and closes[0].code == 1009
        assert any(getattr(e, "close_code", None) == 1009 for e in errors)
        assert peer.wait(replies=1)
        op, close_payload = peer.replies[0]
        assert op == OP_CLOSE and int.from_bytes(close_payload[:2], "big") == 1009
    finally:
        peer.close()


@pytest.mark.parametrize(
    "answer",
    [
        "permessage-deflate; client_max_window_bits=15",  # more than the 12 offered
        "x-webkit-deflate-frame",  # an extension nobody offered
        "permessage-deflate; server_max_window_bits=99",  # out of range
        "permessage-deflate; bogus_param",
    ],
)
def test_a_bad_extension_answer_fails_the_attempt_and_the_client_retries(
    answer: str, make_client: Callable[..., TetherClient]
) -> None:
    peer = DeflatePeer(answer=answer, scripts=[b""])
    errors: List[BaseException] = []
    got_error = threading.Event()

    def on_error(event: ErrorEvent) -> None:
        errors.append(event.error)
        got_error.set()

    try:
        client = make_client(peer.url, protocol="raw", compression="deflate")
        client.on("error", on_error)
        opened = threading.Event()
        client.on("open", lambda _: opened.set())
        client.connect()
        assert peer.wait(handshakes=3), "the client did not retry after a bad answer"
        assert got_error.wait(10)
        assert isinstance(errors[0], ProtocolError) and errors[0].close_code == 1002
        assert not opened.is_set()
    finally:
        peer.close()


def test_compression_option_is_validated() -> None:
    bad: Any
    for bad in ("gzip", "Deflate", True, 1, ""):
        with pytest.raises(ValueError, match="compression"):
            TetherClient("ws://127.0.0.1:9/", compression=bad)


def test_connect_cli_compression_deflate(
    proxy_to: Callable[[Echo], CountingProxy],
) -> None:
    with _websockets_echo("deflate") as server:
        proxy = proxy_to(server)
        line = json.dumps({"text": "tether " * 1000})  # 7 kB: above the threshold
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, "-m", "tether_sync", "connect", proxy.url, *CONNECT_ARGS],
            input=line + "\n",
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stdout.splitlines() == [line]  # --raw: no channel prefix
        assert server.extensions()[0] is not None
        up, down = proxy.counts()
        assert up < len(line) // 4 + 1024 and down < len(line) // 4 + 1024, (up, down)


def _connections_reach(server: Any, n: int) -> Callable[[], bool]:
    return lambda: bool(server.total_connections == n)


def test_kills_mid_stream_lose_nothing_with_compression(
    make_client: Callable[..., TetherClient],
) -> None:
    # Every reconnect starts a fresh codec on both sides; unacked messages are
    # framed (and compressed) again on the new connection, and deduplicated.
    from tether_sync.server import TetherServer

    server = TetherServer(port=0, compression="deflate", max_size=64 * MiB)
    server.start()
    try:
        client = make_client(server.url, compression="deflate", queue={"max_size": 1000})
        client.connect(wait=True, timeout=10)
        body = "quote " * 300  # 1.8 kB: compressed
        deliveries = []
        for i in range(300):
            deliveries.append(client.send({"i": i, "body": body}, channel="c"))
            if i in (100, 200):
                # A kill while messages are in flight, on a connection that has
                # carried some: its compression contexts are lost with it.
                assert server.wait_for(_connections_reach(server, i // 100), 10)
                assert server.wait_for_connections(1, timeout=10)
                assert server.wait_for_data(i - 50, timeout=10)
                assert server.drop_all() == 1
        for d in deliveries:
            d.result(timeout=20)
        assert server.wait_for_data(300, timeout=10)
        payloads = server.data_payloads("c")
        assert sorted(p["i"] for p in payloads) == list(range(300))  # none lost, none twice
        assert server.total_connections >= 3
    finally:
        server.stop()
