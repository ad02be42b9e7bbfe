"""The outbound queue: user threads put messages in, the I/O thread takes them out.

It is also the flow control between a fast producer and the link (DESIGN §1):
the bound counts the messages waiting here *plus* those the I/O thread took and
that are not done yet (not fully written, or written and awaiting their ack).
While the link is open a full outbox makes :meth:`Outbox.put` wait for room,
woken when the I/O thread releases messages (never polled), like a blocking
socket or kafka's ``max_block_ms``; nothing is evicted. ``block`` (the
default) waits in every state; the opt-in drop policies (``drop-oldest``,
``drop-newest``, ``reject``) act only while the link is not open.

A send made from a tether_sync callback (any dispatcher) never waits: waiting
there could deadlock against inbound ``block`` backpressure (the callback that
would free the inbound buffer is the one waiting). Such a message is accepted
over the bound instead, never dropped, and one warning per episode says so.

Wake-ups: this is ``send()``'s data path, so a put costs one lock and, at most,
one wake byte. ``wake_pending`` says the I/O thread was woken and has not
taken since: only the put that turns it on writes the byte. The I/O thread
turns it off in :meth:`Outbox.take`, under the same lock, so a put after that
take wakes it again; nothing queued is ever left without a wake-up coming
(the durable ``linger`` promises a timer instead, see :meth:`Outbox.take`).
Who touches what: senders call the ``put`` family, :meth:`Outbox.wait_room`
and :meth:`Outbox.hold_for_command`; the engine alone calls ``take``,
``release``, ``give_back``, ``hold``, ``command_ran``, ``set_open``,
``end_linger`` and ``drain`` (on the I/O thread, or before it runs); ``stop``
is called by either side.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable, Deque, Generic, List, Optional, Tuple, TypeVar

from ..clock import Deadline
from ..exceptions import ClientClosed, QueueFull

log = logging.getLogger("tether_sync")

T = TypeVar("T")

#: Messages one ack frees at least, from a server that acks as DESIGN §5 asks
#: (at least once per 64 messages or 50 ms, cumulative): a release this large
#: wakes senders waiting for room, whatever the bound (see Outbox.release).
ACK_ROOM = 64

# Set on a thread while it runs a tether_sync callback (see dispatch.run_task).
in_callback = threading.local()


class Outbox(Generic[T]):
    """A bounded FIFO shared by senders and the I/O thread.

    Args:
        capacity: Messages held at most (queued plus taken and not done).
        overflow: ``block``, ``drop-oldest``, ``drop-newest`` or ``reject``; the
            drop policies apply only while not open.
        offline_ok: False for ``queue=False``: ``put()`` while not open raises
            :class:`~tether_sync.QueueFull`.
        wake: Called (outside the lock) when the I/O thread must look at the queue.
    """

    def __init__(
        self,
        capacity: int,
        overflow: str,
        *,
        offline_ok: bool = True,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.capacity = capacity
        self.overflow = overflow
        self._offline_ok = offline_ok
        self._wake = wake
        # _lock guards every attribute below; _room is notified when room appears,
        # the link opens or closes, or the outbox stops accepting. Held only for
        # deque operations and counter updates, never while calling out.
        self._lock = threading.Lock()
        # Commands that messages put after them must follow (a subscribe posted
        # before a send on its channel): while one is posted and not yet run by
        # the I/O thread, take() hands out nothing. See hold_for_command().
        self._held = 0
        self._room = threading.Condition(self._lock)
        self._items: Deque[T] = deque()
        self._taken = 0  # taken by the I/O thread and not released yet
        self._waiting = 0  # senders blocked in put()
        self._open = False
        self._accepting = True
        self._closed_reason: Optional[BaseException] = None
        self.wake_pending = False  # the I/O thread was woken and has not taken since
        # Room that wakes waiting senders: an eighth of the bound (few hand-offs
        # when writes free room message by message), but never more than one
        # ack frees (ACK_ROOM): acks come a batch at a time, and a sender left
        # waiting after an ack would wait for the next one with room free.
        self._wake_room = max(1, min(capacity // 8, ACK_ROOM))
        # Seconds the I/O thread may let durable sends gather before it looks
        # again (0: wake it for every send). A durable send commits to disk with
        # the GIL released; if each one woke the I/O thread, the sender would wait
        # for that thread's whole iteration to get the GIL back, per message.
        self.linger = 0.0
        self._over_warned = False
        # Whether a send() logged that it waits for room while the link was open
        # (it is slower than the producer) and while it was not (down): one line
        # per reason per episode. An episode of a slow link ends when everything
        # is done (nothing queued, nothing taken), not whenever the queue happens
        # to be empty (a fast loop empties it hundreds of times); an outage ends
        # when the link opens.
        self._wait_logged_open = False
        self._wait_logged_down = False
        self._was_open = False  # the link has been open at least once

    def __len__(self) -> int:
        return len(self._items)

    @property
    def taken(self) -> int:
        """Messages the I/O thread holds that are not done (for ``in_flight``)."""
        return self._taken

    # ------------------------------------------------------------ senders

    def put(
        self,
        item: T,
        timeout: Optional[float] = None,
        *,
        reserved: bool = False,
        wake: bool = True,
    ) -> List[T]:
        """Add ``item`` at the tail (any thread).

        ``reserved``: the caller already waited for room with :meth:`wait_room`
        (a durable send, whose commit hook must not wait: it may be committing
        other senders' messages); where that wait applied, the item is accepted
        even if another sender took the room meanwhile (by at most one message
        per concurrent sender).

        ``wake``: False when the caller writes the message itself next
        (``IoLoop.write_now``, which wakes the I/O thread if it cannot).

        Returns:
            The messages dropped to make room (only while not open, by a drop
            policy), or ``[item]`` itself with ``drop-newest``; the caller fails them.

        Raises:
            ClientClosed: the client is closed (or closed while waiting).
            QueueFull: ``reject`` (or ``queue=False``) while not open and full
                (or not open at all); or no room within ``timeout``.
        """
        dropped: List[T] = []
        with self._lock:
            if not self._accepting:
                raise ClientClosed("the client is closed") from self._closed_reason
            if not self._open and not self._offline_ok:
                raise QueueFull("queue=False and the client is not open")
            if len(self._items) + self._taken >= self.capacity and not (
                reserved and (self._open or self.overflow == "block")
            ):
                dropped = self._full(item, timeout)
                if dropped and dropped[0] is item:
                    return dropped
            self._items.append(item)
            # The first put since the I/O thread last took wakes it; the others
            # ride on that wake-up (see the module docstring).
            woke = wake and not self.wake_pending
            self.wake_pending = True
        if woke:
            self._wake()  # outside the lock: a wake-up never holds up other senders
        return dropped

    def put_many(
        self, items: List[T], timeout: Optional[float] = None
    ) -> Tuple[List[T], List[T], Optional[QueueFull]]:
        """Add ``items`` at the tail, in order (any thread); one lock per run of room.

        While there is room the items go in together (no other sender's item
        between them); where the queue is full, the next item takes :meth:`put`'s
        path (wait, or the drop policy), then the batch goes on.

        Returns:
            ``(dropped, refused, why)``: the messages dropped by a policy, and
            those not queued (no room within ``timeout``, or ``queue=False``
            while not open) with the :class:`QueueFull` that says why; the
            caller fails both. Never raises :class:`QueueFull`, so the messages
            before a full queue stay queued.

        Raises:
            ClientClosed: the client is closed (the items not queued yet are not).
        """
        deadline = Deadline(timeout)
        dropped: List[T] = []
        i, n = 0, len(items)
        while i < n:
            with self._lock:
                if not self._accepting:
                    raise ClientClosed("the client is closed") from self._closed_reason
                if not self._open and not self._offline_ok:
                    why = QueueFull("queue=False and the client is not open")
                    return dropped, items[i:], why
                room = self.capacity - len(self._items) - self._taken
                wake = False
                if room > 0:
                    end = min(n, i + room)
                    self._items.extend(items[i:end])
                    i = end
                    wake = not self.wake_pending
                    self.wake_pending = True
            if wake:
                self._wake()
            if i < n:
                try:
                    dropped.extend(self.put(items[i], deadline.remaining()))
                except QueueFull as exc:
                    return dropped, items[i:], exc
                i += 1
        return dropped, [], None

    def put_reserved_many(self, items: List[T]) -> int:
        """Add committed durable messages at the tail under one lock (any thread).

        What :meth:`put` with ``reserved=True`` would do for each, for as many
        of ``items`` as take its plain path (the link open, or ``block``, or
        room left); never waits. Returns how many were added (a prefix of
        ``items``): the caller puts the rest one by one, where the policy, a
        callback's send over the bound, or a closed client decides.
        """
        wake = False
        with self._lock:
            if not self._accepting or (not self._open and not self._offline_ok):
                return 0
            if self._open or self.overflow == "block":
                n = len(items)
            else:
                n = max(0, min(len(items), self.capacity - len(self._items) - self._taken))
            if n:
                self._items.extend(items if n == len(items) else items[:n])
                wake = not self.wake_pending
                self.wake_pending = True
        if wake:
            self._wake()
        return n

    def _full(self, item: T, timeout: Optional[float]) -> List[T]:
        # With _lock held: make room for ``item`` by the policy, or wait for it.
        if getattr(in_callback, "active", False):
            if not self._over_warned:
                self._over_warned = True
                log.warning(
                    "outbound queue full (%d): a send from a callback is accepted over "
                    "the bound rather than waiting (it could deadlock)",
                    self.capacity,
                )
            return []
        if self._await_room(timeout):
            return []
        if not self._offline_ok:
            raise QueueFull("queue=False and the client is not open")
        return self._drop(item)

    def wait_room(self, timeout: Optional[float] = None) -> None:
        """Wait until there is room, where :meth:`put` would wait for it (any thread).

        Returns at once where ``put`` would not wait (a drop policy while not
        open applies in ``put``; a send from a callback never waits).

        Raises:
            ClientClosed: the client is closed (or closed while waiting).
            QueueFull: no room within ``timeout``.
        """
        # Room now (read without the lock: the answer is as good as a locked one,
        # which another sender can outdate as soon as it is released): a durable
        # send() pays no lock here unless it may have to wait.
        if self._accepting and len(self._items) + self._taken < self.capacity:
            return
        with self._lock:
            if getattr(in_callback, "active", False):
                return
            self._await_room(timeout)

    def _await_room(self, timeout: Optional[float]) -> bool:
        """With _lock held: wait until there is room (True), or until a drop policy
        applies instead (False: full and not open, the policy is not ``block``).

        Raises:
            ClientClosed: the client is closed (or closed while waiting).
            QueueFull: no room within ``timeout``.
        """
        deadline: Optional[Deadline] = None
        while True:
            if not self._accepting:
                raise ClientClosed("the client is closed") from self._closed_reason
            if len(self._items) + self._taken < self.capacity:
                return True
            if not self._open and self.overflow != "block":
                return False
            if deadline is None:
                deadline = Deadline(timeout)
            remaining = deadline.remaining()
            if remaining is not None and remaining <= 0:
                raise self._no_room(timeout)
            if not (self._wait_logged_open if self._open else self._wait_logged_down):
                self._log_first_wait()
            self._waiting += 1
            try:
                self._room.wait(remaining)
            finally:
                self._waiting -= 1

    def _no_room(self, timeout: Optional[float]) -> QueueFull:
        # With _lock held: the error of a send(timeout=...) that found no room, and why.
        why = (
            "the link takes messages slower than they are sent"
            if self._open
            else "the link is not open: they are sent once the client reconnects"
        )
        return QueueFull(
            f"no room in the outbound queue within {timeout}s: "
            f"{len(self._items) + self._taken} messages queued or in flight, the bound is "
            f"{self.capacity} ({why})"
        )

    def _log_first_wait(self) -> None:
        # With _lock held (logging takes only its own handler locks): the first
        # send() of an episode that has to wait says so once (per reason).
        if self._open:
            self._wait_logged_open = True
            log.info(
                "send() is waiting for room: the outbound queue is full (%d messages) "
                "because the link takes messages slower than they are sent; it goes on "
                "as they are written (overflow='block')",
                self.capacity,
            )
        else:
            self._wait_logged_down = True
            # Before the first open this is the normal start of a script that
            # sends at once (connect() returns before the link opens): INFO. A
            # failed attempt says so itself, as a WARNING. Once the link was
            # open, a full queue while down is an outage: WARNING.
            log.log(
                logging.WARNING if self._was_open else logging.INFO,
                "send() is waiting for room: the outbound queue is full (%d messages) "
                "while the link is not open; it goes on once the client %s "
                "(overflow='block': nothing is dropped; pass send(timeout=...) to "
                "bound the wait, or choose a drop policy in Queue(overflow=...))",
                self.capacity,
                "reconnects" if self._was_open else "connects",
            )

    def _drop(self, item: T) -> List[T]:
        # With _lock held, not open, full: apply the drop policy.
        policy = self.overflow
        if policy == "reject":
            raise QueueFull(f"outbound queue full ({self.capacity} messages)")
        if policy == "drop-oldest" and self._items:
            return [self._items.popleft()]
        return [item]  # drop-newest (or nothing queued to evict: all in flight)

    # ------------------------------------------------------------ the I/O thread

    def take(
        self, limit: int, max_bytes: int, size: Callable[[T], int], linger: bool = False
    ) -> List[T]:
        """Remove up to ``limit`` messages (about ``max_bytes``) from the head.

        ``linger``: set ``wake_pending``, so the next puts write no wake byte;
        the I/O thread promised to look again soon (:meth:`end_linger`). (Set,
        not kept: after an :meth:`end_linger` it is clear, and the first put of
        every linger period would wake the thread.)
        """
        out: List[T] = []
        with self._lock:
            self.wake_pending = linger
            if self._held:
                return out  # a command posted before these messages runs first
            items = self._items
            total = 0
            while items and len(out) < limit and total < max_bytes:
                item = items.popleft()
                out.append(item)
                total += size(item)
            self._taken += len(out)
        return out

    def hold_for_command(self) -> None:
        """Hold the queue for a command about to be posted (any thread; see :meth:`command_ran`).

        A user thread posts ``subscribe()``'s command to the mailbox and then
        puts a ``send()`` here; the I/O thread drains the mailbox and pumps the
        queue at different steps, so without the hold it could frame the message
        first (the command still in the mailbox) and the server would answer on
        a channel not subscribed yet: the echo was lost (about 1 run in 40 of a
        subscribe-then-send test). Held, the pump takes nothing until the command
        ran, in the same or the next loop iteration.
        """
        with self._lock:
            self._held += 1

    def command_ran(self) -> None:
        """The I/O thread ran (or refused) a command posted after :meth:`hold_for_command`."""
        with self._lock:
            self._held = max(0, self._held - 1)

    def end_linger(self) -> bool:
        """The I/O thread's promised look: puts wake it again; True if some are queued."""
        with self._lock:
            self.wake_pending = False
            return bool(self._items)

    def release(self, n: int) -> None:
        """``n`` taken messages are done (written, acked or failed): room for more."""
        if n <= 0:
            return
        with self._lock:
            self._taken = max(0, self._taken - n)
            # Wake waiting senders once a useful amount of room is free (an
            # eighth of the bound, at most an ack's worth), not for every
            # message written: fewer thread hand-offs.
            room = self.capacity - len(self._items) - self._taken
            if self._waiting and room >= self._wake_room:
                self._room.notify_all()
            if not self._items and self._taken < self.capacity:
                self._over_warned = False
            if not self._items and not self._taken:
                self._wait_logged_open = self._wait_logged_down = False

    def give_back(self, items: List[T]) -> None:
        """Taken messages that were not done go back to the head, in order."""
        with self._lock:
            self._taken = max(0, self._taken - len(items))
            self._items.extendleft(reversed(items))

    def hold(self, items: List[T]) -> None:
        """Count messages the I/O thread keeps outside the queue (unacked, carried over)."""
        with self._lock:
            self._taken += len(items)

    def set_open(self, is_open: bool) -> None:
        """The link opened or went down: waiting senders re-evaluate."""
        with self._lock:
            if self._open != is_open:
                self._open = is_open
                if is_open:
                    self._wait_logged_down = False  # the outage is over
                    self._was_open = True
                self._room.notify_all()

    def stop(self, reason: Optional[BaseException] = None) -> None:
        """Accept nothing more; senders waiting for room raise :class:`ClientClosed`."""
        with self._lock:
            self._accepting = False
            self._closed_reason = reason
            self._room.notify_all()

    def drain(self) -> List[T]:
        """Stop, and remove every queued message (they are failed by the caller)."""
        with self._lock:
            self._accepting = False
            out = list(self._items)
            self._items.clear()
            self._room.notify_all()
        return out
