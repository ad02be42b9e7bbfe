"""A random source for pure policy tests: full jitter at its top, every draw recorded."""

from __future__ import annotations

from typing import List, Tuple


class TopRng:
    """Returns the upper bound of every ``uniform(a, b)`` and records each (a, b)."""

    def __init__(self) -> None:
        self.calls: List[Tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b
