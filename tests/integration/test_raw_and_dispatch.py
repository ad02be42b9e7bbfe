"""Protocol ``raw`` against real servers, and the user-given dispatcher."""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Callable, Dict, Iterator, List

import pytest
from support.recorder import Recorder
from websockets.sync.server import ServerConnection, serve

from tether_sync import Auth, TetherClient
from tether_sync.server import TetherServer, mint_token


@pytest.fixture
def header_echo_server() -> Iterator[Dict[str, Any]]:
    """A plain websockets server that records handshake headers and echoes frames."""
    seen: Dict[str, Any] = {"headers": Recorder(), "frames": []}

    def handler(conn: ServerConnection) -> None:
        seen["headers"](dict(conn.request.headers) if conn.request else {})
        for message in conn:
            if message == "hang up":
                return  # closes with 1000: the client reconnects
            seen["frames"].append(message)
            conn.send(message)

    with serve(handler, "127.0.0.1", 0) as server:
        port = server.socket.getsockname()[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        seen["url"] = f"ws://127.0.0.1:{port}/raw"
        yield seen
        server.shutdown()
        thread.join(5)


@pytest.mark.timeout(30)
def test_raw_frames_go_out_as_given_and_come_back_on_default(
    header_echo_server: Dict[str, Any], make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(header_echo_server["url"], protocol="raw")
    inbox = client.subscribe("default")
    messages = Recorder()
    client.on("message", messages)
    client.connect(wait=True, timeout=5)
    client.send("plain text")
    client.send(b"\x00\xffbinary")
    client.send({"json": [1, 2]})
    assert [inbox.get(timeout=5) for _ in range(3)] == [
        "plain text",
        b"\x00\xffbinary",
        '{"json":[1,2]}',
    ]
    assert header_echo_server["frames"] == ["plain text", b"\x00\xffbinary", '{"json":[1,2]}']
    assert messages.wait_count(3)
    assert {m.channel for m in messages.snapshot()} == {"default"}


@pytest.mark.timeout(30)
def test_raw_auth_token_goes_in_the_handshake_header_at_every_connect(
    header_echo_server: Dict[str, Any], make_client: Callable[..., TetherClient]
) -> None:
    issued: List[str] = []

    def get_token() -> str:
        issued.append(f"tok-{len(issued)}")
        return issued[-1]

    client = make_client(
        header_echo_server["url"], protocol="raw", auth=Auth(get_token, token_ttl=0.001)
    )
    opens = Recorder()
    client.on("open", opens)
    client.connect(wait=True, timeout=5)
    headers = header_echo_server["headers"]
    assert headers.wait_count(1)
    client.send("hang up")
    assert headers.wait_count(2)
    # token_ttl is tiny, so each connect fetched a new token for its header.
    assert [h["authorization"] for h in headers.snapshot()] == ["Bearer tok-0", "Bearer tok-1"]


@pytest.mark.timeout(30)
def test_raw_in_band_rotation_message(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    def rotation(token: str) -> Dict[str, str]:
        return {"type": "tether:auth", "token": token}

    tokens = [mint_token(ttl=300), mint_token("second", ttl=300)]
    client = make_client(
        tether_server.url,
        protocol="raw",
        auth=Auth(lambda: tokens.pop(0), header=None, message=rotation),
    )
    refreshed = Recorder()
    client.on("auth_refreshed", refreshed)
    client.connect(wait=True, timeout=5)
    client.refresh_auth(timeout=5)
    client.refresh_auth(timeout=5)
    assert tether_server.wait_for(lambda: len(tether_server.received(type="tether:auth")) == 2, 5)
    assert tether_server.all_connections[0].auth_sub == "second"
    assert refreshed.wait_count(2)


@pytest.mark.timeout(30)
def test_user_dispatcher_runs_every_callback_on_its_thread(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
    ran_on: List[str] = []

    def ui_loop() -> None:  # stands in for a GUI's main loop
        while (task := tasks.get()) is not None:
            task()

    ui = threading.Thread(target=ui_loop, name="fake-ui")
    ui.start()
    try:
        client = make_client(tether_server.url, dispatcher=tasks.put)
        got = Recorder()

        def on_payload(payload: Any) -> None:
            ran_on.append(threading.current_thread().name)
            got(payload)

        client.on("open", lambda e: ran_on.append(threading.current_thread().name))
        client.subscribe("ui", on_payload)
        client.connect(wait=True, timeout=5)
        for i in range(5):
            client.send(i, channel="ui")
        assert got.wait_count(5)
        assert got.snapshot() == list(range(5))
        assert set(ran_on) == {"fake-ui"}
    finally:
        tasks.put(None)
        ui.join(5)


def test_json_payloads_keep_their_shape(
    tether_server: TetherServer, make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(tether_server.url)
    inbox = client.subscribe("shape")
    client.connect(wait=True, timeout=5)
    payloads: List[Any] = [None, 0, "é ☃", [1, {"a": None}], {"nested": {"x": 1.5}}]
    for p in payloads:
        client.send(p, channel="shape")
    assert [inbox.get(timeout=5) for _ in payloads] == payloads
    assert tether_server.data_payloads("shape") == payloads
    assert json.loads(tether_server.received(type="data")[0].raw)["channel"] == "shape"


@pytest.mark.timeout(30)
def test_http_error_on_handshake_goes_through_the_reconnect_path(
    make_client: Callable[..., TetherClient],
) -> None:
    """A 403 (or 503) on the upgrade is retried with backoff like any failure."""
    from websockets.http11 import Response
    from websockets.sync.server import Request

    answers = Recorder()

    def refuse_twice(conn: ServerConnection, request: Request) -> Response | None:
        answers(request.path)
        if len(answers.snapshot()) <= 2:
            return conn.respond(403 if len(answers.snapshot()) == 1 else 503, "go away\n")
        return None  # the third handshake is accepted

    def handler(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(message)

    with serve(handler, "127.0.0.1", 0, process_request=refuse_twice) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        client = make_client(url, protocol="raw")
        attempts = Recorder()
        errors = Recorder()
        client.on("reconnecting", attempts)
        client.on("error", errors)
        client.connect(wait=True, timeout=10)
        assert [e.attempt for e in attempts.snapshot()] == [1, 2]
        inbox = client.subscribe("default")
        client.send("through")
        assert inbox.get(timeout=5) == "through"
        client.close()
        server.shutdown()
        thread.join(5)


@pytest.mark.timeout(30)
def test_user_callables_never_run_on_the_io_thread(
    header_echo_server: Dict[str, Any],
    tether_server: TetherServer,
    make_client: Callable[..., TetherClient],
) -> None:
    seen = Recorder()

    def headers() -> Dict[str, str]:
        seen(("headers", threading.current_thread().name))
        return {"X-Trace": "1"}

    client = make_client(header_echo_server["url"], protocol="raw", headers=headers)
    client.connect(wait=True, timeout=5)
    assert header_echo_server["headers"].wait_count(1)
    assert header_echo_server["headers"].snapshot()[0]["x-trace"] == "1"

    def rotation(token: str) -> Dict[str, str]:
        seen(("message", threading.current_thread().name))
        return {"type": "tether:auth", "token": token}

    def get_token() -> str:
        seen(("get_token", threading.current_thread().name))
        return mint_token(ttl=300)

    rotating = make_client(
        tether_server.url, protocol="raw", auth=Auth(get_token, header=None, message=rotation)
    )
    rotating.connect(wait=True, timeout=5)
    rotating.refresh_auth(timeout=5)
    assert dict(seen.snapshot()) == {
        "headers": "tether-connect",
        "get_token": "tether-auth",
        "message": "tether-auth",
    }
