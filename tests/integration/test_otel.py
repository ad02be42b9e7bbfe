"""OpenTelemetry metrics (DESIGN §8): instruments move with 100 sends, a kill -9 and a reconnect.

The server is a real ``tether-sync serve`` subprocess, killed with SIGKILL and
started again on the same port; the metrics are read through the SDK's
``InMemoryMetricReader``, as an exporter would see them.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.support.recorder import eventually
from tests.support.serve_process import ServeProcess
from tether_sync import TetherClient
from tether_sync.otel import instrument


class Metrics:
    """What the reader collected, by instrument name."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        data = reader.get_metrics_data()
        self.points: Dict[str, List[Any]] = {}
        self.units: Dict[str, str] = {}
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                assert sm.scope.name == "tether_sync"
                for metric in sm.metrics:
                    self.points[metric.name] = list(metric.data.data_points)
                    self.units[metric.name] = metric.unit

    def value(self, name: str, **attrs: Any) -> Any:
        """The sum of the points of ``name`` whose attributes include ``attrs``."""
        return sum(
            p.value
            for p in self.points.get(name, [])
            if all(p.attributes.get(k) == v for k, v in attrs.items())
        )

    def count(self, name: str, **attrs: Any) -> int:
        """Histogram samples of ``name`` with ``attrs``."""
        return sum(
            p.count
            for p in self.points.get(name, [])
            if all(p.attributes.get(k) == v for k, v in attrs.items())
        )


@pytest.fixture
def server() -> Iterator[ServeProcess]:
    proc = ServeProcess().start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.mark.timeout(90)
def test_instruments_follow_sends_a_kill_and_a_reconnect(server: ServeProcess) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    token_url = server.url + "?token=very-secret-value"
    client = TetherClient(
        token_url,
        reconnect={"base_delay": 0.05, "max_delay": 0.2},
        heartbeat={"interval": 0.1, "timeout": 2.0},
    )
    states: List[str] = []
    changed = threading.Condition()

    def on_state(event: Any) -> None:
        with changed:
            states.append(event.current)
            changed.notify_all()

    client.on("state_change", on_state)
    handle = instrument(client, provider)
    try:
        client.connect(wait=True, timeout=10)
        deliveries = [client.send({"n": i}, channel="chat") for i in range(100)]
        for d in deliveries:
            d.result(timeout=10)  # acked by the server (it speaks DESIGN §5)
        assert eventually(lambda: client.stats().last_rtt is not None)

        m = Metrics(reader)
        assert m.value("tether.client.messages.sent") == 100
        assert m.value("tether.client.messages.acked") == 100
        assert m.value("tether.client.bytes.sent") > 100 * len('{"n": 99}')
        assert m.units["tether.client.bytes.sent"] == "By"
        assert m.units["tether.client.messages.sent"] == "{message}"
        assert m.value("tether.client.bytes.received") > 0  # hello-ok, acks, echoes, pongs
        assert m.value("tether.client.connection.attempts") == 1
        assert m.value("tether.client.connection.failures") == 0
        assert m.count("tether.client.connection.duration", outcome="success") == 1
        assert m.units["tether.client.round_trip_time"] == "s"
        assert m.count("tether.client.round_trip_time") >= 1
        assert m.value("tether.client.reconnects") == 0
        assert m.value("tether.client.queue.depth") == 0
        # Attributes: the endpoint redacted, the protocol; no channel by default.
        attrs = m.points["tether.client.messages.sent"][0].attributes
        assert attrs["url.full"] == server.url + "?token=***"
        assert attrs["tether.protocol"] == "tether"
        assert "tether.channel" not in m.points["tether.client.inbound.depth"][0].attributes

        # kill -9: the link is lost; sends while down wait in the queue.
        server.kill()
        with changed:
            assert changed.wait_for(lambda: "reconnecting" in states, 10)
        later = [client.send({"n": 100 + i}, channel="chat") for i in range(10)]
        m = Metrics(reader)
        assert m.value("tether.client.queue.depth") == 10
        assert client.stats().last_close is not None
        assert client.stats().last_close[0] == 1006  # no close frame from a killed peer

        server.start()  # same port
        for d in later:
            d.result(timeout=20)
        m = Metrics(reader)
        assert m.value("tether.client.reconnects", cause="connection_lost") == 1
        assert m.value("tether.client.reconnects") == 1
        assert m.value("tether.client.messages.sent") == 110
        attempts = m.value("tether.client.connection.attempts")
        failures = m.value("tether.client.connection.failures")
        assert attempts >= 2 and attempts == failures + 2  # refused while down, then open
        assert m.count("tether.client.connection.duration", outcome="success") == 2
        assert m.count("tether.client.connection.duration", outcome="failure") == failures
        assert m.value("tether.client.queue.depth") == 0
        stats = client.stats()
        assert m.value("tether.client.bytes.sent") == stats.bytes_sent
        assert stats.reconnects_by_cause == {"connection_lost": 1}

        handle.uninstrument()
        assert not handle.active
        assert Metrics(reader).points.get("tether.client.messages.sent", []) == []
    finally:
        client.close(5)


