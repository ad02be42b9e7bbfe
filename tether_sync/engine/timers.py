"""The loop's own timers: named one-shot deadlines in a heap. Pure: times are passed in.

The I/O thread sleeps in the selector until the earliest of these (or of the
session's own deadlines), so every wait of the engine (a reconnect delay, a
connect timeout, close()'s deadline, the kernel poll, the durable linger) can
be cut short by a wake byte instead of being a ``sleep()`` (STYLE §4.2).

Timers are named, one live timer per name: scheduling a name again replaces
its earlier deadline, so a reconnect or a connect timeout scheduled twice
fires once. Cancelling is lazy (the heap entry stays and is skipped when it
surfaces), so cancel and reschedule cost O(1) and O(log n) on the hot path
(the kernel poll after writes). Used by the I/O thread only.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Dict, List, Optional, Tuple


class TimerHeap:
    """Named one-shot timers; scheduling a name again replaces its earlier timer."""

    def __init__(self) -> None:
        self._heap: List[Tuple[float, int, str]] = []
        self._live: Dict[str, int] = {}  # name -> sequence number of its live entry
        self._seq = itertools.count()

    def schedule(self, when: float, name: str) -> None:
        """Fire ``name`` at ``when`` (monotonic seconds), replacing its earlier timer."""
        # The sequence number tells the live entry of a name from stale ones
        # (and orders equal deadlines by scheduling order).
        seq = next(self._seq)
        self._live[name] = seq
        heapq.heappush(self._heap, (when, seq, name))

    def cancel(self, name: str) -> None:
        # Lazy deletion: the stale heap entry is skipped when it surfaces.
        self._live.pop(name, None)

    def cancel_all(self) -> None:
        """Forget every timer (the client ended)."""
        self._live.clear()
        self._heap.clear()

    def scheduled(self, name: str) -> bool:
        """Whether ``name`` is set and has not fired or been cancelled."""
        return name in self._live

    def when(self, name: str) -> Optional[float]:
        """When ``name`` fires, or None (a linear scan: close() asks once, the loop never)."""
        seq = self._live.get(name)
        if seq is None:
            return None
        for when, s, _ in self._heap:
            if s == seq:
                return when
        return None  # pragma: no cover - _live and _heap always agree

    def _prune(self) -> None:
        # Drop stale entries (cancelled or replaced) from the top of the heap.
        heap = self._heap
        while heap and self._live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)

    def next_due(self) -> Optional[float]:
        """When the next timer is due, ``None`` if none is set."""
        self._prune()
        return self._heap[0][0] if self._heap else None

    def timeout(self, now: float) -> Optional[float]:
        """Seconds until the next timer (0 if one is due), ``None`` if none is set."""
        self._prune()
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - now)

    def pop_due(self, now: float) -> List[str]:
        """Remove and return the names of every timer due at ``now``, earliest first."""
        due: List[str] = []
        heap = self._heap
        while True:
            self._prune()
            if not heap or heap[0][0] > now:
                return due
            _, _, name = heapq.heappop(heap)
            del self._live[name]
            due.append(name)
