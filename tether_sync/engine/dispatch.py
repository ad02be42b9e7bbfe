"""Where user code runs: callbacks and event handlers never run on the I/O thread.

A :class:`ThreadDispatcher` runs tasks in FIFO order on one thread of its own; a
user-given ``dispatcher=`` callable (e.g. a GUI's "run this on the UI thread")
replaces it. Either way every task is wrapped so that a raising callback is
logged and reported through ``on_error``, and dispatch goes on.

It lives in the engine because the I/O thread is its producer: the loop hands
events and resolved deliveries to it and must never wait there (DESIGN §4), so
the queue is unbounded and ``put()`` never blocks. The client starts and stops
it; the client also owns the fallback dispatcher that takes over from a user
dispatcher that raises.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Optional

from .outbox import in_callback

log = logging.getLogger("tether_sync")

Task = Callable[[], None]


class ThreadDispatcher:
    """Runs tasks one after another on a dedicated daemon thread.

    Args:
        on_error: Called (on the dispatcher thread) with the exception of a task
            that raised, after it was logged.
        name: The thread's name.
    """

    def __init__(self, on_error: Callable[[BaseException], None], name: str) -> None:
        self._on_error = on_error
        self._name = name
        # SimpleQueue: put() never blocks and is reentrant, so the I/O thread can
        # hand work over without ever waiting on a consumer.
        self._tasks: queue.SimpleQueue[Optional[Task]] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def __call__(self, task: Task) -> None:
        """Queue ``task``; tasks submitted after :meth:`stop` are ignored."""
        if not self._stopped:
            self._tasks.put(task)

    def stop(self, timeout: Optional[float]) -> bool:
        """Run what is queued, then end the thread. Returns whether it ended in time."""
        self._stopped = True
        self._tasks.put(None)
        thread = self._thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False  # a handler called close(): the loop ends after this task
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        get = self._tasks.get
        while True:
            task = get()
            if task is None:
                return
            run_task(task, self._on_error)


def run_task(task: Task, on_error: Callable[[BaseException], None]) -> None:
    """Run one task; log and report its exception instead of propagating it.

    While it runs, :data:`tether_sync.engine.outbox.in_callback` is set on this thread:
    a ``send()`` from a callback never waits for room (see ``outbox.py``).
    """
    # Restored, not cleared, afterwards: a user dispatcher may run a task from
    # inside another task (nested event loops), and the outer one is still a callback.
    flag = in_callback
    was = getattr(flag, "active", False)
    flag.active = True
    try:
        task()
    except Exception as exc:
        log.exception("exception in a tether_sync callback")
        try:
            on_error(exc)
        except Exception:  # an error handler that raises must not stop dispatch
            log.exception("exception reporting a callback error")
    finally:
        flag.active = was
