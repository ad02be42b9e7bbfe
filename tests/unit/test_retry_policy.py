"""Retry policies, endpoint rotation and terminal close-code ranges: pure, no sockets."""

from __future__ import annotations

import math
import random
from typing import Any, List, Optional, Tuple

import pytest
from support.rng import TopRng

from tether_sync.backoff import (
    MAX_POLICY_DELAY,
    Backoff,
    FullJitter,
    ask_policy,
    check_delay,
)
from tether_sync.exceptions import TetherError
from tether_sync.options import Reconnect, coerce


def run(
    backoff: Backoff, n: int, policy: Any = None, rng: Any = None, step: float = 1.0
) -> Tuple[List[Optional[float]], List[int], List[Optional[TetherError]], Backoff]:
    """n retries at now = 100, 101, ...: delays, endpoints chosen, problems."""
    rng = rng if rng is not None else TopRng()
    delays: List[Optional[float]] = []
    endpoints: List[int] = []
    problems: List[Optional[TetherError]] = []
    for i in range(n):
        delay, backoff, problem = backoff.retry(rng, 100.0 + i * step, OSError("x"), policy)
        delays.append(delay)
        endpoints.append(backoff.endpoint)
        problems.append(problem)
    return delays, endpoints, problems, backoff


# -- the default policy, one endpoint and several ------------------------------------


def test_one_endpoint_retry_is_exactly_the_full_jitter_of_next() -> None:
    a, b = random.Random(3), random.Random(3)
    via_retry, via_next = Backoff(0.3, 30.0), Backoff(0.3, 30.0)
    for _ in range(15):
        d1, via_retry, problem = via_retry.retry(a, 0.0)
        d2, via_next = via_next.next(b)
        assert d1 == d2 and problem is None
        assert via_retry.attempt == via_next.attempt and via_retry.endpoint == 0


def test_several_endpoints_rotate_round_robin_and_back_off_per_rotation() -> None:
    rng = TopRng()
    _, endpoints, _, after = run(Backoff(1.0, 100.0, endpoints=3), 9, rng=rng)
    assert endpoints == [1, 2, 0, 1, 2, 0, 1, 2, 0]
    # Rounds 1,1,1,2,2,2,3,3,3: a dead primary costs the secondary one short delay.
    assert rng.calls == [(0.0, 2.0)] * 3 + [(0.0, 4.0)] * 3 + [(0.0, 8.0)] * 3
    assert after.attempt == 9


def test_round_is_ceil_of_attempt_over_endpoints() -> None:
    two = Backoff(1.0, 10.0, endpoints=2)
    assert [two.round(n) for n in range(1, 8)] == [1, 1, 2, 2, 3, 3, 4]
    one = Backoff(1.0, 10.0)
    assert [one.round(n) for n in range(1, 5)] == [1, 2, 3, 4]


def test_reset_keeps_the_endpoint_so_a_lost_link_moves_on() -> None:
    _, _, _, backoff = run(Backoff(1.0, 10.0, endpoints=2), 1)
    assert backoff.endpoint == 1 and backoff.since == 100.0
    opened = backoff.reset()
    assert (opened.attempt, opened.endpoint, opened.since) == (0, 1, None)
    delay, lost, _ = opened.retry(TopRng(), 500.0)
    assert (lost.attempt, lost.endpoint, lost.since) == (1, 0, 500.0)
    assert delay == 2.0  # round 1 again: the run started over


# -- a user's policy ---------------------------------------------------------------


def test_policy_gets_round_elapsed_and_reason() -> None:
    seen: List[Tuple[int, float, Any]] = []

    def policy(attempt: int, elapsed: float, reason: Optional[BaseException]) -> float:
        seen.append((attempt, elapsed, reason))
        return 0.25

    rng = TopRng()
    delays, _, problems, _ = run(Backoff(1.0, 10.0, endpoints=2), 5, policy, rng, step=2.5)
    assert delays == [0.25] * 5 and problems == [None] * 5
    assert [(a, e) for a, e, _ in seen] == [(1, 0.0), (1, 2.5), (2, 5.0), (2, 7.5), (3, 10.0)]
    assert all(isinstance(r, OSError) for _, _, r in seen)
    assert rng.calls == []  # the default is not drawn when the policy answers


