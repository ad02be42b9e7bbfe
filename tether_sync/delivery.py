"""``Delivery``: the future that ``send()`` returns.

It has the :class:`concurrent.futures.Future` interface but is cheap: a
``Delivery`` is a slot object, and the condition variable that waiters block on
is made only when someone actually waits (DESIGN §2). It is resolved on the I/O
thread, but done-callbacks are user code, so they run on the client's dispatcher
(never on the I/O thread), outside any lock; their exceptions are logged.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, Optional

log = logging.getLogger("tether_sync")

_PENDING, _DONE, _FAILED = 0, 1, 2

# Guards only the lazy creation of a Delivery's condition and callback list, so
# that two threads starting to wait at once make one condition. Never held while
# waiting or while running callbacks.
_create_lock = threading.Lock()

# Set when a wait on a Delivery (or a flush) was interrupted with Ctrl-C: the
# exit flush then does not make the user wait again (it only closes).
interrupted = False


def reset_after_fork() -> None:
    """In a forked child: the lock may have been held by a thread that is gone."""
    global _create_lock
    _create_lock = threading.Lock()


class Delivery:
    """The fate of one message.

    Attributes:
        id: The message id (the envelope's ``id`` with protocol ``tether``).
        channel: The channel it was sent on.
    """

    # _op and _data are the frame to send (opcode and encoded bytes), set by the
    # client in the caller's thread so that the I/O thread only frames and writes.
    __slots__ = (
        "_callbacks",
        "_cond",
        "_data",
        "_dispatch",
        "_exc",
        "_op",
        "_seq",
        "_state",
        "channel",
        "id",
        "payload",
    )

    def __init__(
        self,
        msg_id: str,
        channel: str,
        payload: Any,
        op: int = 1,
        data: bytes = b"",
        dispatch: Optional[Callable[[Callable[[], None]], Any]] = None,
    ) -> None:
        self._dispatch = dispatch  # where done-callbacks run; None: where resolved
        self._op = op
        self._data = data
        self._seq = 0  # DESIGN §5: assigned when first written on an "ack" link
        self.id = msg_id
        self.channel = channel
        self.payload = payload
        self._state = _PENDING
        self._exc: Optional[BaseException] = None
        self._cond: Optional[threading.Condition] = None
        self._callbacks: Optional[List[Callable[[Delivery], Any]]] = None

    def __repr__(self) -> str:
        status = ("pending", "done", "failed")[self._state]
        return f"<Delivery id={self.id!r} channel={self.channel!r} {status}>"

    # -- resolution (I/O thread) -------------------------------------------------

    def _finish(self, state: int, exc: Optional[BaseException]) -> bool:
        if self._state != _PENDING:
            return False
        self._exc = exc
        # Publish the state first, then collect waiters under _create_lock: a
        # waiter or callback registered before we took the lock is seen here, and
        # one registered after it sees the new state itself.
        self._state = state
        with _create_lock:
            cond = self._cond
            callbacks, self._callbacks = self._callbacks, None
        if cond is not None:
            with cond:
                cond.notify_all()
        if callbacks:
            if self._dispatch is not None:
                self._dispatch(lambda: self._run_callbacks(callbacks))
            else:
                self._run_callbacks(callbacks)
        return True

    def set_result(self, result: None = None) -> bool:
        """Mark the message written; returns False if it was already resolved."""
        return self._finish(_DONE, None)

    def set_exception(self, exc: BaseException) -> bool:
        """Mark the message failed with ``exc``; returns False if already resolved."""
        return self._finish(_FAILED, exc)

    def _run_callbacks(self, callbacks: List[Callable[[Delivery], Any]]) -> None:
        for fn in callbacks:
            self._run_callback(fn)

    def _run_callback(self, fn: Callable[[Delivery], Any]) -> None:
        try:
            fn(self)
        except Exception:
            log.exception("exception calling Delivery done-callback %r", fn)

    # -- Future interface (any thread) -------------------------------------------

    def done(self) -> bool:
        """Whether the message was written or failed."""
        return self._state != _PENDING

    def running(self) -> bool:
        return self._state == _PENDING

    def cancelled(self) -> bool:
        """Always False: a queued message cannot be cancelled (it may be on the wire)."""
        return False

    def cancel(self) -> bool:
        """Always False (see :meth:`cancelled`)."""
        return False

    def _wait(self, timeout: Optional[float]) -> None:
        if self._state != _PENDING:
            return
        with _create_lock:
            if self._cond is None:
                self._cond = threading.Condition(threading.Lock())
            cond = self._cond
        try:
            with cond:
                if self._state == _PENDING and not cond.wait_for(
                    lambda: self._state != _PENDING, timeout
                ):
                    raise TimeoutError(f"message {self.id!r} not delivered within {timeout}s")
        except KeyboardInterrupt:
            global interrupted
            interrupted = True
            log.warning("waiting for message %r interrupted: it is not confirmed", self.id)
            raise

    def result(self, timeout: Optional[float] = None) -> None:
        """Block until the message is written.

        Raises:
            TimeoutError: if it is not resolved within ``timeout`` seconds.
            QueueFull, ClientClosed, ...: the reason it was dropped.
        """
        self._wait(timeout)
        if self._exc is not None:
            raise self._exc
        return None

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """Block until resolved; the failure reason, or None if written."""
        self._wait(timeout)
        return self._exc

    def add_done_callback(self, fn: Callable[[Delivery], Any]) -> None:
        """Call ``fn(delivery)`` when resolved (at once, in this thread, if it already is).

        The callback runs on the client's dispatcher, like every callback: never on
        the I/O thread.
        """
        with _create_lock:
            if self._state == _PENDING:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        self._run_callback(fn)
