"""The "Metrics" and "Logging" sections of docs/guides/logging.rst (DESIGN §8) hold, and run.

"Testing your app" is run by ``test_testing_plugin.py``; here the Metrics
snippet runs against a real client, every instrument the section names is one
the SDK sees (and no other), and the Logging section's claims hold: the
``NullHandler``, the four field names, ``basicConfig`` showing the records.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest

from tests.support.recorder import eventually
from tether_sync import TetherClient

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "docs" / "guides" / "logging.rst"  # the README points there


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{title}\n{'-' * len(title)}\n") + 1
    end = re.compile(r"\n[^\n]+\n-{3,}\n").search(text, start + len(title) + 2)
    return text[start : end.start() + 1] if end is not None else text[start:]


def _literal_block(section: str) -> str:
    """The first ``::`` block of ``section``, dedented."""
    body = section.split("::\n\n", 1)[1]
    lines = []
    for line in body.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def _named_instruments(section: str) -> Set[str]:
    """Every ``tether.client...`` name in the text, ``{a,b}`` expanded."""
    names: Set[str] = set()
    for literal in re.findall(r"``(tether\.client\.[^`]+)``", section):
        parts = re.split(r"\{([^}]*)\}", literal)
        choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
        names.update("".join(combo) for combo in itertools.product(*choices))
    return names


def test_metrics_snippet_runs_on_a_real_client(tether_server: Any) -> None:
    code = _literal_block(_section("Metrics reference"))
    assert "instrument(client)" in code
    with TetherClient(tether_server.url) as client:
        client.connect(wait=True, timeout=10)
        scope: Dict[str, Any] = {"client": client, "__name__": "__readme__"}
        exec(compile(code, "docs/guides/logging.rst Metrics", "exec"), scope)
        assert not scope["metrics"].active  # the snippet ends with uninstrument()


@pytest.mark.timeout(60)
def test_metrics_section_names_exactly_the_instruments_and_units() -> None:
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from tether_sync.otel import instrument
    from tether_sync.testing import TetherTestServer

    section = _section("Metrics reference")
    named = _named_instruments(section)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with TetherTestServer() as server:
        url = server.url + "?token=s3cr3t"
        with TetherClient(
            url,
            heartbeat={"interval": 0.1, "timeout": 2.0},
            reconnect={"base_delay": 0.05, "max_delay": 0.1},
        ) as client:
            instrument(client, provider, channels=True)
            client.subscribe("c")  # a buffer: its depth is reported per channel
            client.connect(wait=True, timeout=10)
            client.send(1, channel="c").result(timeout=10)
            assert server.reset_all() == 1  # a reconnect, reported by cause
            assert eventually(lambda: client.stats().reconnects == 1)
            assert eventually(lambda: client.stats().last_rtt is not None)
            data = reader.get_metrics_data()
        redacted = server.url + "?token=***"
    assert data is not None
    units: Dict[str, str] = {}
    attributes: List[Dict[str, Any]] = []
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                units[metric.name] = metric.unit
                attributes.extend(dict(p.attributes) for p in metric.data.data_points)
    assert set(units) == named
    # OpenTelemetry's rules: lowercase, dot-separated; UCUM units as the section says.
    assert all(re.fullmatch(r"[a-z][a-z_]*(\.[a-z_]+)+", name) for name in units)
    assert units["tether.client.bytes.sent"] == units["tether.client.bytes.received"] == "By"
    assert units["tether.client.round_trip_time"] == "s"
    assert units["tether.client.connection.duration"] == "s"
    for name, unit in units.items():
        assert unit in ("s", "By") or re.fullmatch(r"\{[a-z]+\}", unit), (name, unit)
    # Attributes: those the section names, the endpoint redacted.
    keys = {k for attrs in attributes for k in attrs}
    assert {"url.full", "tether.protocol"} <= keys
    for key in keys:
        assert f"``{key}``" in section, key
    assert {a["url.full"] for a in attributes} == {redacted}


def test_logging_section_claims_hold() -> None:
    from tether_sync import logfields

    section = _section("Logging reference")
    handlers = logging.getLogger("tether_sync").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    for field in logfields.FIELDS:  # the four attributes, each named
        assert f"``{field}``" in section, field
    assert len(logfields.FIELDS) == 4 and "four extra attributes" in section
    assert "logging.basicConfig(level=logging.INFO)" in section


@pytest.mark.timeout(60)
def test_logging_section_basic_config_shows_the_records(dead_url: str) -> None:
    """``basicConfig(level=INFO)``, as the section says, shows the library's lines."""
    script = textwrap.dedent(
        f"""
        import logging, threading
        from tether_sync import TetherClient

        logging.basicConfig(
            level=logging.INFO, format="%(levelname)s %(client)s %(endpoint)s %(message)s"
        )
        closed = threading.Event()
        client = TetherClient(
            {dead_url + "?token=s3cr3t"!r},
            reconnect={{"base_delay": 0.01, "max_delay": 0.02, "max_attempts": 1}},
        )
        client.on("state_change", lambda e: e.current == "closed" and closed.set())
        client.connect()
        assert closed.wait(20)
        client.close(5)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    failed = [line for line in lines if "connection attempt failed" in line]
    assert failed and failed[0].startswith("WARNING tether-1 " + dead_url + "?token=***")
    assert "s3cr3t" not in done.stderr
