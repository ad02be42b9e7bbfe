"""The control panel's layout at a phone's width (390 px) and a desktop's (1440 px).

Headless Chromium (Debian's, through Playwright). After the panel has real content (an
outage in the backoff timeline, channel rows, a long event log), JavaScript measures
that nothing is wider than its card and the page does not scroll sideways. Screenshots
go to ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Tuple

import pytest

Proc = Any  # tests/demo/conftest.py Proc: the ``demo`` fixture's first item
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

# Every element inside a card, measured against the card: wider content (scrollWidth)
# or a box that sticks out of the card's right edge is a layout bug.
MEASURE = """() => {
  const problems = [];
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
    + (typeof el.className === "string" && el.className
       ? "." + el.className.split(" ").join(".") : "");
  for (const card of document.querySelectorAll(".card")) {
    const box = card.getBoundingClientRect();
    const where = (el) => describe(card) + " > " + describe(el);
    for (const el of card.querySelectorAll("*")) {
      if (el.closest("svg") && el.tagName.toLowerCase() !== "svg") continue;
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      if (el.scrollWidth > card.clientWidth) {
        problems.push(where(el) + ": scrollWidth " + el.scrollWidth
          + " > card " + card.clientWidth);
      } else if (r.right > box.right + 0.5 || r.left < box.left - 0.5) {
        problems.push(where(el) + ": box " + Math.round(r.left) + ".." + Math.round(r.right)
          + " outside card " + Math.round(box.left) + ".." + Math.round(box.right));
      }
    }
  }
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth) {
    problems.push("page scrollWidth " + doc.scrollWidth + " > viewport " + window.innerWidth);
  }
  return problems;
}"""


def _exercise(page: Any) -> None:
    """Fill the panel with what a session shows: an outage, channels, log lines."""
    from playwright.sync_api import expect

    state = page.get_by_test_id("state")
    expect(state).to_have_text("open", timeout=10_000)
    page.get_by_role("button", name="Kill connection").click()
    expect(page.get_by_test_id("timeline").locator(".attempt")).not_to_have_count(0, timeout=5_000)
    expect(state).to_have_text("open", timeout=10_000)
    page.get_by_test_id("burst-count").fill("30")
    page.get_by_role("button", name="Send burst").click()
    page.get_by_test_id("flood-count").fill("300")
    page.get_by_role("button", name="Flood").click()
    # A second flood once the slow subscriber has started on the first: one
    # flood the client happens to read in one go is one arrival, which its
    # buffer takes whole (DESIGN: the bound measures how far a consumer lags,
    # never how many messages one read carried), so a lone flood shows drops
    # only in most runs; the second finds ~290 still waiting and evicts.
    expect(page.locator("#channels tr[data-channel=flood]")).to_have_count(1, timeout=5_000)
    page.get_by_role("button", name="Flood").click()
    log = page.get_by_test_id("event-log")
    expect(log.locator("li[data-kind=backpressure]").first).to_be_visible(timeout=10_000)


@pytest.mark.parametrize("width", [390, 1440])
def test_nothing_is_wider_than_its_card(demo: Tuple[Proc, str], browser: Any, width: int) -> None:
    _, url = demo
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.goto(url)
        _exercise(page)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"panel-{width}.png"), full_page=True)
        page.screenshot(path=str(ARTIFACTS / f"panel-{width}-top.png"))
        problems = page.evaluate(MEASURE)
        assert problems == [], "\n".join(problems)
    finally:
        page.close()


def test_phone_status_bar_sticks_log_is_readable_favicon_and_metrics_explained(
    demo: Tuple[Proc, str], browser: Any
) -> None:
    from playwright.sync_api import expect

    _, url = demo
    page = browser.new_page(viewport={"width": 390, "height": 800})
    try:
        page.goto(url)
        _exercise(page)
        # Sticky: after scrolling to the event log, the state badge is still in view.
        page.get_by_test_id("event-log").scroll_into_view_if_needed()
        assert page.evaluate("window.scrollY") > 800
        top = page.evaluate("document.getElementById('status-bar').getBoundingClientRect().top")
        assert top == 0
        expect(page.get_by_test_id("state")).to_be_in_viewport()
        # The log's text: at least 13 px, wrapped inside the log (no sideways scroll).
        size = page.evaluate(
            "parseFloat(getComputedStyle(document.querySelector('#event-log .text')).fontSize)"
        )
        assert size >= 13
        assert page.evaluate(
            "(l => l.scrollWidth <= l.clientWidth)(document.getElementById('event-log'))"
        )
        # A favicon that the server serves.
        href = page.evaluate("document.querySelector('link[rel=icon]').href")
        response = page.request.get(href)
        assert response.status == 200
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert page.request.get(url + "favicon.ico").status == 200
        # Every metric explains itself in small text.
        unexplained = page.evaluate(
            """() => Array.from(document.querySelectorAll('.figures > div'))
                 .filter(d => !(d.querySelector('dd.explain')?.textContent.trim()))
                 .map(d => d.querySelector('dt').textContent)"""
        )
        assert unexplained == []
        assert page.locator(".figures > div").count() >= 18
    finally:
        page.close()


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_when_the_demo_stops_the_badge_says_so_and_buttons_are_disabled(
    demo: Tuple[Proc, str], browser: Any, how: str
) -> None:
    from playwright.sync_api import expect

    proc, url = demo
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        page.goto(url)
        state = page.get_by_test_id("state")
        expect(state).to_have_text("open", timeout=10_000)
        buttons = page.locator("form[data-action] button")
        assert buttons.count() == 10
        expect(page.locator("form[data-action] button:disabled")).to_have_count(0)
        if how == "stopped":  # Ctrl-C: the backend says goodbye on the event stream
            proc.popen.send_signal(signal.SIGINT)
            expect(state).to_have_text("demo stopped", timeout=10_000)
        else:  # gone without a word: the event stream breaks
            proc.popen.kill()
            expect(state).to_have_text("demo unreachable", timeout=10_000)
        expect(page.locator("form[data-action] button:disabled")).to_have_count(10)
        expect(page.locator("form[data-action] input:enabled")).to_have_count(0)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"panel-{how}.png"))
        proc.wait(timeout=10)
    finally:
        page.close()
