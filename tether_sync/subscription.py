"""Inbound buffers: one per subscription, one for the ``message`` event stream.

The I/O thread :meth:`~InboundBuffer.offer`\\ s items; a consumer takes them, either
a callback run on the dispatcher or a caller blocked in :meth:`Subscription.get`.
The buffer is bounded (``inbound_buffer_size``) and applies the overflow policy.
With ``block`` a full buffer refuses the item: the loop keeps it, stops reading the
socket, and resumes when the consumer has taken the buffer down to its low-water
mark (half full), after the ``Assembler`` of websockets.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable, Deque, Generic, Iterator, List, Optional, Tuple, TypeVar

from .clock import Deadline
from .exceptions import ClientClosed

log = logging.getLogger("tether_sync")

Task = Callable[[], None]


class InboundBuffer:
    """A bounded, thread-safe buffer between the I/O thread and one consumer.

    Args:
        capacity: Items held at most.
        overflow: ``drop-oldest``, ``sample-oldest``, ``drop-newest`` or ``block``.
        callback: Called with each item on the dispatcher; ``None`` for a queue
            consumed with :meth:`get`.
        dispatch: Hands a task to the dispatcher (needed with a callback).
        on_error: Reports an exception raised by the callback.
        on_resume: Called (on the consumer's thread) when a ``block`` buffer that
            refused an item has drained to its low-water mark; it wakes the loop.
        reader: Called by :meth:`get` before it blocks, with the seconds left
            (None: no limit) and a check that an item came: reads the socket on
            the consumer's thread if it can; True if it read (``IoLoop.read_now``).
    """

    def __init__(
        self,
        capacity: int,
        overflow: str,
        *,
        callback: Optional[Callable[[Any], None]] = None,
        dispatch: Optional[Callable[[Task], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
        on_resume: Optional[Callable[[], None]] = None,
        reader: Optional[Callable[[Optional[float], Callable[[], bool]], bool]] = None,
    ) -> None:
        self._ring: Ring[Any] = Ring(capacity, overflow)
        # Before get() blocks: reads the socket on the consumer's thread if the
        # I/O thread is idle (True if it read; see IoLoop.read_now).
        self._reader = reader
        self._low_water = capacity // 2
        self._callback = callback
        self._dispatch = dispatch
        self._on_error = on_error
        self._on_resume = on_resume
        # Guards _ring, _closed, _scheduled, _refused and _waiters. The I/O thread holds it
        # only for a push; consumers hold it only to pop, never while calling back
        # nor while blocked (see _wait_and_pop).
        self._lock = threading.Lock()
        self._closed = False
        self._scheduled = False  # a drain task is queued on the dispatcher
        self._refused = False  # a "block" push was refused: someone waits for room
        # Consumers blocked in get(), oldest first: each sleeps on a lock of its
        # own, which a push releases (what threading.Condition does, without its
        # generic checks and copies: this is half of a round trip's hand-off).
        self._waiters: Deque[threading.Lock] = deque()

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def overflow(self) -> str:
        """The overflow policy (``stats().dropped_inbound_by_policy`` counts by it)."""
        return self._ring.overflow

    @property
    def closed(self) -> bool:
        return self._closed

    def offer_many(self, items: List[Any]) -> Tuple[int, int]:
        """Add ``items`` in order (I/O thread): one lock and one wake-up for all.

        Returns:
            ``(dropped, accepted)``: how many items the overflow policy dropped, and
            how many of ``items`` were taken; a full ``block`` buffer takes only
            what fits, and the caller keeps the rest, in order.
        """
        schedule = False
        wake: List[threading.Lock] = []
        with self._lock:
            if self._closed:
                return 0, len(items)
            ring = self._ring
            dropped = 0
            if ring.overflow == "block":
                room = ring.capacity - len(ring)
                if room < len(items):
                    items = items[:room]
                    self._refused = True
                ring.extend(items)
            elif len(ring) + len(items) <= ring.capacity:
                ring.extend(items)
            else:
                # The bound measures how far the consumer lags, not how much one
                # read carried: a batch never evicts its own items, only older ones
                # that are still waiting (DESIGN §1 Backpressure).
                dropped = ring.overflow_batch(items)
            if items:
                if self._callback is not None:
                    if not self._scheduled:
                        self._scheduled = schedule = True
                elif self._waiters:
                    waiters = self._waiters
                    for _ in range(min(len(items), len(waiters))):
                        wake.append(waiters.popleft())
        if wake:
            for waiter in wake:
                waiter.release()
            # No GIL yield here: the woken consumer needs tens of microseconds to
            # be scheduled, in which this thread ends its iteration and waits
            # in its selector. The consumer then runs alone, and its next send()
            # finds the loop's turn free and writes at once (IoLoop.write_now).
            # A yield here made that send() wait for the rest of this iteration
            # instead (measured: echo p50 about 15 % slower with the yield).
        if schedule:
            assert self._dispatch is not None
            self._dispatch(self._drain)
        return dropped, len(items)

    def offer(self, item: Any) -> Tuple[int, bool]:
        """Add ``item`` (I/O thread).

        Returns:
            ``(dropped, accepted)``: how many items the overflow policy dropped, and
            False when a ``block`` buffer is full (the caller keeps the item).
        """
        dropped, accepted = self.offer_many([item])
        return dropped, accepted == 1

    def _took(self) -> Optional[Callable[[], None]]:
        # With _lock held: after a pop, the resume hook to call (outside the lock)
        # if a refused "block" push is waiting and we are at the low-water mark.
        if self._refused and len(self._ring) <= self._low_water:
            self._refused = False
            return self._on_resume
        return None

    def _drain(self) -> None:
        # Dispatcher thread: run the callback for every buffered item, one at a time,
        # so that drops can still happen while a slow callback runs.
        callback = self._callback
        assert callback is not None
        finished = False
        try:
            while True:
                with self._lock:
                    if not self._ring or self._closed:
                        self._scheduled = False
                        finished = True
                        return
                    item = self._ring.pop()
                    resume = self._took()
                if resume is not None:
                    resume()
                try:
                    callback(item)
                except Exception as exc:
                    log.exception("exception in subscription callback %r", callback)
                    if self._on_error is not None:
                        try:
                            self._on_error(exc)
                        except Exception:
                            log.exception("exception reporting a callback error")
        finally:
            # Even a BaseException out of the callback (KeyboardInterrupt on a GUI
            # thread) must not leave the buffer thinking a drain is still queued:
            # the next offer() schedules a new one.
            if not finished:
                with self._lock:
                    self._scheduled = False

    def get(self, timeout: Optional[float] = None) -> Any:
        """Take the oldest item, waiting up to ``timeout`` seconds.

        Raises:
            TimeoutError: nothing arrived in time.
            ClientClosed: the buffer was closed and is empty.
        """
        with self._lock:
            if self._ring:  # the common case under load: no deadline to set up
                item = self._ring.pop()
                resume = self._took()
            else:
                item, resume = self._wait_and_pop(timeout)
        if resume is not None:
            resume()
        return item

    def _wait_and_pop(self, timeout: Optional[float]) -> Tuple[Any, Optional[Callable[[], None]]]:
        # With _lock held: wait for an item, then take it. The lock is released
        # while blocked, and held again on return (or raise).
        deadline = Deadline(timeout)
        lock = self._lock
        tried = False  # the reader could not read: wait as a waiter now
        while not self._ring:
            if self._closed:
                raise ClientClosed("subscription closed")
            remaining = deadline.remaining()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no message within {timeout}s")
            if self._reader is not None and not tried:
                # Wait for the reply on the socket itself, if the I/O thread is
                # idle: it comes with no thread hand-off. Unlocked: the read
                # pushes into this buffer. Then look again either way: the I/O
                # thread may have pushed while the lock was free (and found no
                # waiter to wake); after a read that brought nothing for this
                # buffer, the reader may try again.
                lock.release()
                try:
                    tried = not self._reader(remaining, self._ready)
                finally:
                    lock.acquire()
                continue
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)  # a push (or close) releases it
            lock.release()
            woken = False
            try:
                woken = waiter.acquire(True, -1 if remaining is None else remaining)
            finally:
                lock.acquire()
                if not woken:
                    # Timed out (or interrupted): leave the queue, unless a push
                    # took this waiter out just now; then the loop finds its item.
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
        return self._ring.pop(), self._took()

    def _ready(self) -> bool:
        # For the reader, with the loop's turn held (no push can come meanwhile):
        # an item arrived, or the buffer closed, since get() looked. No lock: a hint.
        return bool(self._ring) or self._closed

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (the old one may be held), and closed."""
        self._lock = threading.Lock()
        self._closed = True
        self._waiters = deque()  # their threads did not survive the fork

    def close(self) -> None:
        """Wake every waiter; later offers are ignored. Idempotent."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.release()


class Subscription:
    """A channel subscription, returned by ``TetherClient.subscribe()``.

    With a callback, payloads are delivered to it on the dispatcher. Without one it
    is a blocking queue: ``get(timeout)``, or ``for payload in sub:`` (the loop ends
    when the subscription is unsubscribed or the client closes).

    Attributes:
        channel: The channel name.
    """

    def __init__(
        self,
        channel: str,
        buffer: InboundBuffer,
        unsubscribe: Callable[[Subscription], None],
        callback: Optional[Callable[[Any], None]] = None,
    ) -> None:
        self.channel = channel
        self.callback = callback
        self._buffer = buffer
        self._unsubscribe = unsubscribe

    def __repr__(self) -> str:
        state = "closed" if self._buffer.closed else "active"
        return f"<Subscription channel={self.channel!r} {state} depth={len(self._buffer)}>"

    @property
    def active(self) -> bool:
        """False once unsubscribed or the client closed."""
        return not self._buffer.closed

    @property
    def depth(self) -> int:
        """Payloads waiting in this subscription's buffer."""
        return len(self._buffer)

    def get(self, timeout: Optional[float] = None) -> Any:
        """The next payload on the channel (queue subscriptions).

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
            ClientClosed: unsubscribed or the client closed, and nothing is left.
        """
        return self._buffer.get(timeout)

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self._buffer.get()
            except ClientClosed:
                return

    def unsubscribe(self) -> None:
        """Stop receiving; sends ``unsubscribe`` if this was the channel's last one."""
        self._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()


T = TypeVar("T")


class Ring(Generic[T]):
    """A bounded FIFO.

    Args:
        capacity: Items held at most.
        overflow: What a push into a full ring does: ``"drop-oldest"`` (evict the
            oldest), ``"sample-oldest"`` (evict the two oldest, as tether-ws),
            ``"drop-newest"`` (refuse the new item), ``"reject"`` and ``"block"``
            (refuse it too; the caller raises or stops producing).
    """

    __slots__ = ("_items", "capacity", "overflow")

    def __init__(self, capacity: int, overflow: str = "drop-oldest") -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.overflow = overflow
        self._items: Deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def push(self, item: T) -> List[T]:
        """Append ``item``, applying the overflow policy when full.

        Returns:
            The items dropped: evicted old ones, or ``[item]`` itself when the
            policy refuses new items. Empty when nothing was dropped.
        """
        items = self._items
        if len(items) < self.capacity:
            items.append(item)
            return []
        policy = self.overflow
        if policy == "drop-oldest":
            dropped = [items.popleft()]
        elif policy == "sample-oldest":
            dropped = [items.popleft()]
            if items:
                dropped.append(items.popleft())
        else:  # drop-newest, reject, block: the newcomer is the one left out
            return [item]
        items.append(item)
        return dropped

    def overflow_batch(self, items: List[T]) -> int:
        """Append one batch that does not fit; return how many items were dropped.

        A batch is one arrival (one socket read): it never overflows because of
        its own size, only because of items still waiting from before, so the
        bound measures how far the consumer lags. ``drop-oldest`` evicts waiting
        items (as many as the batch needs, at most all of them); ``sample-oldest``
        does the same two at a time; ``drop-newest`` refuses the whole batch when
        the waiting items alone fill the ring, and takes all of it otherwise.
        """
        held = self._items
        if self.overflow == "drop-newest":
            if len(held) >= self.capacity:
                return len(items)
            held.extend(items)
            return 0
        excess = min(len(held), len(held) + len(items) - max(self.capacity, len(items)))
        if self.overflow == "sample-oldest" and excess % 2:
            excess += 1
        dropped = 0
        while excess > 0 and held:
            held.popleft()
            excess -= 1
            dropped += 1
        if excess > 0:  # sample-oldest: the pair's second item is the batch's oldest
            items = items[excess:]
            dropped += excess
        held.extend(items)
        return dropped

    def extend(self, items: List[T]) -> None:
        """Append ``items`` that the caller made sure fit (no overflow policy)."""
        self._items.extend(items)

    def push_front(self, items: List[T]) -> None:
        """Put ``items`` back at the head, in order, ignoring the bound.

        Used to requeue messages that were taken for sending but not written when
        the link dropped: they are older than everything queued and must not be lost.
        """
        self._items.extendleft(reversed(items))

    def pop(self) -> T:
        """Remove and return the oldest item (``IndexError`` when empty)."""
        return self._items.popleft()

    def peek(self) -> T:
        return self._items[0]

    def drain(self) -> List[T]:
        """Remove and return every item, oldest first."""
        out = list(self._items)
        self._items.clear()
        return out
