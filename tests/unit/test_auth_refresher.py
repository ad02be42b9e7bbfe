"""Tests of tether_sync.engine.auth.TokenRefresher: single-flight get_token() off the I/O thread.

Time comes from a fake clock; threads are waited for with Events and timeouts.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

from tether_sync.engine.auth import TokenRefresher
from tether_sync.exceptions import AuthError
from tether_sync.options import Auth

WAIT = 5.0
T0 = 1_900_000_000.0  # wall-clock start of the fake clock

Reply = Tuple[Optional[str], Optional[float], Optional[BaseException]]


class FakeClock:
    """The Clock protocol, moved by hand."""

    def __init__(self, wall: float = T0) -> None:
        self.mono = 1000.0
        self.wall = wall

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def jwt(exp: float) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part({'sub': 'u', 'exp': exp})}.c2ln"


class Source:
    """A get_token() that hands out tokens from a factory, can be held on an Event,
    and records the threads it was called on."""

    def __init__(self, make: Callable[[int], str], hold: bool = False) -> None:
        self.make = make
        self.calls = 0
        self.threads: List[threading.Thread] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self) -> str:
        self.calls += 1
        self.threads.append(threading.current_thread())
        self.entered.set()
        if not self.release.wait(WAIT):
            raise RuntimeError("test never released get_token()")
        return self.make(self.calls)


class Replies:
    """Collects replies; ``wait(n)`` blocks until n have arrived."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: List[Reply] = []
        self.threads: List[threading.Thread] = []
        self.cond = threading.Condition(self.lock)

    def __call__(
        self, token: Optional[str], exp: Optional[float], err: Optional[BaseException]
    ) -> None:
        with self.cond:
            self.items.append((token, exp, err))
            self.threads.append(threading.current_thread())
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = WAIT) -> List[Reply]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, timeout), (
                f"{len(self.items)} of {n} replies"
            )
            return list(self.items)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def refreshers() -> Iterator[List[TokenRefresher]]:
    made: List[TokenRefresher] = []
    yield made
    for r in made:
        assert r.join(WAIT)


def make_refresher(
    refreshers: List[TokenRefresher], source: Source, clock: FakeClock, **options: float
) -> TokenRefresher:
    refresher = TokenRefresher(Auth(get_token=source, **options), clock)  # type: ignore[arg-type]
    refreshers.append(refresher)
    return refresher


def test_single_flight_16_threads_one_call(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    source = Source(lambda n: jwt(T0 + 3600 + n), hold=True)
    refresher = make_refresher(refreshers, source, clock)
    replies = Replies()
    gate = threading.Barrier(16)
    requested = threading.Semaphore(0)

    def ask() -> None:
        gate.wait(WAIT)
        refresher.request(False, replies)
        requested.release()

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(16)]
    for t in threads:
        t.start()
    for _ in range(16):
        assert requested.acquire(timeout=WAIT)  # every request() returned at once
    assert source.entered.wait(WAIT)
    assert replies.items == []  # nobody answered while get_token() is blocked
    source.release.set()
    got = replies.wait(16)
    assert source.calls == 1
    assert refresher.calls == 1
    assert len(got) == 16
    assert {r for r in got} == {(jwt(T0 + 3601), T0 + 3601, None)}
    assert source.threads[0] not in threads
    assert source.threads[0] is not threading.current_thread()
    assert source.threads[0].name == "tether-auth"
    assert set(replies.threads) == {source.threads[0]}  # replies come from the helper


