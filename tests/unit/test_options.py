"""Tests of tether_sync.options: frozen option groups, validation and coercion."""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, Dict, List, Type

import pytest

from tether_sync import TetherClient
from tether_sync.options import (
    WS_OPTIONS,
    Auth,
    Backpressure,
    Heartbeat,
    Queue,
    Reconnect,
    coerce,
    coerce_auth,
    coerce_subprotocols,
)

SECRET = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.sig-s3cr3t"


def fetch() -> str:
    return SECRET


# (class, keyword arguments, exception type, option name the message must contain)
BAD: List[Any] = [
    (Reconnect, {"base_delay": 0}, ValueError, "reconnect.base_delay"),
    (Reconnect, {"base_delay": -1.0}, ValueError, "reconnect.base_delay"),
    (Reconnect, {"base_delay": "1"}, TypeError, "reconnect.base_delay"),
    (Reconnect, {"base_delay": True}, TypeError, "reconnect.base_delay"),
    (Reconnect, {"base_delay": math.nan}, ValueError, "reconnect.base_delay"),
    (Reconnect, {"base_delay": math.inf}, ValueError, "reconnect.base_delay"),
    (Reconnect, {"max_delay": 0}, ValueError, "reconnect.max_delay"),
    (Reconnect, {"max_delay": -5}, ValueError, "reconnect.max_delay"),
    (Reconnect, {"max_delay": None}, TypeError, "reconnect.max_delay"),
    (Reconnect, {"max_delay": math.inf}, ValueError, "reconnect.max_delay"),
    (Reconnect, {"base_delay": 5.0, "max_delay": 1.0}, ValueError, "reconnect.max_delay"),
    (Reconnect, {"max_attempts": -1}, ValueError, "reconnect.max_attempts"),
    (Reconnect, {"max_attempts": 1.5}, TypeError, "reconnect.max_attempts"),
    (Reconnect, {"max_attempts": True}, TypeError, "reconnect.max_attempts"),
    (Reconnect, {"max_attempts": "3"}, TypeError, "reconnect.max_attempts"),
    (Reconnect, {"terminal_codes": 1008}, TypeError, "reconnect.terminal_codes"),
    (Reconnect, {"terminal_codes": "1008"}, TypeError, "reconnect.terminal_codes"),
    (Reconnect, {"terminal_codes": None}, TypeError, "reconnect.terminal_codes"),
    (Reconnect, {"terminal_codes": [1008, "x"]}, TypeError, "reconnect.terminal_codes"),
    (Reconnect, {"terminal_codes": [999]}, ValueError, "reconnect.terminal_codes"),
    (Reconnect, {"terminal_codes": [True]}, TypeError, "reconnect.terminal_codes"),
    (Heartbeat, {"interval": 0}, ValueError, "heartbeat.interval"),
    (Heartbeat, {"interval": -1}, ValueError, "heartbeat.interval"),
    (Heartbeat, {"interval": "15"}, TypeError, "heartbeat.interval"),
    (Heartbeat, {"interval": math.nan}, ValueError, "heartbeat.interval"),
    (Heartbeat, {"timeout": 0.0}, ValueError, "heartbeat.timeout"),
    (Heartbeat, {"timeout": None}, TypeError, "heartbeat.timeout"),
    (Heartbeat, {"timeout": False}, TypeError, "heartbeat.timeout"),
    (Queue, {"max_size": 0}, ValueError, "queue.max_size"),
    (Queue, {"max_size": -3}, ValueError, "queue.max_size"),
    (Queue, {"max_size": 10.0}, TypeError, "queue.max_size"),
    (Queue, {"max_size": True}, TypeError, "queue.max_size"),
    (Queue, {"max_size": None}, TypeError, "queue.max_size"),
    (Queue, {"overflow": "wait"}, ValueError, "queue.overflow"),
    (Reconnect, {"min_uptime": -1.0}, ValueError, "reconnect.min_uptime"),
    (Reconnect, {"min_uptime": float("nan")}, ValueError, "reconnect.min_uptime"),
    (Queue, {"overflow": "sample-oldest"}, ValueError, "queue.overflow"),
    (Queue, {"overflow": "DROP-OLDEST"}, ValueError, "queue.overflow"),
    (Queue, {"overflow": None}, ValueError, "queue.overflow"),
    (Backpressure, {"high_water_mark": 0}, ValueError, "backpressure.high_water_mark"),
    (Backpressure, {"high_water_mark": 1.5}, TypeError, "backpressure.high_water_mark"),
    (Backpressure, {"high_water_mark": "1mb"}, TypeError, "backpressure.high_water_mark"),
    (Backpressure, {"inbound_buffer_size": 0}, ValueError, "backpressure.inbound_buffer_size"),
    (Backpressure, {"inbound_buffer_size": False}, TypeError, "backpressure.inbound_buffer_size"),
    (Backpressure, {"inbound_overflow": "reject"}, ValueError, "backpressure.inbound_overflow"),
    (Backpressure, {"inbound_overflow": "drop"}, ValueError, "backpressure.inbound_overflow"),
    (Auth, {"get_token": "not-callable"}, TypeError, "auth.get_token"),
    (Auth, {"get_token": None}, TypeError, "auth.get_token"),
    (Auth, {"get_token": fetch, "refresh_before": -1}, ValueError, "auth.refresh_before"),
    (Auth, {"get_token": fetch, "refresh_before": "60"}, TypeError, "auth.refresh_before"),
    (Auth, {"get_token": fetch, "token_ttl": 0}, ValueError, "auth.token_ttl"),
    (Auth, {"get_token": fetch, "token_ttl": math.inf}, ValueError, "auth.token_ttl"),
    (Auth, {"get_token": fetch, "timeout": 0}, ValueError, "auth.timeout"),
    (Auth, {"get_token": fetch, "timeout": None}, TypeError, "auth.timeout"),
    (Auth, {"get_token": fetch, "header": 42}, TypeError, "auth.header"),
    (Auth, {"get_token": fetch, "header": b"Authorization"}, TypeError, "auth.header"),
    (Auth, {"get_token": fetch, "message": "tpl"}, TypeError, "auth.message"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "exc", "name"),
    BAD,
    ids=[f"{c.__name__}-{'-'.join(f'{k}={v!r}' for k, v in kw.items())}" for c, kw, _, _ in BAD],
)
def test_bad_value_raises_naming_the_option(
    cls: Type[Any], kwargs: Dict[str, Any], exc: Type[Exception], name: str
) -> None:
    with pytest.raises(exc) as info:
        cls(**kwargs)
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("cls", "kwargs", "exc", "name"),
    [row for row in BAD if row[0] is not Auth],
    ids=[f"{c.__name__}-{'-'.join(kw)}" for c, kw, _, _ in BAD if c is not Auth],
)
def test_bad_value_in_a_dict_raises_naming_the_option(
    cls: Type[Any], kwargs: Dict[str, Any], exc: Type[Exception], name: str
) -> None:
    group = name.split(".")[0]
    with pytest.raises(exc) as info:
        coerce(group, dict(kwargs), cls)
    assert name in str(info.value)


