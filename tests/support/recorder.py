"""A thread-safe event recorder that tests wait on (never sleep)."""

from __future__ import annotations

import threading
from typing import Any, Callable, List


class Recorder:
    """Collects whatever it is called with; tests wait for a condition on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: List[Any] = []

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def snapshot(self) -> List[Any]:
        with self._cond:
            return list(self.items)

    def wait_for(self, predicate: Callable[[List[Any]], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(items)`` holds; returns its last value."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.items), timeout)

    def wait_count(self, n: int, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda items: len(items) >= n, timeout)


def client_threads() -> List[threading.Thread]:
    """Threads started by tether_sync clients that are still alive."""
    names = {"tether-io", "tether-dispatch", "tether-connect", "tether-auth"}
    return [t for t in threading.enumerate() if t.name in names and t.is_alive()]


def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.005
) -> bool:
    """Wait until ``predicate()`` holds, re-checking every ``interval`` seconds.

    For state that offers nothing to wait on (a client's counters while its
    dispatcher is deliberately held up). A bounded condition wait, never a fixed sleep.
    """
    tick = threading.Event()
    for _ in range(max(1, int(timeout / interval))):
        if predicate():
            return True
        tick.wait(interval)
    return predicate()


def wait_subscribed(server: Any, channel: str, timeout: float = 5.0) -> bool:
    """Wait until some open connection of the bundled ``server`` subscribed to ``channel``."""
    return bool(
        server.wait_for(
            lambda: any(channel in c.subscriptions for c in server.connections), timeout
        )
    )
