"""The panel's "kill -9 the server mid-burst": acked versus awaiting an ack, and 0 lost.

In headless Chromium (Playwright's ``expect`` waits with a timeout; nothing sleeps):
the burst starts, the server dies hard a third of the way in and comes back, and
the page shows, from the server's own records, that no number of the burst was lost.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Tuple

import pytest

Proc = Any  # tests/demo/conftest.py Proc: the ``demo`` fixture's first item
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.mark.timeout(90)
def test_kill_9_mid_burst_shows_0_lost(demo: Tuple[Proc, str], browser: Any) -> None:
    from playwright.sync_api import expect

    _, url = demo
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        state = page.get_by_test_id("state")
        expect(state).to_have_text("open", timeout=10_000)
        expect(page.get_by_test_id("extensions")).to_have_text("ack, resume", timeout=5_000)
        expect(page.get_by_test_id("acked")).to_have_text("0")
        expect(page.get_by_test_id("unacked")).to_have_text("0")

        page.get_by_test_id("crash-count").fill("2000")
        page.get_by_role("button", name="kill -9 the server mid-burst").click()
        log = page.get_by_test_id("event-log")
        # The server dies with part of the burst acked and part awaiting its ack.
        killed = log.locator("li[data-kind=server]", has_text="server killed mid-burst")
        expect(killed).to_have_count(1, timeout=20_000)
        expect(page.get_by_test_id("crash-killed")).to_have_text(
            re.compile(r"^[1-9][\d,]* / [1-9][\d,]*$"), timeout=5_000
        )
        expect(log.locator("li[data-kind=close]", has_text="1006")).to_have_count(1, timeout=5_000)
        expect(log.locator("li[data-kind=server]", has_text="restarted")).to_have_count(
            1, timeout=10_000
        )
        # Every message acked in the end, and none missing at the server.
        expect(page.get_by_test_id("crash-lost")).to_have_text("lost: 0", timeout=40_000)
        expect(page.get_by_test_id("crash-phase")).to_have_text(
            re.compile(r"done · 2,000 / 2,000$")
        )
        expect(page.get_by_test_id("crash-duplicates")).to_have_text(
            re.compile(r"^\d[\d,]* \(\d[\d,]* resent\)$")
        )
        expect(log.locator("li[data-kind=crash]", has_text="lost 0 of 2000")).to_have_count(1)
        expect(page.get_by_test_id("unacked")).to_have_text("0", timeout=5_000)
        expect(page.get_by_test_id("acked")).not_to_have_text("0")
        expect(state).to_have_text("open")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "panel-crash.png"), full_page=True)
    finally:
        page.close()
