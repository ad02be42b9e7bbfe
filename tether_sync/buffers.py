"""A bounded FIFO with the overflow policies of DESIGN §1. Pure: no lock, no I/O.

The caller owns the locking. ``push`` reports what it dropped so the caller can
fail deliveries, count drops and emit ``backpressure``.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Generic, Iterator, List, TypeVar

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
