"""Tests of tether_sync.backoff: full-jitter exponential backoff as a frozen value."""

from __future__ import annotations

import dataclasses
import random
from typing import List, Tuple

import pytest

from tether_sync.backoff import Backoff


class RecordingRng:
    """A fake RNG: records the bounds it is asked for and returns a fixed fraction."""

    def __init__(self, fraction: float = 1.0) -> None:
        self.fraction = fraction
        self.calls: List[Tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


def run(backoff: Backoff, rng: RecordingRng, n: int) -> Tuple[List[float], Backoff]:
    delays: List[float] = []
    for _ in range(n):
        delay, backoff = backoff.next(rng)
        delays.append(delay)
    return delays, backoff


def test_bounds_are_min_of_max_delay_and_base_times_two_to_the_attempt() -> None:
    rng = RecordingRng()
    base, cap = 0.3, 30.0
    _, after = run(Backoff(base_delay=base, max_delay=cap), rng, 12)
    expected = [(0.0, min(cap, base * 2**attempt)) for attempt in range(1, 13)]
    assert rng.calls == expected
    assert after.attempt == 12


def test_first_bounds_by_hand() -> None:
    rng = RecordingRng()
    run(Backoff(base_delay=1.0, max_delay=10.0), rng, 5)
    assert rng.calls == [(0.0, 2.0), (0.0, 4.0), (0.0, 8.0), (0.0, 10.0), (0.0, 10.0)]


def test_delay_is_what_the_rng_returns() -> None:
    delays, _ = run(Backoff(base_delay=0.5, max_delay=100.0), RecordingRng(0.25), 3)
    assert delays == [0.25, 0.5, 1.0]


def test_exact_values_with_seeded_random() -> None:
    backoff = Backoff(base_delay=0.3, max_delay=30.0)
    mirror = random.Random(0)
    rng = random.Random(0)
    for attempt in range(1, 20):
        delay, backoff = backoff.next(rng)
        assert delay == mirror.uniform(0.0, min(30.0, 0.3 * 2**attempt))
        assert 0.0 <= delay <= min(30.0, 0.3 * 2**attempt)


def test_first_delay_lies_in_zero_to_twice_base() -> None:
    base = 0.2
    rng = random.Random(0)
    seen = [Backoff(base_delay=base, max_delay=30.0).next(rng)[0] for _ in range(500)]
    assert all(0.0 <= d <= 2 * base for d in seen)
    # Full jitter: both halves of the range are used, not just [base, 2*base].
    assert min(seen) < base / 2
    assert max(seen) > 1.5 * base
    low, high = RecordingRng(0.0), RecordingRng(1.0)
    assert Backoff(base_delay=base, max_delay=30.0).next(low)[0] == 0.0
    assert Backoff(base_delay=base, max_delay=30.0).next(high)[0] == 2 * base


def test_next_does_not_mutate_and_counts_from_one() -> None:
    start = Backoff(base_delay=1.0, max_delay=5.0)
    _, first = start.next(RecordingRng())
    assert start.attempt == 0
    assert first.attempt == 1
    assert first.base_delay == 1.0 and first.max_delay == 5.0


def test_frozen() -> None:
    backoff = Backoff(base_delay=1.0, max_delay=5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.attempt = 3  # type: ignore[misc]


def test_reset_returns_to_attempt_zero_and_first_bounds() -> None:
    rng = RecordingRng()
    _, backoff = run(Backoff(base_delay=1.0, max_delay=60.0, max_attempts=5), rng, 4)
    reset = backoff.reset()
    assert reset.attempt == 0
    assert reset.max_attempts == 5 and reset.base_delay == 1.0 and reset.max_delay == 60.0
    assert backoff.attempt == 4  # the old value is unchanged
    rng.calls.clear()
    reset.next(rng)
    assert rng.calls == [(0.0, 2.0)]


def test_exhausted_after_max_attempts() -> None:
    backoff = Backoff(base_delay=0.1, max_delay=1.0, max_attempts=3)
    rng = RecordingRng()
    states = [backoff.exhausted]
    for _ in range(3):
        _, backoff = backoff.next(rng)
        states.append(backoff.exhausted)
    assert states == [False, False, False, True]
    assert not backoff.reset().exhausted


def test_zero_max_attempts_is_exhausted_at_once() -> None:
    assert Backoff(base_delay=0.1, max_delay=1.0, max_attempts=0).exhausted


def test_never_exhausted_without_max_attempts() -> None:
    _, backoff = run(Backoff(base_delay=0.1, max_delay=1.0), RecordingRng(), 100)
    assert not backoff.exhausted


def test_cap_method_and_huge_attempts_do_not_overflow() -> None:
    backoff = Backoff(base_delay=0.3, max_delay=30.0)
    assert [backoff.cap(n) for n in (1, 2, 3)] == [0.6, 1.2, 2.4]
    assert backoff.cap(10_000) == 30.0
    rng = RecordingRng()
    far = dataclasses.replace(backoff, attempt=5000)
    delay, after = far.next(rng)
    assert rng.calls == [(0.0, 30.0)]
    assert delay == 30.0 and after.attempt == 5001
