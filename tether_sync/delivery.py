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
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

log = logging.getLogger("tether_sync")

# A Delivery's _state: one of these, or the exception it failed with.
_PENDING = object()
_DONE = object()

# Guards only the lazy creation of a Delivery's condition and callback list, so
# that two threads starting to wait at once make one condition, and the outcome's
# hand-over to them (a resolution collects what was registered before it).
# set_results() holds it once for up to 1,024 Deliveries of a batch.
# Never held while waiting or while running callbacks.
_create_lock = threading.Lock()

# Set when a wait on a Delivery (or a flush) was interrupted with Ctrl-C: the
# exit flush then does not make the user wait again (it only closes).
interrupted = False


def reset_after_fork() -> None:
    """In a forked child: the lock may have been held by a thread that is gone."""
    global _create_lock
    _create_lock = threading.Lock()


Dispatch = Callable[[Callable[[], None]], Any]


class _Waiting:
    """What a Delivery keeps only once someone waits on it or adds a callback."""

    __slots__ = ("callbacks", "cond", "dispatch")

    def __init__(self, dispatch: Optional[Dispatch]) -> None:
        self.dispatch = dispatch
        self.cond: Optional[threading.Condition] = None
        self.callbacks: Optional[List[Callable[[Delivery], Any]]] = None


def envelope_id(data: bytes) -> str:
    """The ``id`` of a data envelope as ``envelope.encode_data`` makes it (its last field)."""
    start = data.rindex(b',"id":"') + 7
    return data[start:-2].decode()


