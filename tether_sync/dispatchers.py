"""Dispatchers that run tether_sync callbacks on a GUI thread or in an asyncio loop.

Pass one as ``TetherClient(..., dispatcher=...)``: the client's I/O thread hands
every callback and event handler to it, and it runs them where they belong.

* :class:`TkDispatcher` runs them on the Tk thread,
* :class:`QtDispatcher` on the Qt GUI thread (PySide6, PyQt6 or PyQt5),
* :class:`AsyncioDispatcher` in an asyncio event loop.

How they work (all three alike): the caller (the I/O thread) only appends the
task to a thread-safe queue and, if no wake-up is already pending, wakes the
target; the target's thread then runs every queued task in FIFO order. So one
burst of messages costs one wake-up, and the I/O thread never waits for the GUI.

When the target is gone (the widget was destroyed or the Tk thread ended, the
Qt application quit or the QObject was deleted, the asyncio loop was closed),
the dispatcher logs ONE warning and from then on runs tasks on a private
fallback thread, in order, starting with those that were still queued: the
client keeps working, and a dispatcher never raises into its caller.

``import tether_sync.dispatchers`` needs neither tkinter nor a Qt binding: each
is imported only by the dispatcher that uses it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import weakref
from typing import Any, Callable, Optional

log = logging.getLogger("tether_sync")

Task = Callable[[], None]

__all__ = ["AsyncioDispatcher", "QtDispatcher", "TkDispatcher"]

# A drain runs at most this many tasks before it lets the GUI breathe (it
# schedules itself again for the rest), so a flood cannot freeze a window.
_BATCH = 200
# The fallback thread ends after this long without work; it is started again on demand.
_FALLBACK_IDLE = 1.0


def _run(task: Task) -> None:
    # The client already wraps every task so it cannot raise; a task handed to a
    # dispatcher directly gets the same guarantee here.
    try:
        task()
    except Exception:
        log.exception("exception in a task run by a tether_sync dispatcher")


class _Fallback:
    """Runs tasks in FIFO order on a daemon thread that ends when idle."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()
        # Guards _thread: whether a worker is running (or about to) to take tasks.
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    def submit(self, task: Task) -> None:
        self._tasks.put(task)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=_FALLBACK_IDLE)
            except queue.Empty:
                with self._lock:
                    # A submit() between the timeout and here saw _thread set and
                    # started nobody: look once more before ending.
                    if self._tasks.empty():
                        self._thread = None
                        return
                continue
            _run(task)


class _QueuedDispatcher:
    """The shared machinery: a task queue, coalesced wake-ups, and the fallback.

    Subclasses implement :meth:`_wake` (called on the caller's thread: make the
    target call :meth:`_drain` soon; raise if the target is gone) and may call
    :meth:`_gone` from any thread when they learn that the target is gone.
    """

    _kind = "dispatcher"

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()
        # Guards _is_gone and _wake_pending, and makes "queue a task" atomic with
        # respect to "the target is gone: move the queue to the fallback", so no
        # task is ever stranded in a queue that nobody drains.
        self._lock = threading.Lock()
        self._is_gone = False
        self._why_gone = ""
        self._reported = False  # the one warning about the target being gone
        self._wake_pending = False
        self._fallback = _Fallback(f"tether-{self._kind}-fallback")

    @property
    def is_gone(self) -> bool:
        """True once the target was found gone: tasks now run on the fallback thread."""
        return self._is_gone

    @property
    def fallback_thread(self) -> Optional[threading.Thread]:
        """The fallback thread while it runs (None before the target is gone)."""
        return self._fallback.thread

    def __call__(self, task: Task) -> None:
        """Run ``task`` on the target; thread-safe; never blocks on it, never raises."""
        if not self._is_gone:
            why = self._gone_reason()
            if why is not None:
                self._gone(why)
        with self._lock:
            gone = self._is_gone
            if gone:
                self._fallback.submit(task)
            else:
                self._tasks.put(task)
                wake = not (self._polls or self._wake_pending)
                self._wake_pending = self._wake_pending or wake
        if gone:
            if not self._reported:
                self._report()
            return
        if not wake:
            return
        try:
            self._wake()
        except Exception as exc:
            self._gone(f"{type(exc).__name__}: {exc}")

    # The target fetches tasks by itself (polling): no wake-up needed.
    _polls = False

    def _gone_reason(self) -> Optional[str]:
        """A cheap test, on the caller's thread: why the target cannot run tasks, or None."""
        return None

    def _wake(self) -> None:
        raise NotImplementedError

    def _drain_batch(self) -> bool:
        """Run up to a batch of queued tasks, on the target's thread; True if more wait."""
        for _ in range(_BATCH):
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return False
            _run(task)
        return not self._tasks.empty()

    def _drain(self) -> None:
        """The wake-up's work, on the target's thread: run what is queued."""
        with self._lock:
            # Cleared before draining: a task queued from now on wakes us again.
            self._wake_pending = False
        if not self._drain_batch():
            return
        # More than a batch was waiting: come back for the rest after the target
        # had a chance to handle its own events (repaint, input).
        with self._lock:
            if self._is_gone or self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._wake()
        except Exception as exc:
            self._gone(f"{type(exc).__name__}: {exc}")

    def run_pending(self) -> int:
        """Run every task queued so far, now; call it on the target's thread.

        For a clean shutdown: after ``client.close()``, run the client's last
        callbacks while the window (or loop) is still there. Returns how many ran.
        """
        ran = 0
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return ran
            _run(task)
            ran += 1

    def _gone(self, why: str) -> None:
        """The target is gone: move what is queued to the fallback thread.

        Reported once, by a warning, when the first task has to go to the
        fallback: a window closed after its client was closed is no news.
        """
        with self._lock:
            if self._is_gone:
                return
            self._is_gone = True
            self._why_gone = why
            moved = 0
            while True:
                try:
                    self._fallback.submit(self._tasks.get_nowait())
                except queue.Empty:
                    break
                moved += 1
        if moved:
            self._report()

    def _report(self) -> None:
        with self._lock:
            if self._reported:
                return
            self._reported = True
        log.warning(
            "%s: the target is gone (%s); callbacks now run on a fallback thread",
            type(self).__name__,
            self._why_gone,
        )