def test_defaults() -> None:
    assert Reconnect() == Reconnect(
        base_delay=0.3,
        max_delay=30.0,
        max_attempts=None,
        terminal_codes=frozenset({1008}),
        min_uptime=2.0,
    )
    assert Heartbeat() == Heartbeat(interval=15.0, timeout=5.0)
    assert Queue() == Queue(max_size=1000, overflow="block")
    assert Backpressure() == Backpressure(
        high_water_mark=1_000_000, inbound_buffer_size=100, inbound_overflow="block"
    )
    auth = Auth(get_token=fetch)
    assert (auth.refresh_before, auth.token_ttl, auth.timeout) == (60.0, 300.0, 10.0)
    assert auth.header == "Authorization" and auth.message is None


@pytest.mark.parametrize("cls", [Reconnect, Heartbeat, Queue, Backpressure])
def test_groups_are_frozen(cls: Type[Any]) -> None:
    group = cls()
    field = dataclasses.fields(group)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(group, field, 1)


def test_good_edge_values_are_accepted() -> None:
    assert Reconnect(base_delay=1, max_delay=1).max_delay == 1  # equal is fine; ints too
    assert Reconnect(max_attempts=0).max_attempts == 0
    assert Reconnect(terminal_codes=[1008, 4001]).terminal_codes == frozenset({1008, 4001})
    assert Reconnect(terminal_codes=()).terminal_codes == frozenset()
    assert Queue(max_size=1, overflow="reject").overflow == "reject"
    assert Auth(get_token=fetch, refresh_before=0).refresh_before == 0
    assert Auth(get_token=fetch, header=None).header is None
    for policy in ("drop-oldest", "sample-oldest", "drop-newest", "block"):
        assert Backpressure(inbound_overflow=policy).inbound_overflow == policy
    for policy in ("drop-oldest", "drop-newest", "reject"):
        assert Queue(overflow=policy).overflow == policy


