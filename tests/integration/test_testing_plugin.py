"""The ``tether_server`` pytest plugin (DESIGN §8), tested the way users run it.

``pytester`` runs, in a subprocess, a test file like one a user would write: a
real ``TetherClient`` against the fixture, through every fault it offers. The
same file then runs under pytest-xdist (one server per worker), and a
``conftest.py`` fixture of the same name still wins over the plugin's (the
project's own suite relies on that).
"""

from __future__ import annotations

import importlib.metadata
import textwrap
from pathlib import Path
from typing import List

import pytest

from tests.support.recorder import eventually

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

USER_TESTS = textwrap.dedent(
    """
    import threading
    import time

    import pytest

    from tether_sync import TetherClient

    FAST = {
        "reconnect": {"base_delay": 0.05, "max_delay": 0.2},
        "heartbeat": {"interval": 0.2, "timeout": 0.5},
    }


    class Events:
        def __init__(self, client, *names):
            self.items = []
            self.cond = threading.Condition()
            for name in names:
                client.on(name, self.add)

        def add(self, event):
            with self.cond:
                self.items.append(event)
                self.cond.notify_all()

        def wait(self, predicate, timeout=15.0):
            with self.cond:
                return self.cond.wait_for(lambda: predicate(self.items), timeout)


    def opens(items):
        return sum(type(e).__name__ == "OpenEvent" for e in items)


    def closes(items):
        return [e for e in items if type(e).__name__ == "CloseEvent"]


    def test_url_received_publish(tether_server):
        assert tether_server.url.startswith("ws://127.0.0.1:")
        with TetherClient(tether_server.url) as client:
            inbox = client.subscribe("news")
            client.connect(wait=True, timeout=10)
            client.send({"a": 1}, channel="orders").result(timeout=5)
            assert tether_server.received("orders") == [{"a": 1}]
            assert tether_server.wait_subscribed("news")
            assert tether_server.publish("news", {"b": 2}) == 1
            assert inbox.get(timeout=5) == {"b": 2}


    def test_kill_and_restart(tether_server):
        with TetherClient(tether_server.url, **FAST) as client:
            events = Events(client, "open", "close")
            client.connect(wait=True, timeout=10)
            client.send(1, channel="o").result(timeout=5)
            tether_server.kill()
            assert events.wait(lambda items: closes(items))
            assert closes(events.items)[0].code == 1006  # no close frame: a crash
            later = client.send(2, channel="o")  # queued while the server is down
            assert not later.done()
            tether_server.restart()
            later.result(timeout=15)
            assert events.wait(lambda items: opens(items) == 2)
            assert tether_server.received("o") == [1, 2]


    def test_reset_all(tether_server):
        with TetherClient(tether_server.url, **FAST) as client:
            events = Events(client, "open", "close")
            client.connect(wait=True, timeout=10)
            assert tether_server.reset_all() == 1
            assert events.wait(lambda items: opens(items) == 2)
            assert closes(events.items)[0].code == 1006
            client.send("after", channel="o").result(timeout=5)
            assert tether_server.received("o") == ["after"]


    def test_blackhole(tether_server):
        with TetherClient(tether_server.url, **FAST) as client:
            events = Events(client, "open", "close")
            client.connect(wait=True, timeout=10)
            tether_server.blackhole(2.0)
            # The heartbeat notices the silence (interval + timeout) and closes 4000.
            assert events.wait(lambda items: closes(items), timeout=10)
            assert closes(events.items)[0].code == 4000
            # Once the hole closes, the client is back.
            assert events.wait(lambda items: opens(items) == 2, timeout=20)


    def test_latency(tether_server):
        with TetherClient(tether_server.url) as client:
            client.connect(wait=True, timeout=10)
            tether_server.latency(0.3)
            t0 = time.monotonic()
            client.send("slow", channel="o").result(timeout=10)  # done on the server's ack
            assert time.monotonic() - t0 >= 0.55  # there and back, 0.3 s each way
            tether_server.latency(0)
            client.send("fast", channel="o").result(timeout=10)


    def test_stall_reading(tether_server):
        with TetherClient(tether_server.url) as client:
            client.connect(wait=True, timeout=10)
            tether_server.stall_reading(1.5)
            delivery = client.send("waits", channel="o")
            with pytest.raises(TimeoutError):
                delivery.result(timeout=0.5)  # the server does not read it yet
            assert tether_server.received("o") == []
            delivery.result(timeout=10)
            assert tether_server.received("o") == ["waits"]


    def test_refuse(tether_server):
        tether_server.refuse(2, status=503)
        with TetherClient(tether_server.url, **FAST) as client:
            events = Events(client, "open", "error")
            client.connect(wait=True, timeout=15)
            errors = [e.error for e in events.items if type(e).__name__ == "ErrorEvent"]
            assert getattr(errors[0], "status_code", None) == 503
            assert client.stats().connect_failures == 2


    def test_record_and_replay(tether_server, tmp_path):
        path = tmp_path / "inbound.jsonl"
        recording = tether_server.record(path)
        with TetherClient(tether_server.url) as first:
            inbox = first.subscribe("prices")
            first.connect(wait=True, timeout=10)
            assert tether_server.wait_subscribed("prices")
            for px in (10, 11, 12):
                tether_server.publish("prices", {"px": px})
            assert [inbox.get(timeout=5) for _ in range(3)] == [{"px": 10}, {"px": 11}, {"px": 12}]
        assert recording.stop() == 3

        with TetherClient(tether_server.url) as second:
            replayed = second.subscribe("prices")
            second.connect(wait=True, timeout=10)
            assert tether_server.wait_subscribed("prices")
            assert tether_server.replay(path, speed=None) == 3
            got = [replayed.get(timeout=5) for _ in range(3)]
            assert got == [{"px": 10}, {"px": 11}, {"px": 12}]


    @pytest.mark.tether_server(require_auth=True)
    def test_marker_options(tether_server):
        with TetherClient(tether_server.url, reconnect=False) as client:
            events = Events(client, "error")
            client.connect(wait=True, timeout=10)
            delivery = client.send("no token", channel="o")
            with pytest.raises(Exception):
                delivery.result(timeout=5)  # refused: the server wants a token
            assert tether_server.received("o") == []
    """
)