class TkDispatcher(_QueuedDispatcher):
    """Runs callbacks on the Tk thread: ``TetherClient(url, dispatcher=TkDispatcher(root))``.

    Create it on the Tk thread (the one that runs ``mainloop()``), with any widget
    of the window (its root is fine).

    The I/O thread never calls into Tcl: with a Tcl built without threads that
    is unsafe, and with a threaded Tcl tkinter makes a foreign thread wait for
    the Tk thread (or fail with ``RuntimeError: main thread is not in main loop``
    before ``mainloop()`` runs), which would stall the client on a busy GUI. So
    the Tk thread polls: every ``interval`` seconds an ``after`` callback runs
    what the queue holds. Latency is at most ``interval``; an idle poll is one
    ``queue.empty()`` test.

    The target is gone when ``widget`` is destroyed (its own window or the whole
    application) or garbage-collected (the dispatcher holds it weakly), or the
    thread that created the dispatcher has ended.

    Args:
        widget: A Tk widget; its ``after`` drives the polling.
        interval: Seconds between polls (default 0.01).
    """

    _kind = "tk"

    def __init__(self, widget: Any, interval: float = 0.01) -> None:
        if not isinstance(interval, (int, float)) or not 0 < interval <= 1:
            raise ValueError("interval must be a number of seconds in (0, 1]")
        super().__init__()
        # Weak: the dispatcher (which the client, and so maybe a cycle collected on
        # any thread, holds) must not keep the Tk application alive. tkinter aborts
        # the process when a Tk object is freed off its own thread.
        self._widget: Callable[[], Any] = weakref.ref(widget)
        self._interval_ms = max(1, round(interval * 1000))
        self._thread = threading.current_thread()
        self._after_id: Optional[str] = None
        widget.bind("<Destroy>", self._on_destroy, add="+")
        self._schedule()

    @property
    def thread(self) -> threading.Thread:
        """The Tk thread, where callbacks run."""
        return self._thread

    def _schedule(self) -> None:
        widget = self._widget()
        if widget is None:
            self._gone("the widget was garbage-collected")
            return
        self._after_id = widget.after(self._interval_ms, self._poll)

    def _poll(self) -> None:
        if self._is_gone:
            return
        try:
            self._drain_batch()
        finally:
            if not self._is_gone:
                self._schedule()

    _polls = True

    def _gone_reason(self) -> Optional[str]:
        if not self._thread.is_alive():
            return f"the Tk thread {self._thread.name!r} has ended"
        return None

    def _on_destroy(self, event: Any) -> None:
        # A <Destroy> binding on a toplevel also fires for each of its children.
        target: Any = getattr(event, "widget", None)
        if target is not self._widget():
            return
        self._gone("the widget was destroyed")
        if self._after_id is not None:
            # This runs before tkinter deletes the widget's Tcl commands: a poll
            # left pending would end in "invalid command name" on stderr.
            try:
                target.after_cancel(self._after_id)
            except Exception:  # pragma: no cover - the interpreter is going away
                pass
            self._after_id = None