def test_terminal_codes_become_a_frozenset() -> None:
    codes = Reconnect(terminal_codes=[1008, 1008, 4003]).terminal_codes
    assert isinstance(codes, frozenset)
    assert codes == frozenset({1008, 4003})


# -- coerce --------------------------------------------------------------------


def test_coerce_instance_is_returned_as_is() -> None:
    group = Reconnect(base_delay=1.0, max_delay=2.0)
    assert coerce("reconnect", group, Reconnect) is group


def test_coerce_dict() -> None:
    assert coerce("reconnect", {"base_delay": 1.0, "max_attempts": 4}, Reconnect) == Reconnect(
        base_delay=1.0, max_attempts=4
    )
    assert coerce("heartbeat", {"interval": 2.0}, Heartbeat) == Heartbeat(interval=2.0)
    assert coerce("queue", {"overflow": "reject"}, Queue) == Queue(overflow="reject")
    assert coerce("backpressure", {}, Backpressure) == Backpressure()


def test_coerce_none_true_false() -> None:
    assert coerce("heartbeat", None, Heartbeat) == Heartbeat()
    assert coerce("heartbeat", None, Heartbeat, default_on=False) is None
    assert coerce("heartbeat", True, Heartbeat) == Heartbeat()
    assert coerce("heartbeat", True, Heartbeat, default_on=False) == Heartbeat()
    for cls in (Reconnect, Heartbeat, Queue, Backpressure):
        assert coerce(cls.__name__.lower(), False, cls) is None


def test_coerce_unknown_dict_keys_are_rejected_and_named() -> None:
    with pytest.raises(TypeError) as info:
        coerce("reconnect", {"base_delay": 1.0, "max_dealy": 3.0}, Reconnect)
    assert "reconnect" in str(info.value)
    assert "max_dealy" in str(info.value)
    with pytest.raises(TypeError) as info:
        coerce("queue", {"size": 3, "overflow": "reject", "zz": 1}, Queue)
    assert "size" in str(info.value) and "zz" in str(info.value)


def test_coerce_non_string_dict_keys_are_rejected_and_named() -> None:
    for bad in ({1: 2}, {1: 2, "base_delay": 1.0}):
        with pytest.raises(TypeError, match="reconnect"):
            coerce("reconnect", bad, Reconnect)


@pytest.mark.parametrize("value", [0, 1, "yes", 1.5, [("base_delay", 1.0)], Heartbeat()])
def test_coerce_wrong_type_is_rejected_and_named(value: Any) -> None:
    with pytest.raises(TypeError) as info:
        coerce("reconnect", value, Reconnect)
    assert "reconnect" in str(info.value)


# -- auth ----------------------------------------------------------------------