def test_policy_none_means_stop() -> None:
    delays, _, problems, _ = run(Backoff(1.0, 10.0), 1, lambda a, e, r: None)
    assert delays == [None] and problems == [None]


def test_policy_int_is_seconds() -> None:
    assert ask_policy(lambda a, e, r: 2, 1, 0.0, None) == (2.0, None)
    assert check_delay(0) == 0.0 and check_delay(MAX_POLICY_DELAY) == MAX_POLICY_DELAY


@pytest.mark.parametrize(
    "garbage",
    [
        -1,
        -0.001,
        math.nan,
        math.inf,
        -math.inf,
        MAX_POLICY_DELAY + 1,
        1e300,
        "1",
        b"1",
        True,
        False,
        object(),
        [1.0],
        1j,
    ],
    ids=repr,
)
def test_policy_garbage_falls_back_to_the_default_and_says_so(garbage: Any) -> None:
    rng = TopRng()
    delays, _, problems, after = run(Backoff(1.0, 10.0), 1, lambda a, e, r: garbage, rng)
    assert delays == [2.0] and rng.calls == [(0.0, 2.0)]  # the default full jitter
    problem = problems[0]
    assert isinstance(problem, TetherError) and "reconnect policy returned" in str(problem)
    assert "default delay" in str(problem)
    assert after.attempt == 1


def test_policy_that_raises_falls_back_and_chains_the_exception() -> None:
    def policy(attempt: int, elapsed: float, reason: Optional[BaseException]) -> float:
        raise ZeroDivisionError("oops")

    rng = TopRng()
    delays, _, problems, _ = run(Backoff(1.0, 10.0), 1, policy, rng)
    assert delays == [2.0]
    problem = problems[0]
    assert isinstance(problem, TetherError) and "raised ZeroDivisionError: oops" in str(problem)
    assert isinstance(problem.__cause__, ZeroDivisionError)


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_policy_raising_a_base_exception_falls_back_too(exc: BaseException) -> None:
    # It runs on the I/O thread: a SystemExit there would only end the loop.
    def policy(attempt: int, elapsed: float, reason: Optional[BaseException]) -> float:
        raise exc

    rng = TopRng()
    delays, _, problems, after = run(Backoff(1.0, 10.0), 1, policy, rng)
    assert delays == [2.0] and rng.calls == [(0.0, 2.0)]  # the default full jitter
    problem = problems[0]
    assert isinstance(problem, TetherError)
    assert f"raised {type(exc).__name__}" in str(problem) and "default delay" in str(problem)
    assert problem.__cause__ is exc
    assert after.attempt == 1


def test_full_jitter_policy_is_the_default_as_a_value() -> None:
    mirror = random.Random(5)
    jitter = FullJitter(0.3, 30.0, random.Random(5))
    for attempt in range(1, 12):
        assert jitter(attempt, 0.0, None) == mirror.uniform(0.0, min(30.0, 0.3 * 2**attempt))
    assert repr(jitter) == "FullJitter(0.3, 30.0)"
    with pytest.raises(ValueError, match="max_delay"):
        FullJitter(2.0, 1.0)
    with pytest.raises(ValueError, match="base_delay"):
        FullJitter(math.nan, 1.0)
    with pytest.raises(TypeError, match="base_delay"):
        FullJitter("1", 2.0)  # type: ignore[arg-type]


# -- Reconnect(policy=...) validation -------------------------------------------------


def test_policy_option_accepts_callables_of_three_arguments() -> None:
    def three(attempt: int, elapsed: float, reason: Optional[BaseException]) -> float:
        return 1.0

    assert Reconnect(policy=three).policy is three
    assert Reconnect(policy=lambda *args: 1.0).policy is not None
    assert Reconnect(policy=FullJitter(0.1, 1.0)).policy is not None
    assert Reconnect().policy is None
    group = coerce("reconnect", {"policy": three}, Reconnect)
    assert group is not None and group.policy is three


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (1.5, "reconnect.policy must be callable"),
        ("backoff", "reconnect.policy must be callable"),
        (lambda attempt: 1.0, "reconnect.policy must accept (attempt, elapsed, reason)"),
        (lambda a, b, c, d: 1.0, "reconnect.policy must accept (attempt, elapsed, reason)"),
    ],
)
def test_bad_policy_fails_at_construction_naming_the_option(policy: Any, message: str) -> None:
    with pytest.raises(TypeError) as info:
        Reconnect(policy=policy)
    assert message in str(info.value)


