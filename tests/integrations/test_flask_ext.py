"""tether_sync.flask.TetherSync: config, one lazy client per process, fork, close."""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import pytest

from .conftest import require_module


@pytest.fixture
def flask() -> Any:
    return require_module("flask", "pip install flask")


def _app(flask: Any, **config: Any) -> Any:
    app = flask.Flask("tether_test_app")
    app.config.update(config)
    return app


def test_init_app_checks_the_config(flask: Any) -> None:
    from tether_sync.flask import TetherSync

    with pytest.raises(RuntimeError, match="TETHER_URL"):
        TetherSync(_app(flask))
    with pytest.raises(TypeError, match="TETHER_OPTIONS"):
        TetherSync(_app(flask, TETHER_URL="ws://127.0.0.1:1/", TETHER_OPTIONS=["x"]))
    with pytest.raises(TypeError, match="nonsense"):
        TetherSync(_app(flask, TETHER_URL="ws://127.0.0.1:1/", TETHER_OPTIONS={"nonsense": 1}))
    with pytest.raises(ValueError, match="queue"):
        TetherSync(
            _app(flask, TETHER_URL="ws://127.0.0.1:1/", TETHER_OPTIONS={"queue": {"max_size": -1}})
        )
    with pytest.raises(ValueError, match="TETHER_CLOSE_TIMEOUT"):
        TetherSync(_app(flask, TETHER_URL="ws://127.0.0.1:1/", TETHER_CLOSE_TIMEOUT=-1))
    ext = TetherSync()
    with pytest.raises(RuntimeError, match="init_app"):
        with _app(flask).app_context():
            ext.client  # noqa: B018


def test_the_client_is_made_on_first_use_and_shared_by_requests(
    flask: Any, tether_server: Any
) -> None:
    from tether_sync.flask import TetherSync

    ext = TetherSync()
    app = _app(flask, TETHER_URL=tether_server.url, TETHER_OPTIONS={"queue": {"max_size": 50}})
    ext.init_app(app)
    clients = []

    @app.post("/send")
    def send() -> Dict[str, Any]:
        clients.append(ext.client)
        ext.send(flask.request.get_json(), channel="web")
        return {"ok": True}

    assert tether_server.connection_count == 0  # nothing connects before the first use
    web = app.test_client()
    for n in range(5):
        assert web.post("/send", json={"n": n}).status_code == 200
    assert len({id(c) for c in clients}) == 1
    assert tether_server.wait_for_data(5, channel="web", timeout=10)
    assert tether_server.data_payloads("web") == [{"n": n} for n in range(5)]
    assert tether_server.total_connections == 1
    with app.app_context():
        assert ext.close(5)
        assert clients[0].state == "closed"
        again = ext.client  # the next use makes a new one
        assert again is not clients[0]
        assert ext.close(5)


def test_a_forked_child_makes_its_own_client(flask: Any, tether_server: Any) -> None:
    from tether_sync.flask import TetherSync

    app = _app(flask, TETHER_URL=tether_server.url)
    ext = TetherSync(app)  # bound to the app: usable without an app context
    parent_client = ext.client
    ext.send({"from": "parent", "n": 0}, channel="fork").result(10)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        report: Dict[str, Any] = {}
        try:
            child_client = ext.client
            report["same"] = child_client is parent_client
            ext.send({"from": "child"}, channel="fork")
            report["flushed"] = child_client.flush(10)
            report["closed"] = ext.close(5)
        except BaseException as exc:
            report["error"] = repr(exc)
        os.write(write_fd, json.dumps(report).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        report = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert report == {"same": False, "flushed": True, "closed": True}
    assert tether_server.wait_for_data(2, channel="fork", timeout=10)
    # The parent's client was not touched by the child and still works.
    assert ext.client is parent_client
    ext.send({"from": "parent", "n": 1}, channel="fork").result(10)
    assert tether_server.wait_for_data(3, channel="fork", timeout=10)
    assert tether_server.data_payloads("fork") == [
        {"from": "parent", "n": 0},
        {"from": "child"},
        {"from": "parent", "n": 1},
    ]
    assert tether_server.total_connections == 2
    assert ext.close(5)
