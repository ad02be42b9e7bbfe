"""TkDispatcher under a real X server (Xvfb): callbacks run on the Tk thread and the
window shows what arrived; a destroyed window falls back, once, and the client goes on."""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from tether_sync import TetherClient

from .conftest import Xvfb, require_module

GONE = "the target is gone"


@pytest.fixture
def tk(xvfb: Xvfb) -> Iterator[Any]:
    yield require_module("tkinter", "the interpreter needs tkinter (apt-get install python3-tk)")
    # A test's Tk objects end up in reference cycles (callbacks that close over the
    # root). Collect them here, on the Tk thread: tkinter aborts the process when
    # a Tk interpreter is freed by a garbage collection on another thread.
    gc.collect()


def _mainloop(root: Any, seconds: float) -> None:
    """Run Tk's main loop; a watchdog ends it after ``seconds`` so the test stays bounded."""
    watchdog = root.after(int(seconds * 1000), root.quit)
    root.mainloop()
    try:
        root.after_cancel(watchdog)
    except Exception:  # the root is already destroyed
        pass


def test_callbacks_run_on_the_tk_thread_and_the_window_shows_them(
    tether_server: Any,
    tk: Any,
    screenshot: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tether_sync.dispatchers import TkDispatcher

    root = tk.Tk()
    root.geometry("360x300+0+0")
    listbox = tk.Listbox(root, width=40, height=14)
    listbox.pack(fill="both", expand=True)
    tk_thread = threading.current_thread()
    dispatcher = TkDispatcher(root)
    client = TetherClient(tether_server.url, dispatcher=dispatcher)
    where: List[Tuple[str, bool]] = []

    def on_message(payload: Any) -> None:
        where.append(("message", threading.current_thread() is tk_thread))
        listbox.insert("end", payload["text"])  # Tk calls: only safe on the Tk thread
        if listbox.size() == 250:
            root.quit()

    client.on("open", lambda _e: where.append(("open", threading.current_thread() is tk_thread)))
    client.subscribe("tk", on_message)
    client.connect()

    def produce() -> None:  # a producer thread, as a GUI app's worker would be
        for n in range(250):
            client.send({"text": f"message {n}"}, channel="tk")

    threading.Thread(target=produce, daemon=True).start()
    _mainloop(root, 20)
    listbox.see("end")  # the screenshot shows the last messages
    root.update()  # paint the final state before the screenshot
    shot = screenshot("tk_dispatcher")
    try:
        assert listbox.get(0, "end") == tuple(f"message {n}" for n in range(250))
        assert ("open", True) in where
        assert all(on_tk for _, on_tk in where), where
        assert shot.stat().st_size > 0
        assert client.close(5)
        dispatcher.run_pending()  # the close events, while the window still exists
    finally:
        root.destroy()
    assert ("open", True) in where
    assert not [r for r in caplog.records if GONE in r.getMessage()]


def test_a_destroyed_window_falls_back_once_and_the_client_keeps_working(
    tether_server: Any, tk: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tether_sync.dispatchers import TkDispatcher

    caplog.set_level(logging.WARNING, logger="tether_sync")
    root = tk.Tk()
    tk_thread = threading.current_thread()
    dispatcher = TkDispatcher(root)
    client = TetherClient(tether_server.url, dispatcher=dispatcher)
    lock = threading.Lock()
    seen: List[Tuple[int, bool, str]] = []
    all_in = threading.Event()

    def on_message(payload: Any) -> None:
        with lock:
            here = threading.current_thread()
            seen.append((payload["n"], here is tk_thread, here.name))
            count = len(seen)
        if count == 20:
            root.destroy()  # the user closes the window mid-stream; mainloop ends
        if count == 60:
            all_in.set()

    client.subscribe("tk", on_message)
    try:
        client.connect(wait=True, timeout=10)
        for n in range(20):
            client.send({"n": n}, channel="tk")
        _mainloop(root, 20)
        assert dispatcher.is_gone
        for n in range(20, 60):
            client.send({"n": n}, channel="tk")
        assert all_in.wait(10), f"only {len(seen)} callbacks ran"
        client.send({"n": -1}, channel="other").result(5)  # the client is fine
        assert client.flush(5)
    finally:
        assert client.close(5)
    assert [n for n, _, _ in seen] == list(range(60))
    assert all(on_tk for _, on_tk, _ in seen[:20])
    assert {name for _, _, name in seen[20:]} == {"tether-tk-fallback"}
    warnings = [r.getMessage() for r in caplog.records if GONE in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "destroyed" in warnings[0]


def test_the_io_thread_never_calls_tk(tether_server: Any, tk: Any) -> None:
    """Before mainloop() runs, a threaded Tcl refuses foreign-thread calls; we make none."""
    from tether_sync.dispatchers import TkDispatcher

    root = tk.Tk()
    try:
        dispatcher = TkDispatcher(root)
        ran = threading.Event()
        caller_error: List[BaseException] = []

        def from_a_thread() -> None:
            try:
                dispatcher(ran.set)  # mainloop is not running yet: must not touch Tcl
            except BaseException as exc:  # pragma: no cover - the failure we guard against
                caller_error.append(exc)

        worker = threading.Thread(target=from_a_thread)
        worker.start()
        worker.join(5)
        assert not worker.is_alive() and not caller_error
        assert not ran.is_set()  # queued, waiting for the Tk thread
        root.after(0, lambda: root.after(50, root.quit))
        _mainloop(root, 10)
        assert ran.is_set()
    finally:
        root.destroy()
