"""Credentials in the URL never leave the handshake.

A URL such as ``ws://user:PASSWORD@host/?token=TOKEN`` is what many services
ask for. The client must send it to the server as it is, and show it, in every
place it shows a URL (log lines at any level, ``repr()``, ``stats().endpoint``,
events, exception messages), only redacted: ``ws://user:***@host/?token=***``.

The server is a ``tether-sync serve`` subprocess, so every ``tether_sync`` log
record captured here is the client's.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterator, List

import pytest
from support.serve_process import ServeProcess

from tether_sync import TetherClient
from tether_sync.events import EVENT_NAMES
from tether_sync.exceptions import ConnectTimeout
from tether_sync.redact import redact_url

PASSWORD = "hunter2-Pa55w0rd"
TOKEN = "tok-3f9a8c1d2e7b"
API_KEY = "key-77c0ffee"
SECRETS = (PASSWORD, TOKEN, API_KEY)


def secret_url(base: str) -> str:
    """``base`` (``ws://127.0.0.1:PORT/``) with a password and two secret query values."""
    host = base.split("//", 1)[1].rstrip("/")
    return f"ws://alice:{PASSWORD}@{host}/feed?token={TOKEN}&x=1&API_KEY={API_KEY}"


class Everything(logging.Handler):
    """Every tether_sync record: its message and every attribute, as text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: List[str] = []
        self._lock = threading.Lock()  # records come from every client thread

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.getMessage()} {record.__dict__!r}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        with self._lock:
            self.texts.append(text)


@pytest.fixture
def records() -> Iterator[Everything]:
    logger = logging.getLogger("tether_sync")
    handler = Everything()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def leaks(texts: List[str]) -> List[str]:
    return [t for t in texts if any(s in t for s in SECRETS)]


def test_redact_url_examples() -> None:
    assert redact_url("ws://u:pw@h:8080/ws?token=abc&room=1") == (
        "ws://u:***@h:8080/ws?token=***&room=1"
    )
    assert redact_url("wss://h/?access_token=a&Api-Key=b&X-Amz-Signature=c&v=2") == (
        "wss://h/?access_token=***&Api-Key=***&X-Amz-Signature=***&v=2"
    )
    assert redact_url("ws://h/?sig=a&jwt=b&session_id=c&auth=d&password=e&secret=f") == (
        "ws://h/?sig=***&jwt=***&session_id=***&auth=***&password=***&secret=***"
    )
    assert redact_url("ws://user@h/?channel=a&flag") == "ws://user@h/?channel=a&flag"
    assert redact_url("ws://h/?api%5Fkey=x") == "ws://h/?api%5Fkey=***"
    assert redact_url("ws://[::1/?token=abc") == "ws://***"  # unsplittable: cut


@pytest.mark.timeout(90)
def test_no_credential_of_the_url_appears_anywhere_the_client_shows_it(
    records: Everything, dead_url: str
) -> None:
    server = ServeProcess().start()
    try:
        live, dead = secret_url(server.url), secret_url(dead_url)
        shown_live = redact_url(live)
        assert PASSWORD not in shown_live and TOKEN not in shown_live
        events: List[Any] = []
        opened = threading.Event()
        cond = threading.Condition()  # guards events

        def record(event: Any) -> None:
            with cond:
                events.append(event)
                cond.notify_all()
            if type(event).__name__ == "OpenEvent":
                opened.set()

        # The dead endpoint first: a refused connect, then the live one.
        client = TetherClient(
            [dead, live], reconnect={"base_delay": 0.02, "max_delay": 0.1, "min_uptime": 0}
        )
        for name in EVENT_NAMES:
            client.on(name, record)
        texts: List[str] = [repr(client)]
        try:
            client.connect(wait=True, timeout=20)
            assert opened.wait(10)
            # The real URL went to the handshake: the server took it and the message.
            client.send({"n": 1}, channel="c").result(timeout=10)
            stats = client.stats()
            assert stats.endpoint == shown_live
            texts += [repr(client), str(client), repr(stats), str(stats.endpoint)]
            # Lose the link: reconnecting, refused attempts on both endpoints.
            opened.clear()
            port = server.port
            server.kill()
            with cond:
                assert cond.wait_for(
                    lambda: sum(type(e).__name__ == "ReconnectingEvent" for e in events) >= 4,
                    20,
                )
            texts.append(repr(client.stats()))
            server = ServeProcess(port=port).start()
            assert opened.wait(20)
            client.send({"n": 2}, channel="c").result(timeout=10)
        finally:
            client.close(timeout=5)
        with cond:
            texts += [repr(e) for e in events] + [str(e) for e in events]
            names = {type(e).__name__ for e in events}
            opens = [e for e in events if type(e).__name__ == "OpenEvent"]
        assert {"OpenEvent", "ReconnectingEvent", "CloseEvent"} <= names
        assert [e.url for e in opens] == [shown_live, shown_live]
        assert any("alice:***@" in t for t in records.texts)  # the URL was logged, redacted
        assert leaks(texts) == []
        assert leaks(records.texts) == []
    finally:
        server.stop()


def test_a_connect_timeout_and_its_error_events_hold_no_credential(
    records: Everything, dead_url: str
) -> None:
    errors: List[Any] = []
    client = TetherClient(
        secret_url(dead_url), reconnect={"base_delay": 0.02, "max_delay": 0.05}, heartbeat=False
    )
    client.on("error", errors.append)
    client.on("reconnecting", errors.append)
    try:
        with pytest.raises(ConnectTimeout) as info:
            client.connect(wait=True, timeout=0.5)
        texts = [str(info.value), repr(info.value), repr(info.value.__cause__), repr(client)]
        texts.append(repr(client.stats()))
    finally:
        client.close(timeout=3)
    texts += [repr(e) for e in list(errors)]
    assert errors  # the refusals were reported
    assert leaks(texts) == []
    assert leaks(records.texts) == []
