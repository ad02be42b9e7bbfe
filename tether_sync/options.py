"""Option groups of :class:`~tether_sync.TetherClient` and their validation.

Every group is a frozen dataclass. The client also accepts a ``dict`` with the
same keys, and ``False`` to turn a feature off. A bad value raises
``ValueError``/``TypeError`` at construction, naming the option
(``"reconnect.max_delay must be > 0"``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, FrozenSet, Mapping, Optional, Type, TypeVar

QUEUE_OVERFLOW = ("drop-oldest", "drop-newest", "reject", "block")
INBOUND_OVERFLOW = ("drop-oldest", "sample-oldest", "drop-newest", "block")


def number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = True) -> float:
    """Validate a float option: a finite number above ``minimum`` (seconds, usually).

    Raises:
        TypeError: not a number (``bool`` included).
        ValueError: NaN, an infinity, or not above (``strict``) / at least ``minimum``.
    """
    return _number(name, value, minimum=minimum, strict=strict)


def _number(name: str, value: Any, *, minimum: float = 0.0, strict: bool = True) -> float:
    # bool is an int subclass: True as a delay is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if (value <= minimum) if strict else (value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


@dataclasses.dataclass(frozen=True)
class Reconnect:
    """Reconnection with full-jitter exponential backoff.

    Attributes:
        base_delay: Seconds; attempt ``n`` waits ``uniform(0, min(max_delay, base_delay * 2**n))``.
        max_delay: Seconds; the largest cap of a delay.
        max_attempts: Attempts after a loss before giving up (state ``closed`` and an
            ``error`` event); ``None`` retries forever.
        terminal_codes: Close codes from the server that end the client instead of
            reconnecting. 1008 (policy violation) by default.
        min_uptime: Seconds a connection must stay open (unless the server confirmed
            or sent something on it) before the attempt counter starts over, so a
            server that accepts and then drops every connection is still backed off.
    """

    base_delay: float = 0.3
    max_delay: float = 30.0
    max_attempts: Optional[int] = None
    terminal_codes: FrozenSet[int] = frozenset({1008})
    min_uptime: float = 2.0

    def __post_init__(self) -> None:
        _number("reconnect.base_delay", self.base_delay)
        _number("reconnect.max_delay", self.max_delay)
        _number("reconnect.min_uptime", self.min_uptime, strict=False)
        if self.max_delay < self.base_delay:
            raise ValueError("reconnect.max_delay must be >= reconnect.base_delay")
        if self.max_attempts is not None:
            _integer("reconnect.max_attempts", self.max_attempts, minimum=0)
        codes = self.terminal_codes
        if isinstance(codes, (str, bytes)) or not hasattr(codes, "__iter__"):
            raise TypeError("reconnect.terminal_codes must be a collection of ints")
        for code in codes:
            _integer("reconnect.terminal_codes[]", code, minimum=1000)
        object.__setattr__(self, "terminal_codes", frozenset(codes))


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """Liveness checks that find half-open connections.

    Attributes:
        interval: Seconds between pings (``tether:ping``, or a WebSocket ping with
            protocol ``raw``).
        timeout: Seconds to wait for the pong; then the link is closed with 4000 and
            the client reconnects. Any inbound frame counts as a sign of life.
    """

    interval: float = 15.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        _number("heartbeat.interval", self.interval)
        _number("heartbeat.timeout", self.timeout)


@dataclasses.dataclass(frozen=True)
class Queue:
    """The outbound queue: where ``send()`` puts messages until the socket takes them.

    The bound counts queued messages plus those taken for the link and not done
    yet (not fully written, or awaiting their ack). While the link is open a
    full queue makes ``send()`` wait for room: nothing is dropped, a bulk sender
    runs at link speed. The drop policies act only while the link is not open.

    Attributes:
        max_size: Messages held at most.
        overflow: What a full queue does while the link is not open:
            ``"drop-oldest"`` (the oldest queued message fails with
            :class:`~tether_sync.QueueFull`), ``"drop-newest"`` (the new one does),
            ``"reject"`` (``send()`` raises :class:`~tether_sync.QueueFull`) or
            ``"block"`` (``send()`` waits for room in every state).
    """

    max_size: int = 1000
    overflow: str = "drop-oldest"

    def __post_init__(self) -> None:
        _integer("queue.max_size", self.max_size, minimum=1)
        _choice("queue.overflow", self.overflow, QUEUE_OVERFLOW)


@dataclasses.dataclass(frozen=True)
class Backpressure:
    """Flow control in both directions.

    Attributes:
        high_water_mark: Bytes; the queue drains into the socket only while
            ``buffered_amount`` is below it.
        inbound_buffer_size: Messages held per subscription (and for the ``message``
            event stream) before the overflow policy applies.
        inbound_overflow: ``"block"`` (the default: stop reading the socket until
            the consumer catches up, so TCP pushes back and nothing is dropped), or,
            opt-in for streams where only the newest value matters,
            ``"drop-oldest"``, ``"sample-oldest"`` (drop the two oldest, as tether-ws)
            or ``"drop-newest"``. The bound measures how far a consumer lags, never
            how many messages one read carried.
    """

    high_water_mark: int = 1_000_000
    inbound_buffer_size: int = 100
    inbound_overflow: str = "block"

    def __post_init__(self) -> None:
        _integer("backpressure.high_water_mark", self.high_water_mark, minimum=1)
        _integer("backpressure.inbound_buffer_size", self.inbound_buffer_size, minimum=1)
        _choice("backpressure.inbound_overflow", self.inbound_overflow, INBOUND_OVERFLOW)


TokenSource = Callable[[], str]


@dataclasses.dataclass(frozen=True)
class Auth:
    """Where tokens come from and when they are rotated.

    Attributes:
        get_token: A blocking callable returning the token (it may do an HTTP request);
            it runs on the auth helper thread, never on the I/O thread.
        refresh_before: Seconds before expiry at which a fresh token is sent.
        token_ttl: Seconds a token is assumed valid when it carries no ``exp``.
        timeout: Seconds to wait for ``get_token()`` and for the server's answer.
        header: With protocol ``raw``, the handshake header that carries the token
            (``"Authorization"`` gives ``Authorization: Bearer <token>``); ``None`` for none.
        message: With protocol ``raw``, ``callable(token) -> str | bytes | dict`` that
            builds an in-band rotation message, for servers that accept one.
    """

    get_token: TokenSource
    refresh_before: float = 60.0
    token_ttl: float = 300.0
    timeout: float = 10.0
    header: Optional[str] = "Authorization"
    message: Optional[Callable[[str], Any]] = None

    def __post_init__(self) -> None:
        if not callable(self.get_token):
            raise TypeError("auth.get_token must be callable")
        _number("auth.refresh_before", self.refresh_before, strict=False)
        _number("auth.token_ttl", self.token_ttl)
        _number("auth.timeout", self.timeout)
        if self.header is not None and not isinstance(self.header, str):
            raise TypeError("auth.header must be a str or None")
        if self.message is not None and not callable(self.message):
            raise TypeError("auth.message must be callable or None")

    def __repr__(self) -> str:  # never show anything token-like
        return (
            f"Auth(get_token={getattr(self.get_token, '__qualname__', 'callable')}, "
            f"refresh_before={self.refresh_before}, token_ttl={self.token_ttl}, "
            f"timeout={self.timeout})"
        )


T = TypeVar("T")


def coerce(name: str, value: Any, cls: Type[T], *, default_on: bool = True) -> Optional[T]:
    """Turn a user's option value into ``cls``, or ``None`` for "off".

    Accepts an instance of ``cls``, a mapping of its fields, ``None`` (the defaults
    if ``default_on``, else off), ``True`` (the defaults) or ``False`` (off).

    Raises:
        TypeError: for any other type, or unknown keys in a mapping (named).
        ValueError: for a bad value (named by the dataclass).
    """
    if value is None:
        return cls() if default_on else None
    if value is False:
        return None
    if value is True:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(str(key) for key in set(value) - fields)
        if unknown:
            raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}")
        return cls(**value)
    raise TypeError(
        f"{name} must be a {cls.__name__}, a dict, or False, not {type(value).__name__}"
    )


def coerce_auth(value: Any) -> Optional[Auth]:
    """``auth=`` accepts an :class:`Auth`, a dict of its fields, or a plain callable."""
    if value is None or value is False:
        return None
    if isinstance(value, Auth):
        return value
    if isinstance(value, Mapping):
        return coerce("auth", value, Auth)
    if callable(value):
        return Auth(get_token=value)
    raise TypeError(f"auth must be an Auth, a dict or a callable, not {type(value).__name__}")