class CountingSource:
    """A token source that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return SECRET


def test_auth_repr_hides_the_token_and_does_not_call_get_token() -> None:
    source = CountingSource()
    auth = Auth(get_token=source, header="Authorization", message=lambda token: {"token": token})
    for text in (repr(auth), str(auth), f"{auth}", repr([auth])):
        assert SECRET not in text
        assert "s3cr3t" not in text
    assert source.calls == 0


def test_auth_repr_with_function_source() -> None:
    def get_the_token() -> str:
        raise AssertionError("repr must not call get_token")

    text = repr(Auth(get_token=get_the_token))
    assert "get_the_token" in text
    assert text.startswith("Auth(")


def test_coerce_auth() -> None:
    auth = Auth(get_token=fetch)
    assert coerce_auth(auth) is auth
    assert coerce_auth(None) is None
    assert coerce_auth(False) is None
    from_callable = coerce_auth(fetch)
    assert isinstance(from_callable, Auth) and from_callable.get_token is fetch
    from_dict = coerce_auth({"get_token": fetch, "token_ttl": 30.0})
    assert from_dict == Auth(get_token=fetch, token_ttl=30.0)


def test_coerce_auth_rejects_bad_values_naming_auth() -> None:
    for value in (True, "token-string", 42):
        with pytest.raises(TypeError) as info:
            coerce_auth(value)
        assert "auth" in str(info.value)
    with pytest.raises(TypeError) as info:
        coerce_auth({"get_token": fetch, "ttl": 5})
    assert "auth" in str(info.value) and "ttl" in str(info.value)
    with pytest.raises(ValueError, match=r"auth\.timeout"):
        coerce_auth({"get_token": fetch, "timeout": -1})


def test_auth_error_messages_never_hold_a_token_passed_by_mistake() -> None:
    # A token string given where the callable belongs must not be echoed back.
    with pytest.raises(TypeError) as info:
        Auth(get_token=SECRET)  # type: ignore[arg-type]
    assert SECRET not in str(info.value)
    with pytest.raises(TypeError) as info:
        coerce_auth(SECRET)
    assert SECRET not in str(info.value)


# ---------------------------------------------------------------- subprotocols


def test_a_str_subprotocol_is_one_subprotocol_in_the_handshake() -> None:
    # Before: "chat" was offered as "c, h, a, t", and a server that speaks
    # only "chat" picked none of them, so the handshake failed.
    from websockets.sync.server import ServerConnection, serve

    chosen: List[Any] = []
    offered: List[Any] = []
    seen = threading.Event()

    def handler(conn: ServerConnection) -> None:
        assert conn.request is not None
        offered.append(conn.request.headers.get("Sec-WebSocket-Protocol"))
        chosen.append(conn.subprotocol)
        seen.set()
        for _ in conn:
            pass

    with serve(handler, "127.0.0.1", 0, subprotocols=["chat"]) as server:  # type: ignore[list-item]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        client = TetherClient(
            f"ws://127.0.0.1:{port}/", protocol="raw", subprotocols="chat", heartbeat=False
        )
        try:
            client.connect(wait=True, timeout=5)
            assert seen.wait(5)
        finally:
            client.close(timeout=3)
            server.shutdown()
            thread.join(5)
    assert offered == ["chat"]
    assert chosen == ["chat"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ([], None),
        ("chat", ["chat"]),
        (["chat.v2", "chat.v1"], ["chat.v2", "chat.v1"]),
        (("mqtt",), ["mqtt"]),
    ],
)
def test_subprotocols_accepted_forms(value: Any, expected: Any) -> None:
    assert coerce_subprotocols(value) == expected
    client = TetherClient("ws://127.0.0.1:9/", subprotocols=value)
    assert client._config.subprotocols == expected


@pytest.mark.parametrize(
    ("value", "exc", "text"),
    [
        ("chat, superchat", ValueError, "subprotocols[0]"),
        (["chat", "a b"], ValueError, "subprotocols[1]"),
        (["chat", "chat"], ValueError, "twice"),
        ([""], ValueError, "subprotocols[0]"),
        ([b"chat"], TypeError, "subprotocols[0]"),
        ({"chat"}, TypeError, "subprotocols"),
        (7, TypeError, "subprotocols"),
    ],
)
def test_bad_subprotocols_are_refused_at_construction(
    value: Any, exc: Type[Exception], text: str
) -> None:
    with pytest.raises(exc) as info:
        TetherClient("ws://127.0.0.1:9/", subprotocols=value)
    assert text in str(info.value)


# ---------------------------------------------------------------- ws_options


def test_a_misspelt_ws_options_key_is_refused_naming_it() -> None:
    # Before: {"http_proxy_hots": ...} was accepted, and the client went
    # straight to the server, past the proxy the user asked for.
    with pytest.raises(ValueError) as info:
        TetherClient("ws://127.0.0.1:9/", ws_options={"http_proxy_hots": "proxy.example"})
    assert "ws_options" in str(info.value) and "'http_proxy_hots'" in str(info.value)
    assert "http_proxy_host" in str(info.value)  # the valid keys are listed


@pytest.mark.parametrize(
    ("key", "ours"),
    [
        ("timeout", "connect_timeout"),
        ("header", "headers"),
        ("subprotocols", "subprotocols"),
        ("sslopt", "sslopt"),
        ("socket", "socket"),
    ],
)
def test_ws_options_the_client_sets_itself_point_to_its_own_option(key: str, ours: str) -> None:
    with pytest.raises(ValueError) as info:
        TetherClient("ws://127.0.0.1:9/", ws_options={key: 1})
    assert f"ws_options: {key!r}" in str(info.value) and ours in str(info.value)


def test_every_passed_through_ws_option_is_a_websocket_client_connect_keyword() -> None:
    # The list follows websocket-client's own: each key appears in its connect
    # path's source (connect's docstring, proxy_info, the handshake headers).
    import inspect

    import websocket._core as core
    import websocket._handshake as handshake
    import websocket._http as http

    source = "".join(inspect.getsource(m) for m in (core, http, handshake))
    # Keys that websocket-client added after the oldest version installed on a
    # supported Python (1.9.0 is the newest one Python 3.9 gets).
    later = {"suppress_host"}
    for key in sorted(WS_OPTIONS):
        found = f'"{key}"' in source or f"{key}:" in source
        assert found or key in later, key
    options = {"origin": "https://example.com", "redirect_limit": 2, "http_proxy_timeout": 3}
    client = TetherClient("ws://127.0.0.1:9/", ws_options=options)
    assert client._config.ws_options == options


@pytest.mark.parametrize("value", [["origin"], "origin=x", 3])
def test_ws_options_must_be_a_dict(value: Any) -> None:
    with pytest.raises(TypeError, match="ws_options"):
        TetherClient("ws://127.0.0.1:9/", ws_options=value)


# ---------------------------------------------------------------- url


@pytest.mark.parametrize(
    "url",
    [
        "ws://x y/",
        "ws://host/a b",
        "ws://host/\x00",
        "ws:///path",
        "ws://:8080/",
        "ws://user:pw@/",
        "ws://host:0/",
        "ws://host:65536/",
        "ws://host:99999/",
        "ws://host:port/",
        "ws://ho!st/",
        "ws://[::1/",
        "http://host/",
        "host:8080",
        "",
    ],
)
def test_malformed_urls_are_refused_at_construction_naming_url(url: str) -> None:
    with pytest.raises(ValueError) as info:
        TetherClient(url)
    assert "url" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:1/",
        "wss://example.com:65535/ws?room=1",
        "ws://[::1]:8080/",
        "ws://my_host.local/",
        "wss://bücher.example/",
        "ws://user:pw@example.com/",
    ],
)
def test_good_urls_are_accepted(url: str) -> None:
    assert TetherClient(url).url == url


def test_a_url_error_message_never_shows_the_password_or_token() -> None:
    with pytest.raises(ValueError) as info:
        TetherClient("ws://user:hunter2@host:0/?token=s3cr3t")
    message = str(info.value)
    assert "hunter2" not in message and "s3cr3t" not in message
    assert "user:***@host:0" in message and "token=***" in message
    with pytest.raises(ValueError) as info:
        TetherClient(["ws://ok/", "http://u:hunter2@host/?api_key=s3cr3t"])
    message = str(info.value)
    assert "url[1]" in message and "hunter2" not in message and "s3cr3t" not in message