def test_get_token_never_runs_on_the_requesting_thread(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    source = Source(lambda n: f"opaque-{n}")
    refresher = make_refresher(refreshers, source, clock)
    replies = Replies()
    refresher.request(False, replies)
    replies.wait(1)
    assert source.threads and source.threads[0] is not threading.current_thread()


def test_fresh_cached_token_is_reused_and_force_fetches_again(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    source = Source(lambda n: jwt(T0 + 3600 * n))
    refresher = make_refresher(refreshers, source, clock, refresh_before=60.0)
    first = Replies()
    refresher.request(False, first)
    assert first.wait(1) == [(jwt(T0 + 3600), T0 + 3600, None)]

    clock.advance(1000)  # still well before exp - refresh_before
    again = Replies()
    refresher.request(False, again)
    # Reused at once, on the caller's thread, with no new get_token() call.
    assert again.items == [(jwt(T0 + 3600), T0 + 3600, None)]
    assert again.threads == [threading.current_thread()]
    assert source.calls == 1

    forced = Replies()
    refresher.request(True, forced)
    assert forced.wait(1) == [(jwt(T0 + 7200), T0 + 7200, None)]
    assert source.calls == 2 and refresher.calls == 2

    after = Replies()
    refresher.request(False, after)
    assert after.items == [(jwt(T0 + 7200), T0 + 7200, None)]  # the new token is cached
    assert source.calls == 2


def test_cached_token_inside_its_refresh_window_is_fetched_again(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    source = Source(lambda n: jwt(T0 + 100 * n))
    refresher = make_refresher(refreshers, source, clock, refresh_before=10.0)
    replies = Replies()
    refresher.request(False, replies)
    replies.wait(1)
    clock.advance(100)  # expired (exp = T0 + 100)
    refresher.request(False, replies)
    got = replies.wait(2)
    assert source.calls == 2
    assert got[1] == (jwt(T0 + 200), T0 + 200, None)


def test_cached_token_due_for_rotation_is_not_reused(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    # Valid for 30 s more, but refresh_before is 60 s: it is due, so fetch a fresh one.
    source = Source(lambda n: jwt(T0 + 30 + 3600 * (n - 1)))
    refresher = make_refresher(refreshers, source, clock, refresh_before=60.0)
    replies = Replies()
    refresher.request(False, replies)
    assert replies.wait(1)[0] == (jwt(T0 + 30), T0 + 30, None)
    refresher.request(False, replies)
    got = replies.wait(2)
    assert source.calls == 2
    assert got[1] == (jwt(T0 + 3630), T0 + 3630, None)
    # The new one is far from rotation: reused.
    refresher.request(False, replies)
    assert replies.items[2] == got[1]
    assert source.calls == 2


def test_token_without_exp_lives_token_ttl(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    source = Source(lambda n: f"opaque-{n}")
    refresher = make_refresher(refreshers, source, clock, token_ttl=300.0, refresh_before=60.0)
    replies = Replies()
    refresher.request(False, replies)
    assert replies.wait(1) == [("opaque-1", T0 + 300.0, None)]
    clock.advance(200)
    refresher.request(False, replies)
    assert replies.items[1] == ("opaque-1", T0 + 300.0, None)
    assert source.calls == 1
    clock.advance(101)
    refresher.request(False, replies)
    got = replies.wait(3)
    assert got[2] == ("opaque-2", T0 + 301.0 + 300.0, None)
    assert source.calls == 2


def test_forget_drops_the_cache(clock: FakeClock, refreshers: List[TokenRefresher]) -> None:
    source = Source(lambda n: jwt(T0 + 3600 + n))
    refresher = make_refresher(refreshers, source, clock)
    replies = Replies()
    refresher.request(False, replies)
    replies.wait(1)
    refresher.forget()
    refresher.request(False, replies)
    got = replies.wait(2)
    assert source.calls == 2
    assert got[1][0] == jwt(T0 + 3602)


def test_force_while_a_fetch_runs_joins_it(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    source = Source(lambda n: f"tok-{n}", hold=True)
    refresher = make_refresher(refreshers, source, clock)
    replies = Replies()
    refresher.request(False, replies)
    assert source.entered.wait(WAIT)
    refresher.request(True, replies)
    source.release.set()
    got = replies.wait(2)
    assert [g[0] for g in got] == ["tok-1", "tok-1"]
    assert source.calls == 1


def test_get_token_raising_gives_every_waiter_an_auth_error(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    release = threading.Event()
    entered = threading.Event()
    calls: List[int] = []

    def failing() -> str:
        calls.append(1)
        entered.set()
        release.wait(WAIT)
        raise ConnectionError("identity provider unreachable")

    refresher = TokenRefresher(Auth(get_token=failing), clock)
    refreshers.append(refresher)
    replies = Replies()
    for _ in range(4):
        refresher.request(False, replies)
    assert entered.wait(WAIT)
    release.set()
    got = replies.wait(4)
    assert len(calls) == 1
    errors = [err for _, _, err in got]
    assert all(isinstance(e, AuthError) for e in errors)
    assert all(token is None and exp is None for token, exp, _ in got)
    assert isinstance(errors[0].__cause__, ConnectionError)  # type: ignore[union-attr]
    # A failure caches nothing: the next request calls get_token() again.
    refresher.request(False, replies)
    replies.wait(5)
    assert len(calls) == 2


@pytest.mark.parametrize("value", [None, "", b"bytes-token", 42])
def test_get_token_returning_a_non_token_is_an_auth_error(
    value: object, clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    refresher = TokenRefresher(Auth(get_token=lambda: value), clock)  # type: ignore[arg-type,return-value]
    refreshers.append(refresher)
    replies = Replies()
    refresher.request(False, replies)
    ((token, exp, err),) = replies.wait(1)
    assert token is None and exp is None
    assert isinstance(err, AuthError)
    if isinstance(value, bytes):
        assert "bytes-token" not in str(err)


def test_auth_error_message_never_contains_a_token_like_secret(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    secret = jwt(T0 + 3600)

    def failing() -> str:
        raise ValueError(f"refresh rejected for token {secret}")

    refresher = TokenRefresher(Auth(get_token=failing), clock)
    refreshers.append(refresher)
    replies = Replies()
    for _ in range(3):
        refresher.request(False, replies)
    got = replies.wait(3)
    for _, _, err in got:
        assert isinstance(err, AuthError)
        assert secret not in str(err)
        assert secret not in repr(err)
    with pytest.raises(AuthError) as info:
        refresher.get_blocking(WAIT)
    assert secret not in str(info.value)


def test_get_blocking_returns_token_and_expiry(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    source = Source(lambda n: jwt(T0 + 600))
    refresher = make_refresher(refreshers, source, clock)
    assert refresher.get_blocking(WAIT) == (jwt(T0 + 600), T0 + 600)
    assert refresher.get_blocking(WAIT) == (jwt(T0 + 600), T0 + 600)  # cached
    assert source.calls == 1


def test_get_blocking_timeout_raises_auth_error(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    source = Source(lambda n: "late-token", hold=True)
    refresher = make_refresher(refreshers, source, clock)
    with pytest.raises(AuthError) as info:
        refresher.get_blocking(0.05)
    assert "late-token" not in str(info.value)
    source.release.set()
    assert refresher.join(WAIT)
    # The late answer was cached for the next caller.
    assert refresher.get_blocking(WAIT) == ("late-token", T0 + 300.0)
    assert source.calls == 1


def test_get_blocking_raises_the_fetch_error(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    def failing() -> str:
        raise OSError("no route")

    refresher = TokenRefresher(Auth(get_token=failing), clock)
    refreshers.append(refresher)
    with pytest.raises(AuthError) as info:
        refresher.get_blocking(WAIT)
    assert isinstance(info.value.__cause__, OSError)


def test_repr_shows_no_token(clock: FakeClock, refreshers: List[TokenRefresher]) -> None:
    source = Source(lambda n: "super-secret-token")
    refresher = make_refresher(refreshers, source, clock)
    refresher.get_blocking(WAIT)
    assert "super-secret-token" not in repr(refresher)
    assert "calls=1" in repr(refresher)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_base_exception_in_get_token_does_not_wedge_the_refresher(
    clock: FakeClock, refreshers: List[TokenRefresher]
) -> None:
    calls: List[int] = []

    def exits() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit(3)
        return "second-token"

    refresher = TokenRefresher(Auth(get_token=exits), clock)
    refreshers.append(refresher)
    replies = Replies()
    refresher.request(False, replies)
    assert refresher.join(WAIT)
    with replies.cond:
        answered = replies.cond.wait_for(lambda: len(replies.items) == 1, 0.1)
    later = Replies()
    refresher.request(False, later)
    with later.cond:
        later_answered = later.cond.wait_for(lambda: len(later.items) == 1, 0.1)
    assert answered and later_answered