def _plugin_args() -> List[str]:
    """Load the plugin with -p unless its pytest11 entry point is installed (not twice)."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}
    return [] if "tether_sync" in names else ["-p", "tether_sync.testing"]


@pytest.fixture
def user_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The subprocess imports this checkout's tether_sync, as the suite does.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_user_app=USER_TESTS)
    return pytester


@pytest.mark.timeout(180)
def test_every_fault_with_a_real_client(user_project: pytest.Pytester) -> None:
    result = user_project.runpytest_subprocess(
        *_plugin_args(), "-p", "no:cacheprovider", "--timeout", "60", "-q"
    )
    result.assert_outcomes(passed=9)


@pytest.mark.timeout(180)
def test_under_xdist_one_server_per_worker(user_project: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    result = user_project.runpytest_subprocess(
        *_plugin_args(), "-p", "no:cacheprovider", "--timeout", "60", "-q", "-n", "2"
    )
    result.assert_outcomes(passed=9)


@pytest.mark.timeout(60)
def test_a_conftest_fixture_of_the_same_name_wins(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def tether_server():
            return "the project's own"
        """
    )
    pytester.makepyfile(
        test_own="""
        def test_own(tether_server):
            assert tether_server == "the project's own"
        """
    )
    result = pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def _readme_test(page: str = "README.rst") -> str:
    """The plugin test shown in README's "Testing your app" (or in ``page``)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    block = text.split(".. code-block:: python3\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", ["README.rst", "docs/guides/testing.rst"])
def test_readme_testing_your_app_example(
    page: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = _readme_test(page)
    assert "tether_server.kill()" in code
    assert len(code.splitlines()) <= 20
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_readme_example=code)
    result = pytester.runpytest_subprocess(
        *_plugin_args(), "-p", "no:cacheprovider", "--timeout", "60", "-q"
    )
    result.assert_outcomes(passed=1)


@pytest.mark.timeout(60)
def test_record_client_then_replay(tmp_path: Path) -> None:
    """A real client's inbound stream, recorded, replays into another client."""
    from tether_sync import TetherClient
    from tether_sync.testing import TetherTestServer, read_recording, record_client

    path = tmp_path / "production.jsonl"
    with TetherTestServer() as server:
        with TetherClient(server.url) as client:
            inbox = client.subscribe("ticks")
            recording = record_client(client, path)
            client.connect(wait=True, timeout=10)
            assert server.wait_subscribed("ticks")
            for n in range(5):
                server.publish("ticks", {"n": n})
            assert [inbox.get(timeout=5) for _ in range(5)] == [{"n": n} for n in range(5)]
            # The recorder is a ``message`` handler: it runs on the dispatcher.
            assert eventually(lambda: recording.count == 5)
        assert recording.stop() == 5
        assert [(c, p) for _, c, p in read_recording(path)] == [
            ("ticks", {"n": n}) for n in range(5)
        ]
        with TetherClient(server.url) as other:
            again = other.subscribe("ticks")
            other.connect(wait=True, timeout=10)
            assert server.wait_subscribed("ticks")
            assert server.replay(path, speed=None) == 5
            assert [again.get(timeout=5) for _ in range(5)] == [{"n": n} for n in range(5)]


