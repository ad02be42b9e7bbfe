"""``Hub`` inside servers written as a user would, checked with the real ``TetherClient`` (§5).

Each server is a few lines around :class:`~tether_sync.server.Hub`: a python-websockets
asyncio server, a Starlette app under uvicorn, a threaded ``websockets.sync`` server and
a Flask-Sock route under werkzeug.
Each must give a client hello-ok, acks, dedupe and resume, and give a client that
sends no hello plain §3. The only test scaffolding in them: a ``gate`` that turns
connections away (so the test knows the client is offline while it publishes) and
a list of the open connections (so the test can end one). The reference TS client,
played on Node's ``ws`` (``ref_client.js``), gets plain §3 from each and from the bundled
server.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest
import websocket

from tether_sync import TetherClient
from tether_sync.server import Hub, MemoryStore, Message, Store

FAST = {"base_delay": 0.05, "max_delay": 0.2}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class App:
    """A user's server around a hub: what it received, and the test's two levers."""

    def __init__(self, store: Store) -> None:
        self.received: List[Message] = []
        self.cond = threading.Condition()
        self.hub = Hub(store=store, on_message=self.on_message)
        self.gate = threading.Event()  # set: new connections are closed at once
        self.closers: List[Callable[[], None]] = []  # end an open connection
        self.url = ""
        self.stop: Callable[[], None] = lambda: None

    def on_message(self, msg: Message) -> None:
        with self.cond:
            self.received.append(msg)
            self.cond.notify_all()

    def wait_received(self, count: int, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.received) >= count, timeout)


def _loop_thread() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="test-loop", daemon=True).start()
    return loop


def start_websockets(app: App) -> None:
    from websockets.asyncio.server import serve

    loop = _loop_thread()

    async def handler(ws: Any) -> None:  # the user's handler: one line around the hub
        if app.gate.is_set():
            await ws.close(1013)
            return
        app.closers.append(lambda: asyncio.run_coroutine_threadsafe(ws.close(1012), loop))
        await app.hub.serve_websockets(ws)

    async def open_server() -> Any:
        return await serve(handler, "127.0.0.1", 0)

    server = asyncio.run_coroutine_threadsafe(open_server(), loop).result(10)
    app.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"

    def stop() -> None:
        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

    app.stop = stop


def start_asgi(app: App) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    async def endpoint(websocket: WebSocket) -> None:  # the user's endpoint
        if app.gate.is_set():
            await websocket.close(1013)
            return
        loop = asyncio.get_running_loop()
        app.closers.append(lambda: asyncio.run_coroutine_threadsafe(websocket.close(1012), loop))
        await app.hub.serve_asgi(websocket)

    starlette_app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    port = _free_port()
    config = uvicorn.Config(
        starlette_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    started = threading.Event()
    while not server.started and thread.is_alive():
        started.wait(0.02)  # uvicorn offers no event for "listening"
    assert server.started
    app.url = f"ws://127.0.0.1:{port}/ws"

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    app.stop = stop


def start_sync(app: App) -> None:
    from websockets.sync.server import serve

    def handler(ws: Any) -> None:  # the user's handler, on its own thread
        if app.gate.is_set():
            ws.close(1013)
            return
        app.closers.append(lambda: ws.close(1012))
        app.hub.serve_sync(ws)

    server = serve(handler, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, name="test-sync-server", daemon=True)
    thread.start()
    app.url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"

    def stop() -> None:
        server.shutdown()
        thread.join(10)

    app.stop = stop


def start_flask_sock(app: App) -> None:
    pytest.importorskip("flask_sock")
    from flask import Flask
    from flask_sock import Sock
    from werkzeug.serving import make_server

    flask_app = Flask(__name__)
    sock = Sock(flask_app)

    @sock.route("/ws")  # type: ignore[misc]
    def tether(ws: Any) -> None:  # the user's Flask-Sock route, on a werkzeug thread
        if app.gate.is_set():
            ws.close(reason=1013)
            return
        app.closers.append(lambda: ws.close(reason=1012))
        app.hub.serve_sync(ws)

    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-werkzeug", daemon=True)
    thread.start()
    app.url = f"ws://127.0.0.1:{server.port}/ws"

    def stop() -> None:
        server.shutdown()
        thread.join(10)

    app.stop = stop


STARTERS = {
    "websockets": start_websockets,
    "asgi": start_asgi,
    "sync": start_sync,
    "flask-sock": start_flask_sock,
}


@pytest.fixture(params=list(STARTERS))
def app(request: Any) -> Iterator[App]:
    made = App(MemoryStore())
    STARTERS[request.param](made)
    try:
        yield made
    finally:
        made.stop()
        made.hub.close()


class Got:
    def __init__(self) -> None:
        self.items: List[Any] = []
        self.cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[List[Any]], bool], timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.items), timeout)


def test_the_real_client_gets_hello_acks_and_resume(app: App) -> None:
    got = Got()
    closes = Got()
    client = TetherClient(app.url, reconnect=FAST)
    client.on("close", closes)
    try:
        client.subscribe("news", got)
        client.connect(wait=True, timeout=10)
        stats = client.stats()
        assert set(stats.extensions) == {"ack", "resume"}  # hello-ok

        # Acks: the Delivery resolves on the server's ack, after on_message.
        assert client.send({"n": 1}, channel="chat").result(timeout=10) is None
        assert client.send({"n": 2}, channel="chat").result(timeout=10) is None
        assert [(m.session, m.seq, m.payload) for m in app.received] == [
            (stats.session_id, 1, {"n": 1}),
            (stats.session_id, 2, {"n": 2}),
        ]
        assert client.stats().acked == 2

        # Live publications (probes until the subscription is in place).
        while not got.wait(lambda items: bool(items), 0.05):
            app.hub.publish("news", "probe")
        for n in range(1, 6):
            app.hub.publish("news", n)
        assert got.wait(lambda items: 5 in items)

        # Offline: what is published meanwhile is recovered on resubscribe.
        app.gate.set()
        app.closers[-1]()
        assert closes.wait(lambda items: bool(items))
        for n in range(6, 11):
            app.hub.publish("news", n)
        app.gate.clear()
        assert got.wait(lambda items: 10 in items, 15)
        assert [item for item in got.items if item != "probe"] == list(range(1, 11))
        assert app.hub.metrics.recovered >= 1
        # Sends after the reconnect continue the session's numbering.
        assert client.send({"n": 3}, channel="chat").result(timeout=10) is None
        assert app.received[-1].seq == 3
    finally:
        client.close(timeout=5)


def _recv_json(ws: websocket.WebSocket) -> Any:
    return json.loads(ws.recv())


def test_a_resend_is_acked_and_not_delivered_again(app: App) -> None:
    ws = websocket.create_connection(app.url, timeout=10)
    try:
        ws.send(json.dumps({"type": "tether:hello", "session": "dup", "features": ["ack"]}))
        assert _recv_json(ws) == {
            "type": "tether:hello-ok",
            "session": "dup",
            "features": ["ack"],
            "acked": 0,
        }
        for seq in (1, 2, 2, 1, 3):
            ws.send(json.dumps({"channel": "c", "type": "data", "payload": seq, "seq": seq}))
        acks: List[int] = []
        while not acks or acks[-1] < 3:
            message = _recv_json(ws)
            assert message["type"] == "tether:ack"
            acks.append(message["seq"])
        assert acks == sorted(acks)
    finally:
        ws.close()
    assert [m.payload for m in app.received] == [1, 2, 3]
    assert app.hub.metrics.duplicates_dropped == 2
    # A new connection of the session learns the highest from hello-ok.
    again = websocket.create_connection(app.url, timeout=10)
    try:
        again.send(json.dumps({"type": "tether:hello", "session": "dup", "features": ["ack"]}))
        assert _recv_json(again)["acked"] == 3
    finally:
        again.close()


def test_a_client_without_hello_gets_plain_section_3(app: App) -> None:
    ws = websocket.create_connection(app.url, timeout=10)
    try:
        ws.send(json.dumps({"type": "tether:ping", "ts": 7}))
        assert _recv_json(ws) == {"type": "tether:pong", "ts": 7}
        ws.send(json.dumps({"channel": "news", "type": "subscribe", "id": "s"}))
        ws.send(json.dumps({"channel": "c", "type": "data", "payload": "x", "id": "1", "seq": 9}))
        ws.send(json.dumps({"type": "tether:ping", "ts": 8}))
        assert _recv_json(ws) == {"type": "tether:pong", "ts": 8}  # no ack, no hello-ok
        assert app.wait_received(1)
        message = app.received[0]
        assert (message.session, message.seq, message.payload) == (None, None, "x")
        app.hub.publish("news", {"k": 1}, id="p1")
        # Plain §3 envelope: no offset, no epoch.
        assert ws.recv() == '{"channel":"news","type":"data","payload":{"k":1},"id":"p1"}'
    finally:
        ws.close()


def test_an_application_error_acks_nothing_and_closes_with_1011() -> None:
    def refuse(msg: Message) -> None:
        raise RuntimeError("database down")

    made = App(MemoryStore())
    made.hub.on_message = refuse
    start_websockets(made)
    ws: Optional[websocket.WebSocket] = None
    try:
        ws = websocket.create_connection(made.url, timeout=10)
        ws.send(json.dumps({"type": "tether:hello", "session": "e", "features": ["ack"]}))
        _recv_json(ws)
        ws.send(json.dumps({"channel": "c", "type": "data", "payload": 1, "seq": 1}))
        frame = ws.recv_frame()
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 1011
        assert made.hub.store.highest("e") == 0
    finally:
        if ws is not None:
            ws.close()
        made.stop()


def test_auth_callable_guards_data_and_its_verdict_is_answered() -> None:
    made = App(MemoryStore())
    made.hub.auth = lambda token: token == "good"
    start_websockets(made)
    ws: Optional[websocket.WebSocket] = None
    try:
        ws = websocket.create_connection(made.url, timeout=10)
        ws.send(json.dumps({"channel": "c", "type": "data", "payload": 0, "id": "early"}))
        assert _recv_json(ws) == {"type": "tether:error", "error": "auth required", "id": "early"}
        ws.send(json.dumps({"type": "tether:auth", "token": "bad"}))
        assert _recv_json(ws) == {"type": "tether:auth-ok", "ok": False}
        ws.send(json.dumps({"type": "tether:auth", "token": "good"}))
        assert _recv_json(ws) == {"type": "tether:auth-ok", "ok": True}
        ws.send(json.dumps({"channel": "c", "type": "data", "payload": 1, "id": "late"}))
        assert made.wait_received(1)
        assert [m.payload for m in made.received] == [1]
    finally:
        if ws is not None:
            ws.close()
        made.stop()


# The reference TS client (tether-ws), played on Node's ``ws``: no hello, plain §3.

REF_CLIENT_JS = Path(__file__).resolve().parent / "ref_client.js"


def _node_modules() -> Path:
    """A directory holding Node's ``ws`` (the one tests/integration/test_compression caches)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tether-sync-node"
    prefix = Path(os.environ.get("TETHER_NODE_PREFIX", default))
    modules = prefix / "node_modules"
    if not (modules / "ws" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: no Node ws client")
        prefix.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), "ws@8"],
            capture_output=True,
            text=True,
            timeout=50,
        )
        if done.returncode != 0:
            pytest.fail(f"npm install ws failed:\n{done.stdout}\n{done.stderr}")
    return modules