# -- terminal close codes: ints and ranges --------------------------------------------


def test_ranges_cover_their_codes() -> None:
    codes = Reconnect(terminal_codes=[1008, range(4000, 4100)]).terminal_codes
    assert isinstance(codes, frozenset)
    assert 1008 in codes and 4000 in codes and 4001 in codes and 4099 in codes
    assert 4100 not in codes and 3999 not in codes and 1000 not in codes
    assert len(codes) == 101


def test_a_bare_range_is_one_range() -> None:
    assert Reconnect(terminal_codes=range(4000, 4100)).terminal_codes == frozenset(
        range(4000, 4100)
    )
    assert Reconnect(terminal_codes=[range(4000, 4100)]) == Reconnect(
        terminal_codes=range(4000, 4100)
    )
    stepped = Reconnect(terminal_codes=[range(4000, 4010, 3)]).terminal_codes
    assert stepped == frozenset({4000, 4003, 4006, 4009})


def test_repr_shows_runs_as_spans() -> None:
    text = repr(Reconnect(terminal_codes=[1008, range(4000, 4100), 4200, 4201]))
    assert "terminal_codes={1008, 4000-4099, 4200, 4201}" in text
    assert len(text) < 200


@pytest.mark.parametrize(
    ("codes", "exc", "message"),
    [
        ([range(4000, 4000)], ValueError, "empty range"),
        ([range(900, 1001)], ValueError, "outside the close codes 1000-4999"),
        ([range(4900, 5001)], ValueError, "outside the close codes 1000-4999"),
        (range(4999, 5000, -1), ValueError, "empty range"),
        ([5000], ValueError, "close code in 1000-4999"),
        ([999], ValueError, "close code in 1000-4999"),
        ([(4000, 4099)], TypeError, "range(4000, 4100)"),
        ([4000.0], TypeError, "int or a range"),
        ([True], TypeError, "int or a range"),
        ("4000-4099", TypeError, "collection of ints and ranges"),
        (4001, TypeError, "collection of ints and ranges"),
    ],
    ids=repr,
)
def test_bad_terminal_codes_fail_clearly(codes: Any, exc: type, message: str) -> None:
    with pytest.raises(exc) as info:
        Reconnect(terminal_codes=codes)
    assert "reconnect.terminal_codes" in str(info.value)
    assert message in str(info.value)


def test_min_uptime_is_kept() -> None:
    assert Reconnect().min_uptime == 2.0
    assert Reconnect(min_uptime=0).min_uptime == 0


# -- several endpoints: construction -------------------------------------------------


def test_a_list_or_tuple_of_urls_is_the_endpoints_in_order() -> None:
    from tether_sync import TetherClient

    urls = ["ws://a.example/ws", "wss://b.example:8443/ws"]
    for given in (urls, tuple(urls)):
        client = TetherClient(given)
        try:
            assert client.url == urls[0]
            assert client.urls == tuple(urls)
            assert client.stats().endpoint == urls[0]  # the first is tried first
        finally:
            client.close(timeout=1)
    single = TetherClient("ws://a.example/ws")
    try:
        assert single.urls == ("ws://a.example/ws",)
        assert single.stats().endpoint == "ws://a.example/ws"
    finally:
        single.close(timeout=1)


@pytest.mark.parametrize(
    ("url", "exc", "message"),
    [
        ([], ValueError, "url: the list of endpoints is empty"),
        ((), ValueError, "url: the list of endpoints is empty"),
        (["ws://a.example/", "http://b.example/"], ValueError, "url[1]: url must start with ws://"),
        (["ws://a.example/", 42], TypeError, "url[1]: url must be a str"),
        (["ws://:80/"], ValueError, "url[0]: url has no host"),
        (["ws://a.example:99999/"], ValueError, "url[0]: url has an invalid port"),
        ({"ws://a.example/"}, TypeError, "url must be a str or a non-empty list"),
        (iter(["ws://a.example/"]), TypeError, "url must be a str or a non-empty list"),
        (b"ws://a.example/", TypeError, "url must be a str or a non-empty list"),
    ],
    ids=repr,
)
def test_bad_endpoint_lists_fail_at_construction(url: Any, exc: type, message: str) -> None:
    from tether_sync import TetherClient

    with pytest.raises(exc) as info:
        TetherClient(url)
    assert message in str(info.value)
