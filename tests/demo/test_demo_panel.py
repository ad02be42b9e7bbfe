"""``tether-sync demo`` end to end: the page in headless Chromium shows the client recover.

Everything is checked by what the page shows (Playwright's ``expect`` waits with a
timeout; nothing sleeps). A screenshot of the panel after the steps goes to
``artifacts/panel.png``.
"""

from __future__ import annotations

import http.client
import re
import signal
import time
from pathlib import Path
from typing import Any, Tuple
from urllib.parse import urlsplit

import pytest

# ``Proc`` (tests/demo/conftest.py) is what the ``demo`` fixture's first item is.
Proc = Any
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def test_panel_shows_rotation_recovery_replay_and_backpressure(
    demo: Tuple[Proc, str], browser: Any
) -> None:
    from playwright.sync_api import expect

    _, url = demo
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        state = page.get_by_test_id("state")
        log = page.get_by_test_id("event-log")
        expect(state).to_have_text("open", timeout=10_000)
        expect(page.locator("#panel-link")).to_have_text("panel: live", timeout=5_000)

        # Force token refresh: +1 rotation, over the open socket, no close.
        rotations = page.get_by_test_id("rotations")
        expect(rotations).to_have_text("0")
        page.get_by_role("button", name="Force token refresh").click()
        expect(rotations).to_have_text("1", timeout=5_000)
        rotated = log.locator("li[data-kind=auth]", has_text="rotated over the open socket")
        expect(rotated).to_have_count(1)
        expect(log.locator("li[data-kind=close]")).to_have_count(0)
        expect(state).to_have_text("open")

        # Kill connection: reset without a close frame, backoff, reopen.
        page.get_by_role("button", name="Kill connection").click()
        expect(log.locator("li[data-kind=close]", has_text="1006")).to_have_count(1, timeout=5_000)
        expect(
            log.locator("li[data-kind=state_change]", has_text="open → reconnecting")
        ).to_have_count(1)
        expect(log.locator("li[data-kind=reconnecting]", has_text="attempt 1")).to_have_count(1)
        expect(state).to_have_text("open", timeout=10_000)
        expect(page.get_by_test_id("last-attempts")).to_have_text(re.compile(r"^[1-9]\d*$"))
        expect(page.get_by_test_id("reconnects")).to_have_text("1")
        expect(page.get_by_test_id("timeline").locator(".attempt")).not_to_have_count(0)

        # Offline: a burst queues, then drains in order after the server is back.
        page.get_by_test_id("offline-seconds").fill("3")
        page.get_by_role("button", name="Go offline").click()
        expect(state).to_have_text("reconnecting", timeout=5_000)
        page.get_by_test_id("burst-count").fill("25")
        page.get_by_role("button", name="Send burst").click()
        queue_depth = page.get_by_test_id("queue-depth")
        expect(queue_depth).to_have_text("25", timeout=5_000)
        expect(page.get_by_test_id("attempt")).not_to_have_text("0")
        expect(state).to_have_text("open", timeout=15_000)
        expect(queue_depth).to_have_text("0", timeout=5_000)
        burst_row = page.locator("#channels tr[data-channel=burst]")
        expect(burst_row.locator("td").first).to_have_text("25", timeout=5_000)

        # Flood 500 into the slow subscriber: the inbound drop counter rises.
        dropped = page.get_by_test_id("dropped-inbound")
        expect(dropped).to_have_text("0")
        page.get_by_test_id("flood-count").fill("500")
        page.get_by_role("button", name="Flood").click()
        expect(dropped).not_to_have_text("0", timeout=10_000)
        expect(log.locator("li[data-kind=backpressure]").first).to_contain_text("dropped")
        expect(page.locator("#channels tr[data-channel=flood] td").nth(1)).not_to_have_text("0")

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "panel.png"), full_page=True)
    finally:
        page.close()


def _open_event_stream(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    conn.request("GET", "/events")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    # Read until the first update arrived: the stream is live and held open.
    seen = b""
    while b"event: update" not in seen:
        chunk = response.fp.readline()
        assert chunk, "the event stream ended early"
        seen += chunk
    return conn


def _post(url: str, action: str, body: str) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request("POST", f"/api/{action}", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("signum", "offline"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGINT", "SIGTERM", "SIGINT-while-offline-with-queue"],
)
def test_demo_stops_cleanly_on_signal(demo: Tuple[Proc, str], signum: int, offline: bool) -> None:
    proc, url = demo
    # A browser's event stream is open: shutdown must not wait for it.
    stream = _open_event_stream(url)
    if offline:
        # A restart timer is pending and the queue cannot drain: neither may hold it up.
        _post(url, "offline", '{"seconds": 30}')
        _post(url, "burst", '{"count": 50}')
    try:
        started = time.monotonic()
        proc.popen.send_signal(signum)
        assert proc.wait(timeout=8) == 0
        took = time.monotonic() - started
    finally:
        stream.close()
    assert took < 5, f"shutdown took {took:.1f}s"
    proc.err.expect(lambda line: "stopping" in line, timeout=2)
    errors = [line for line in proc.err.seen if "Traceback" in line or "ERROR" in line]
    assert not errors, proc.err.seen