class Delivery:
    """The fate of one message.

    Attributes:
        id: The message id (the envelope's ``id`` with protocol ``tether``).
        channel: The channel it was sent on.
    """

    # _op and _data are the frame to send (opcode and encoded bytes), set by the
    # client in the caller's thread so that the I/O thread only frames and writes.
    # Memory (issue 22): a queued message costs its Delivery, its _data and a
    # queue slot, so the slots are few: _state is the outcome itself (pending,
    # done, or the exception), what waiters need is made only when one waits
    # (_hooks: the dispatch function, then a _Waiting that holds it too), and
    # with protocol tether the id is read from the envelope when asked for
    # (_id None) instead of being kept twice.
    __slots__ = (
        "_data",
        "_hooks",
        "_id",
        "_op",
        "_seq",
        "_state",
        "channel",
        "payload",
    )

    def __init__(
        self,
        msg_id: Optional[str],
        channel: str,
        payload: Any,
        op: int = 1,
        data: bytes = b"",
        dispatch: Optional[Dispatch] = None,
    ) -> None:
        """Create a pending Delivery.

        Args:
            msg_id: The message id; None: ``data`` is a data envelope (protocol
                tether) and the id is its ``id`` field.
            channel: The channel.
            payload: What the user sent.
            op: The frame's opcode.
            data: The frame's payload, encoded.
            dispatch: Where done-callbacks run; None: where the Delivery is resolved.
        """
        self._hooks: Union[Dispatch, _Waiting, None] = dispatch
        self._op = op
        self._data = data
        self._seq = 0  # DESIGN §5: assigned when first written on an "ack" link
        self._id = msg_id
        self.channel = channel
        self.payload = payload
        # _PENDING, _DONE, or the exception the message failed with.
        self._state: object = _PENDING

    @property
    def id(self) -> str:
        """The message id (the envelope's ``id`` with protocol ``tether``)."""
        msg_id = self._id
        return msg_id if msg_id is not None else envelope_id(self._data)

    @property
    def _dispatch(self) -> Optional[Dispatch]:
        """Where done-callbacks run (None: where the Delivery is resolved)."""
        hooks = self._hooks
        return hooks.dispatch if isinstance(hooks, _Waiting) else hooks

    @_dispatch.setter
    def _dispatch(self, dispatch: Optional[Dispatch]) -> None:
        with _create_lock:
            hooks = self._hooks
            if isinstance(hooks, _Waiting):
                hooks.dispatch = dispatch
            else:
                self._hooks = dispatch

    def _waiting(self) -> _Waiting:
        """With _create_lock held: the _Waiting, made now if needed."""
        hooks = self._hooks
        if isinstance(hooks, _Waiting):
            return hooks
        waiting = self._hooks = _Waiting(hooks)
        return waiting

    @property
    def _exc(self) -> Optional[BaseException]:
        state = self._state
        return state if isinstance(state, BaseException) else None

    def __repr__(self) -> str:
        state = self._state
        status = "pending" if state is _PENDING else "done" if state is _DONE else "failed"
        return f"<Delivery id={self.id!r} channel={self.channel!r} {status}>"

    # -- resolution (I/O thread) -------------------------------------------------

    def _finish(self, outcome: object) -> bool:
        if self._state is not _PENDING:
            return False
        # Publish the outcome first, then collect waiters under _create_lock: a
        # waiter or callback registered before we took the lock is seen here, and
        # one registered after it sees the new state itself.
        self._state = outcome
        with _create_lock:
            waiting = self._hooks
            if not isinstance(waiting, _Waiting):
                return True
            cond = waiting.cond
            callbacks, waiting.callbacks = waiting.callbacks, None
            dispatch = waiting.dispatch
        self._wake(cond, callbacks, dispatch)
        return True

    def _wake(
        self,
        cond: Optional[threading.Condition],
        callbacks: Optional[List[Callable[[Delivery], Any]]],
        dispatch: Optional[Dispatch],
    ) -> None:
        """After the outcome: wake the waiters, hand the callbacks to ``dispatch`` (no lock)."""
        if cond is not None:
            with cond:
                cond.notify_all()
        if callbacks:
            if dispatch is not None:
                dispatch(lambda: self._run_callbacks(callbacks))
            else:
                self._run_callbacks(callbacks)

    def set_result(self, result: None = None) -> bool:
        """Mark the message written; returns False if it was already resolved."""
        return self._finish(_DONE)

    def set_exception(self, exc: BaseException) -> bool:
        """Mark the message failed with ``exc``; returns False if already resolved."""
        return self._finish(exc)

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
        return self._state is not _PENDING

    def running(self) -> bool:
        return self._state is _PENDING

    def cancelled(self) -> bool:
        """Always False: a queued message cannot be cancelled (it may be on the wire)."""
        return False

    def cancel(self) -> bool:
        """Always False (see :meth:`cancelled`)."""
        return False

    def _wait(self, timeout: Optional[float]) -> None:
        if self._state is not _PENDING:
            return
        with _create_lock:
            waiting = self._waiting()
            if waiting.cond is None:
                waiting.cond = threading.Condition(threading.Lock())
            cond = waiting.cond
        try:
            with cond:
                if self._state is _PENDING and not cond.wait_for(
                    lambda: self._state is not _PENDING, timeout
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
        state = self._state
        if isinstance(state, BaseException):
            raise state
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
            if self._state is _PENDING:
                waiting = self._waiting()
                if waiting.callbacks is None:
                    waiting.callbacks = []
                waiting.callbacks.append(fn)
                return
        self._run_callback(fn)


# Deliveries set_results() resolves in one hold of _create_lock.
_HOLD_AT_MOST = 1024

# What set_results() takes under the lock for one Delivery someone waits on:
# (the Delivery, its condition, its callbacks, where they run).
_Woken = Tuple[
    "Delivery",
    Optional[threading.Condition],
    Optional[List[Callable[["Delivery"], Any]]],
    Optional[Dispatch],
]


def set_results(items: Sequence[Delivery]) -> None:
    """Mark every still-pending Delivery of ``items`` written, in order (I/O thread).

    The same outcome as :meth:`Delivery.set_result` on each (one already resolved
    is left as it is), at the cost of one ``_create_lock`` hold per 1,024 instead
    of a lock and two calls per message (issue 22: the I/O thread resolves every
    written or acknowledged message here). Under that lock each outcome is
    published and each waiter's condition and callbacks are taken, as ``_finish``
    does for one; the waiters are woken and the callbacks dispatched after it is
    released. Only a Delivery someone waits on, or that has callbacks, costs more
    than setting its state.
    """
    woken: List[_Woken] = []
    pending, done, waiting_type = _PENDING, _DONE, _Waiting
    for start in range(0, len(items), _HOLD_AT_MOST):
        # A bounded hold: a user thread that starts waiting on another Delivery
        # meanwhile waits for the lock at most this long (well under 1 ms).
        with _create_lock:
            for d in items[start : start + _HOLD_AT_MOST]:
                if d._state is pending:
                    d._state = done
                    hooks = d._hooks
                    if type(hooks) is waiting_type:
                        assert isinstance(hooks, _Waiting)
                        callbacks, hooks.callbacks = hooks.callbacks, None
                        woken.append((d, hooks.cond, callbacks, hooks.dispatch))
    for d, cond, callbacks, dispatch in woken:
        d._wake(cond, callbacks, dispatch)