def test_drops_by_direction_and_reason_and_channel_opt_in(make_server: Any) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    client = TetherClient(
        "ws://127.0.0.1:9/",  # never reached: the queue's drop policy acts while not open
        queue={"max_size": 2, "overflow": "drop-newest"},
        reconnect={"base_delay": 10.0, "max_delay": 10.0},
    )
    instrument(client, provider)
    try:
        deliveries = [client.send(i) for i in range(5)]
        assert sum(1 for d in deliveries if d.done() and d.exception() is not None) == 3
        m = Metrics(reader)
        assert (
            m.value("tether.client.messages.dropped", direction="outbound", reason="drop-newest")
            == 3
        )
    finally:
        client.close(1)

    # Inbound, per channel when opted in.
    server = make_server()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    client = TetherClient(server.url)
    instrument(client, provider, channels=True)
    try:
        inbox = client.subscribe("news", buffer_size=1, overflow="drop-oldest")
        client.connect(wait=True, timeout=10)
        for i in range(5):
            client.send(i, channel="news").result(timeout=5)  # echoed back on "news"
        assert eventually(lambda: client.stats().dropped_inbound >= 4)
        m = Metrics(reader)
        assert (
            m.value("tether.client.messages.dropped", direction="inbound", reason="drop-oldest")
            == 4
        )
        assert m.value("tether.client.inbound.depth", **{"tether.channel": "news"}) == 1
        assert inbox.get(timeout=1) == 4
    finally:
        client.close(5)


def test_several_clients_on_one_provider_are_all_reported(tether_server: Any) -> None:
    """Each client instrumented on a provider is reported; instrument() twice counts once.

    OpenTelemetry keeps the first instrument of a name: on the code before,
    the second client's instruments got no callback and it was never reported.
    """
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first = TetherClient(tether_server.url)
    second = TetherClient(tether_server.url + "?room=2")
    twin = TetherClient(tether_server.url)  # the same endpoint as ``first``
    clients = [first, second, twin]
    try:
        handle = instrument(first, provider)
        again = instrument(first, provider)  # twice: counted once
        instrument(second, provider)
        instrument(twin, provider)
        for client, count in zip(clients, (10, 30, 5)):
            client.connect(wait=True, timeout=10)
            for d in [client.send(i, channel="c") for i in range(count)]:
                d.result(timeout=10)
        m = Metrics(reader)
        # ``first`` and ``twin`` share their attributes: one series, their sum.
        assert m.value("tether.client.messages.sent", **{"url.full": tether_server.url}) == 15
        second_url = tether_server.url + "?room=***"
        assert m.value("tether.client.messages.sent", **{"url.full": second_url}) == 30
        assert m.value("tether.client.connection.attempts") == 3

        handle.uninstrument()  # ``again`` still reports ``first``
        m = Metrics(reader)
        assert m.value("tether.client.messages.sent", **{"url.full": tether_server.url}) == 15
        again.uninstrument()  # now only ``first`` stops being reported
        m = Metrics(reader)
        assert m.value("tether.client.messages.sent", **{"url.full": tether_server.url}) == 5
        assert m.value("tether.client.messages.sent", **{"url.full": second_url}) == 30
    finally:
        for client in clients:
            client.close(5)


def test_a_closed_client_once_collected_is_no_longer_reported(tether_server: Any) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    client = TetherClient(tether_server.url)
    handle = instrument(client, provider)
    client.connect(wait=True, timeout=10)
    client.send("x", channel="c").result(timeout=10)
    assert Metrics(reader).value("tether.client.messages.sent") == 1
    client.close(5)
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None  # the instruments do not keep it alive
    assert not handle.active
    assert Metrics(reader).points.get("tether.client.messages.sent", []) == []


GLOBAL_PROVIDER_SCRIPT = """
import sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from tether_sync import TetherClient
from tether_sync.otel import instrument

url = sys.argv[1]
a = TetherClient(url + "a")
instrument(a)  # e.g. at import time, before the application sets its provider
reader = InMemoryMetricReader()
provider = MeterProvider(metric_readers=[reader])
metrics.set_meter_provider(provider)
b = TetherClient(url + "b")
instrument(b)  # the global provider, now the SDK's
c = TetherClient(url + "c")
instrument(c, provider)  # the same provider, passed
for client, n in ((a, 1), (b, 2), (c, 3)):
    client.connect(wait=True, timeout=10)
    for i in range(n):
        client.send(i).result(timeout=10)
sent = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            if m.name == "tether.client.messages.sent":
                for p in m.data.data_points:
                    sent[p.attributes["url.full"][len(url):]] = p.value
for client in (a, b, c):
    client.close(5)
print(sorted(sent.items()))
"""


@pytest.mark.timeout(60)
def test_the_global_provider_before_and_after_the_app_sets_it(tether_server: Any) -> None:
    """Clients instrumented on the global provider, before and after it is set, all report.

    On the code before, only the first one was reported: the others' instruments
    had the same names, and OpenTelemetry kept the first ones' callbacks only.
    """
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_SCRIPT, tether_server.url],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=str(root),
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('a', 1), ('b', 2), ('c', 3)]", done.stderr


def test_histograms_have_buckets_for_seconds(tether_server: Any) -> None:
    """A 1 ms round trip is told apart from a 100 ms one.

    On the code before, the SDK's default boundaries (0, 5, 10, 25 ...: made
    for milliseconds) put every round trip and attempt in one bucket, 0 to 5 s.
    """
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    client = TetherClient(tether_server.url, heartbeat={"interval": 0.05, "timeout": 2.0})
    try:
        instrument(client, provider)
        client.connect(wait=True, timeout=10)
        assert eventually(lambda: client.stats().last_rtt is not None)
        m = Metrics(reader)
        for name in ("tether.client.round_trip_time", "tether.client.connection.duration"):
            (point,) = m.points[name]
            bounds = list(point.explicit_bounds)
            assert bounds[0] <= 0.001 and 1.0 in bounds and bounds[-1] >= 10.0, bounds
            # Loopback: every sample is counted in a bucket ending at or under 0.5 s.
            below_half = sum(c for b, c in zip(bounds, point.bucket_counts) if b <= 0.5)
            assert point.count >= 1 and below_half == point.count
    finally:
        client.close(5)
