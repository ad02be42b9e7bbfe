"""The control panel's action line says what happened, no more (issue 23).

The backend (a real bundled server and a real client in this process) for what
each action reports; headless Chromium at 1280x800 for where the result shows and
how "In flight" is explained. Waits are on events with timeouts; nothing sleeps.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Iterator, Tuple

import pytest

from tether_sync.demo.backend import ActionConflict, DemoBackend
from tether_sync.events import StateChangeEvent

Proc = Any  # tests/demo/conftest.py Proc: the ``demo`` fixture's first item


@pytest.fixture
def backend() -> Iterator[DemoBackend]:
    demo = DemoBackend()
    demo.start()
    assert demo.client is not None
    demo.client.wait_open(timeout=10)
    yield demo
    demo.close()


def _wait_for_state(backend: DemoBackend, wanted: str, timeout: float = 10.0) -> None:
    client = backend.client
    assert client is not None
    reached = threading.Event()

    def on_state(event: StateChangeEvent) -> None:
        if event.current == wanted:
            reached.set()

    off = client.on("state_change", on_state)
    try:
        if client.state.value != wanted:
            assert reached.wait(timeout), f"the client never reached {wanted}"
    finally:
        off()


def test_a_burst_behind_a_stall_says_how_many_wait(backend: DemoBackend) -> None:
    backend.stall_reads(5)
    result = backend.send_burst(300, 60000)
    text = result["message"]
    assert "sent" not in text  # was: "Send burst: 300 message(s) sent"
    assert text.startswith("Send burst: 300 message(s) handed to send(); ")
    match = re.search(r"(\d+) waiting in the queue", text)
    assert match is not None and int(match.group(1)) > 0, text


def test_flood_while_offline_says_the_request_is_queued(backend: DemoBackend) -> None:
    backend.go_offline(5)
    _wait_for_state(backend, "reconnecting")
    text = backend.flood(10)["message"]
    assert "asked the server" not in text  # was: "Flood: asked the server for 10 messages"
    assert "is queued (client " in text and "connecting" in text, text  # or reconnecting


def test_a_token_refresh_while_offline_fails_at_once(backend: DemoBackend) -> None:
    backend.go_offline(5)
    _wait_for_state(backend, "reconnecting")
    started = time.monotonic()
    with pytest.raises(ActionConflict, match="not connected"):
        backend.refresh_token()
    assert time.monotonic() - started < 1.0  # was: "Force token refresh", failing 5 s later


def test_a_token_refresh_reports_the_servers_answer(backend: DemoBackend) -> None:
    text = backend.refresh_token()["message"]
    assert re.fullmatch(r"Force token refresh: the server accepted a new token \(\d+ ms\)", text), (
        text
    )


def test_the_result_of_a_click_is_in_view_at_1280x800(demo: Tuple[Proc, str], browser: Any) -> None:
    from playwright.sync_api import expect

    _, url = demo
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(url)
        expect(page.get_by_test_id("state")).to_have_text("open", timeout=10_000)
        # The last button of the list: the page scrolls to it to click it.
        page.get_by_role("button", name="Stall server reads").click()
        status = page.get_by_test_id("action-status")
        expect(status).to_contain_text("Stall server reads", timeout=5_000)
        expect(status).to_be_in_viewport()
        explain = page.get_by_test_id("in-flight").locator("xpath=following-sibling::dd[1]")
        expect(explain).to_contain_text("awaiting the server's ack")
    finally:
        page.close()