def _qt_core() -> Any:
    """The QtCore module of the Qt binding in use (the one already imported, if any)."""
    names = ("PySide6", "PyQt6", "PyQt5", "PySide2")
    for name in names:
        if name in sys.modules:
            return __import__(f"{name}.QtCore", fromlist=["QtCore"])
    errors = []
    for name in names:
        try:
            return __import__(f"{name}.QtCore", fromlist=["QtCore"])
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise ImportError(
        "QtDispatcher needs PySide6 (pip install 'tether-sync[qt]'), PyQt6, PyQt5 or PySide2; "
        + "; ".join(errors)
    )


class QtDispatcher(_QueuedDispatcher):
    """Runs callbacks on the Qt GUI thread: ``TetherClient(url, dispatcher=QtDispatcher())``.

    Works with PySide6 (the ``qt`` extra), PyQt6, PyQt5 or PySide2: the binding
    already imported is used. Create it after the ``QApplication`` (from any
    thread: its receiver is moved to the application's thread).

    The I/O thread wakes the GUI thread by emitting a signal of a QObject that
    lives there, connected with ``Qt.QueuedConnection``: Qt posts it to the GUI
    thread's event queue, which is thread-safe, and it never waits.

    The target is gone when the application is about to quit, is deleted, or
    the receiver object was deleted.
    """

    _kind = "qt"

    def __init__(self) -> None:
        super().__init__()
        core = _qt_core()
        app = core.QCoreApplication.instance()
        if app is None:
            raise RuntimeError("QtDispatcher needs a QApplication (or QCoreApplication)")
        signal_type = getattr(core, "Signal", None) or core.pyqtSignal
        slot_type = getattr(core, "Slot", None) or core.pyqtSlot
        drain = self._drain

        class _Receiver(core.QObject):  # type: ignore[misc, name-defined]
            wake = signal_type()

            def _on_wake(self) -> None:
                drain()

            # A slot of a QObject that lives on the GUI thread: a queued
            # connection runs it there (a plain Python callable would not be
            # tied to that thread).
            on_wake = slot_type()(_on_wake)

        receiver = _Receiver()
        receiver.moveToThread(app.thread())
        queued = getattr(core.Qt, "ConnectionType", core.Qt).QueuedConnection
        receiver.wake.connect(receiver.on_wake, queued)
        # Qt emits these on the GUI thread; _gone() is safe from any thread.
        receiver.destroyed.connect(lambda *_: self._gone("the receiver QObject was deleted"))
        app.aboutToQuit.connect(lambda: self._gone("the application quit"))
        self._core = core
        self._receiver = receiver

    def _gone_reason(self) -> Optional[str]:
        if self._core.QCoreApplication.instance() is None:
            return "the application was deleted"
        return None

    def _wake(self) -> None:
        # Raises RuntimeError once the receiver's C++ object is deleted.
        self._receiver.wake.emit()


class AsyncioDispatcher(_QueuedDispatcher):
    """Runs callbacks in an asyncio event loop: ``dispatcher=AsyncioDispatcher(loop)``.

    Callbacks run as plain callbacks of ``loop`` (``loop.call_soon_threadsafe``),
    one burst per wake-up; to hand a payload to a coroutine, put it on an
    ``asyncio.Queue`` or set a future's result from the callback.

    The target is gone when ``loop`` is closed. Tasks queued while the loop is
    stopped but not closed wait until it runs again (or is closed: then the next
    task moves them to the fallback thread).

    Args:
        loop: The loop; by default the running loop (so create it inside a coroutine).
    """

    _kind = "asyncio"

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        super().__init__()
        self._loop = loop if loop is not None else asyncio.get_running_loop()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _gone_reason(self) -> Optional[str]:
        # Tested on every call, not only when no wake-up is pending: a closed loop
        # dropped the wake-up we scheduled, and the queue must not be stranded.
        return "the event loop is closed" if self._loop.is_closed() else None

    def _wake(self) -> None:
        # Raises RuntimeError("Event loop is closed").
        self._loop.call_soon_threadsafe(self._drain)