@pytest.mark.timeout(60)
def test_record_covers_open_connections_once_per_publication(tmp_path: Path) -> None:
    """record() started while clients are connected records each publication once.

    On the code before, only connections opened after record() were recorded
    (a user who records mid-test got an empty file), and a publication that
    went to two subscribers was recorded twice (and replayed twice).
    """
    from tether_sync import TetherClient
    from tether_sync.testing import TetherTestServer, read_recording

    path = tmp_path / "inbound.jsonl"
    with TetherTestServer() as server:
        with TetherClient(server.url) as one, TetherClient(server.url) as two:
            inboxes = [one.subscribe("prices"), two.subscribe("prices")]
            one.connect(wait=True, timeout=10)
            two.connect(wait=True, timeout=10)
            assert server.wait_subscribed("prices", count=2)
            with server.record(path) as recording:  # the connections are open already
                for px in (10, 11, 12):
                    assert server.publish("prices", {"px": px}) == 2
                for inbox in inboxes:
                    assert [inbox.get(timeout=5) for _ in range(3)] == [
                        {"px": 10},
                        {"px": 11},
                        {"px": 12},
                    ]
            assert recording.count == 3
            assert [(c, p) for _, c, p in read_recording(path)] == [
                ("prices", {"px": px}) for px in (10, 11, 12)
            ]
            assert server.replay(path, speed=None) == 3
            for inbox in inboxes:
                assert [inbox.get(timeout=5) for _ in range(3)] == [
                    {"px": 10},
                    {"px": 11},
                    {"px": 12},
                ]


@pytest.mark.timeout(60)
def test_record_a_compressed_connection(tmp_path: Path) -> None:
    """With the server's compression on and a client that asks for it, record() still works.

    On the code before, compressed frames could not be parsed: nothing was
    recorded (a logged exception per connection instead).
    """
    from tether_sync import TetherClient
    from tether_sync.testing import TetherTestServer, read_recording

    path = tmp_path / "inbound.jsonl"
    big = {"text": "compressible " * 200}  # above the 1 KiB threshold: sent compressed
    with TetherTestServer(compression="deflate") as server:
        with TetherClient(server.url, compression="deflate") as client:
            inbox = client.subscribe("news")
            client.connect(wait=True, timeout=10)
            assert server.wait_subscribed("news")
            with server.record(path) as recording:
                for n in range(3):
                    server.publish("news", {**big, "n": n})
                got = [inbox.get(timeout=5) for _ in range(3)]
            assert got == [{**big, "n": n} for n in range(3)]
            assert recording.count == 3
    assert [p["n"] for _, _, p in read_recording(path)] == [0, 1, 2]
