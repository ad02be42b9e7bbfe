"""QtDispatcher: callbacks run on the Qt GUI thread (PySide6, offscreen); a quit app falls back."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Iterator, List, Tuple

import pytest

from tether_sync import TetherClient

from .conftest import require_module

GONE = "the target is gone"


@pytest.fixture(scope="module")
def qapp() -> Iterator[Any]:
    """The process's one QApplication, on the offscreen platform (no display needed)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    widgets = require_module("PySide6.QtWidgets", "pip install PySide6")
    app = widgets.QApplication.instance() or widgets.QApplication([])
    yield app


def _run_app(app: Any, seconds: float) -> None:
    """exec() the app; a watchdog quits it after ``seconds`` so a test stays bounded."""
    from PySide6.QtCore import QTimer

    watchdog = QTimer()
    watchdog.setSingleShot(True)
    watchdog.timeout.connect(app.quit)
    watchdog.start(int(seconds * 1000))
    app.exec()
    watchdog.stop()


def test_callbacks_run_on_the_gui_thread(
    tether_server: Any, qapp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QListWidget

    from tether_sync.dispatchers import QtDispatcher

    gui = threading.current_thread()
    shown = QListWidget()
    where: List[Tuple[str, bool]] = []
    result = {"closed_clean": False}
    dispatcher = QtDispatcher()
    client = TetherClient(tether_server.url, dispatcher=dispatcher)

    def on_message(payload: Any) -> None:
        where.append(("message", threading.current_thread() is gui))
        shown.addItem(payload["text"])  # a widget call: only allowed on the GUI thread
        if shown.count() == 100:
            # Close from a worker thread (close() blocks), then quit on the GUI thread.
            threading.Thread(target=finish, daemon=True).start()

    def finish() -> None:
        result["closed_clean"] = client.close(5)
        # After the client's last events (FIFO), on the GUI thread.
        dispatcher(qapp.quit)

    client.on("open", lambda _e: where.append(("open", threading.current_thread() is gui)))
    client.on("close", lambda _e: where.append(("close", threading.current_thread() is gui)))
    client.subscribe("qt", on_message)

    def start() -> None:
        client.connect()
        # Sends come from a non-GUI thread, like any producer in a Qt app's workers.
        threading.Thread(
            target=lambda: [client.send({"text": f"m{n}"}, channel="qt") for n in range(100)],
            daemon=True,
        ).start()

    QTimer.singleShot(0, start)
    _run_app(qapp, 20)
    assert result["closed_clean"]
    assert [shown.item(i).text() for i in range(shown.count())] == [f"m{n}" for n in range(100)]
    assert ("open", True) in where
    assert where and all(on_gui for _, on_gui in where), where
    assert ("close", True) in where
    assert not [r for r in caplog.records if GONE in r.getMessage()]


def test_a_quit_application_falls_back_once_and_the_client_keeps_working(
    tether_server: Any, qapp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from PySide6.QtCore import QTimer

    from tether_sync.dispatchers import QtDispatcher

    caplog.set_level(logging.WARNING, logger="tether_sync")
    gui = threading.current_thread()
    dispatcher = QtDispatcher()
    client = TetherClient(tether_server.url, dispatcher=dispatcher)
    lock = threading.Lock()
    seen: List[Tuple[int, bool, str]] = []
    all_in = threading.Event()

    def on_message(payload: Any) -> None:
        with lock:
            here = threading.current_thread()
            seen.append((payload["n"], here is gui, here.name))
            if len(seen) == 20:
                qapp.quit()  # the app quits mid-stream, messages keep coming
            if len(seen) == 60:
                all_in.set()

    client.subscribe("qt", on_message)
    try:
        client.connect(wait=True, timeout=10)

        def produce(first: int, last: int) -> None:
            for n in range(first, last):
                client.send({"n": n}, channel="qt")

        QTimer.singleShot(0, lambda: produce(0, 20))
        _run_app(qapp, 20)  # returns once a callback quit the app
        assert dispatcher.is_gone
        produce(20, 60)  # and the stream goes on
        assert all_in.wait(10), f"only {len(seen)} callbacks ran"
        client.send({"n": -1}, channel="other").result(5)  # the client is fine
        assert client.flush(5)
    finally:
        assert client.close(5)
    assert [n for n, _, _ in seen] == list(range(60))
    assert all(on_gui for _, on_gui, _ in seen[:20])
    assert {name for _, _, name in seen[20:]} == {"tether-qt-fallback"}
    warnings = [r.getMessage() for r in caplog.records if GONE in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "quit" in warnings[0]