class RefClient:
    """``node ref_client.js URL COUNT`` and the JSON lines it prints (what the server sent)."""

    def __init__(self, url: str, count: int) -> None:
        node = shutil.which("node")
        if node is None:
            if os.environ.get("CI"):
                pytest.fail("CI is set but node is not installed: no reference client")
            pytest.skip("node is not installed (apt-get install nodejs npm)")
        env = dict(os.environ, NODE_PATH=str(_node_modules()))
        self.got = Got()
        self.proc = subprocess.Popen(
            [node, str(REF_CLIENT_JS), url, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.reader = threading.Thread(target=self._read, name="ref-client-out", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.got(json.loads(line))

    def messages(self) -> List[Any]:
        with self.got.cond:
            return [m for m in self.got.items if "opened" not in m]

    def disconnect(self) -> None:
        """Close stdin: the client closes with 1000 ``Client disconnect`` and exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.reader.join(10)


def _plain_news(items: List[Any]) -> List[Any]:
    return [m for m in items if m.get("channel") == "news" and m.get("type") == "data"]


def test_the_reference_ts_client_gets_plain_section_3(app: App) -> None:
    client = RefClient(app.url, 20)
    try:
        assert app.wait_received(20)
        # Delivered once each, in order, without session or seq (nothing to dedupe).
        assert [(m.session, m.seq, m.payload) for m in app.received] == [
            (None, None, {"n": n}) for n in range(1, 21)
        ]
        assert client.got.wait(lambda items: any(m.get("type") == "tether:pong" for m in items))
        # Its subscribe is in place once a publication reaches it (probes until then).
        while not client.got.wait(lambda items: bool(_plain_news(items)), 0.05):
            app.hub.publish("news", "probe")
        app.hub.publish("news", {"k": 1}, id="p1")
        assert client.got.wait(lambda items: {"k": 1} in [m.get("payload") for m in items])
        messages = client.messages()
        # Only what §3 knows: no hello-ok, no ack, no tether:subscribed, no offset/epoch.
        assert {m["type"] for m in messages} <= {"tether:pong", "data"}
        assert _plain_news(messages)[-1] == {
            "channel": "news",
            "type": "data",
            "payload": {"k": 1},
            "id": "p1",
        }
    finally:
        client.disconnect()
    # The connection ended (Flask-Sock drops the TCP connection without echoing
    # the close frame: 1006 there, 1000 elsewhere).
    assert "closed" in client.messages()[-1]


def test_the_reference_ts_client_gets_the_echo_from_the_bundled_server() -> None:
    from tether_sync.server import TetherServer

    with TetherServer() as server:
        client = RefClient(server.url, 20)
        try:
            assert server.wait_for_data(20, timeout=10)
            assert server.data_payloads("chat") == [{"n": n} for n in range(1, 21)]
            assert all(r.session is None for r in server.received(type="data"))
            # The reference server's echo of each, in order, then a plain broadcast.
            assert client.got.wait(
                lambda items: len([m for m in items if m.get("channel") == "chat"]) == 20
            )
            server.wait_for(lambda: any("news" in c.subscriptions for c in server.connections))
            server.broadcast("news", {"k": 1})
            assert client.got.wait(lambda items: bool(_plain_news(items)))
            messages = client.messages()
            assert [m["payload"] for m in messages if m.get("channel") == "chat"] == [
                {"n": n} for n in range(1, 21)
            ]
            assert {m["type"] for m in messages} <= {"tether:pong", "data"}
            assert _plain_news(messages) == [
                {"channel": "news", "type": "data", "payload": {"k": 1}, "id": "bc-1"}
            ]
        finally:
            client.disconnect()
