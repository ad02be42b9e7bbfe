"""Option groups of :class:`~tether_sync.TetherClient` and their validation.

Every group is a frozen dataclass. The client also accepts a ``dict`` with the
same keys, and ``False`` to turn a feature off. A bad value raises
``ValueError``/``TypeError`` at construction, naming the option
(``"reconnect.max_delay must be > 0"``).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Type,
    TypeVar,
    Union,
    cast,
)

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


RetryPolicy = Callable[[int, float, Optional[BaseException]], Optional[float]]
"""``policy(attempt, elapsed, reason) -> delay | None``: see :class:`Reconnect`."""

CLOSE_CODES = range(1000, 5000)  # RFC 6455 §7.4: the codes a close frame may carry


@dataclasses.dataclass(frozen=True)
class Reconnect:
    """Reconnection: when to try again, and where (several endpoints take turns).

    Attempts of one run of failures (it starts when a link is lost, or when the
    first connection attempt fails) are counted from 1 and announced as
    ``reconnecting`` events. With several URLs, each attempt goes to the next
    endpoint, round robin, and the delay grows with every full rotation rather
    than with every attempt: attempt ``n`` has the *round*
    ``ceil(n / len(urls))`` (equal to ``n`` with one URL), so a dead primary costs
    the healthy secondary one short delay, while a total outage backs off.

    Attributes:
        base_delay: Seconds; the default delay of round ``r`` is full jitter,
            ``uniform(0, min(max_delay, base_delay * 2**r))``.
        max_delay: Seconds; the largest cap of a default delay.
        max_attempts: Attempts after a loss before giving up (state ``closed`` and an
            ``error`` event); ``None`` retries forever. Counts every attempt, on
            any endpoint.
        terminal_codes: Close codes from the server that end the client instead of
            reconnecting: ints and ``range`` objects (``range(4000, 4100)`` for
            Pusher's 4000-4099 "don't reconnect"), all within 1000-4999. Stored as
            the frozenset of the codes they cover. 1008 (policy violation) by default.
            Only a close the server sent counts: the client's own closes (4000 when
            pongs stop, protocol failures) always reconnect.
        min_uptime: Seconds a connection must stay open before the attempt
            counter (and ``elapsed``) starts over, unless the server confirmed or
            sent something on it; so a server that accepts and at once drops
            every connection is still backed off. ``0`` starts over at every open.
        policy: Replaces the default delay: ``policy(attempt, elapsed, reason)``
            with ``attempt`` the round above (from 1), ``elapsed`` the seconds since
            this run of failures began (0.0 on its first attempt) and ``reason``
            the exception that ended the last connection or attempt. It returns
            the delay in seconds (a finite number, 0 to 86400), or ``None`` to stop
            retrying (state ``closed`` with an ``error`` event). It runs on the I/O
            thread, so it must be quick. One that raises or returns anything else
            is logged and reported as an ``error`` event, and that attempt uses the
            default delay. ``max_attempts`` and ``terminal_codes`` still apply.
    """

    base_delay: float = 0.3
    max_delay: float = 30.0
    max_attempts: Optional[int] = None
    # Given as ints and ranges; __post_init__ stores the frozenset of the codes they cover.
    terminal_codes: Collection[Union[int, range]] = frozenset({1008})
    min_uptime: float = 2.0
    policy: Optional[RetryPolicy] = None

    def __post_init__(self) -> None:
        _number("reconnect.base_delay", self.base_delay)
        _number("reconnect.max_delay", self.max_delay)
        _number("reconnect.min_uptime", self.min_uptime, strict=False)
        if self.max_delay < self.base_delay:
            raise ValueError("reconnect.max_delay must be >= reconnect.base_delay")
        if self.max_attempts is not None:
            _integer("reconnect.max_attempts", self.max_attempts, minimum=0)
        object.__setattr__(self, "terminal_codes", _close_codes(self.terminal_codes))
        if self.policy is not None:
            _check_policy(self.policy)

    def __repr__(self) -> str:  # a range of 100 codes is shown as one range
        return (
            f"Reconnect(base_delay={self.base_delay!r}, max_delay={self.max_delay!r}, "
            f"max_attempts={self.max_attempts!r}, "
            f"terminal_codes={_describe_codes(cast(FrozenSet[int], self.terminal_codes))}, "
            f"min_uptime={self.min_uptime!r}, policy={self.policy!r})"
        )


def _close_codes(codes: Any) -> FrozenSet[int]:
    """``terminal_codes``: ints and ranges of close codes, as the frozenset they cover."""
    name = "reconnect.terminal_codes"
    if isinstance(codes, range):
        codes = (codes,)  # one range is one entry, not an iterable of ints
    if isinstance(codes, (str, bytes)) or not hasattr(codes, "__iter__"):
        raise TypeError(f"{name} must be a collection of ints and ranges")
    out: set[int] = set()
    for item in codes:
        if isinstance(item, range):
            if not item:
                raise ValueError(f"{name}: empty range {item!r}")
            low, high = min(item), max(item)
            if low not in CLOSE_CODES or high not in CLOSE_CODES:
                raise ValueError(f"{name}: {item!r} goes outside the close codes 1000-4999")
            out.update(item)
        elif isinstance(item, bool) or not isinstance(item, int):
            hint = ", e.g. range(4000, 4100) for 4000-4099" if isinstance(item, tuple) else ""
            raise TypeError(f"{name}[] must be an int or a range{hint}, not {type(item).__name__}")
        elif item not in CLOSE_CODES:
            raise ValueError(f"{name}[] must be a close code in 1000-4999, got {item!r}")
        else:
            out.add(item)
    return frozenset(out)


def _describe_codes(codes: FrozenSet[int]) -> str:
    """``{1008, 4000-4099}``: runs of consecutive codes shown as one span."""
    spans: list[str] = []
    ordered = sorted(codes)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        first, last = ordered[i], ordered[j]
        spans.append(str(first) if j - i < 2 else f"{first}-{last}")
        if j - i == 1:
            spans.append(str(last))
        i = j + 1
    return "{" + ", ".join(spans) + "}"


def _check_policy(policy: Any) -> None:
    if not callable(policy):
        raise TypeError(f"reconnect.policy must be callable or None, not {type(policy).__name__}")
    try:
        signature = inspect.signature(policy)
    except (TypeError, ValueError):  # some builtins have none: trust them
        return
    try:
        signature.bind(1, 0.0, None)
    except TypeError as exc:
        raise TypeError(f"reconnect.policy must accept (attempt, elapsed, reason): {exc}") from None


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
    yet (not fully written, or awaiting their ack). By default (``"block"``) a
    full queue makes ``send()`` wait for room in every state, open, connecting or
    down: nothing is ever dropped, a bulk sender runs at link speed, and a loop
    that is sending when the link drops pauses until it is back. ``send(timeout=s)``
    bounds the wait (:class:`~tether_sync.QueueFull`). The drop policies are
    opt-in and act only while the link is not open.

    Why 1,000 messages: with ``block`` the bound is no longer what decides whether
    data survives an outage (a full queue pauses the sender, it loses nothing); it
    is how much a script may run ahead of the link without waiting. 1,000 covers a
    burst of 1,000 sends, or a sender of 30 messages a second through a 30 s
    outage, without a single wait, and keeps memory small (about 300 B per queued
    64 B message). There is no byte bound: ``max_message_size`` caps each message.

    Attributes:
        max_size: Messages held at most.
        overflow: What a full queue does: ``"block"`` (the default: ``send()``
            waits for room in every state), or, opt-in and only while the link is
            not open, ``"drop-oldest"`` (the oldest queued message fails with
            :class:`~tether_sync.QueueFull`), ``"drop-newest"`` (the new one does)
            or ``"reject"`` (``send()`` raises :class:`~tether_sync.QueueFull`).
        path: A SQLite file for a durable outbox (DESIGN §5): queued and unacked
            messages and the session id survive the process; ``send()`` returns
            once the message is committed to the file. A message that cannot be
            (a full disk, an I/O error) is neither stored nor sent: ``send()``
            raises :class:`~tether_sync.TetherError` whose ``__cause__`` is the
            :class:`OSError` (``errno.ENOSPC`` for a full disk), and the client
            goes on with what it has. Its files are created 0600.
            ``None``: in memory.
        fsync: With ``path``: fsync every commit (survives a power loss, slower);
            by default a commit survives a crash of the process, not of the OS.
    """

    max_size: int = 1000
    overflow: str = "block"
    path: Optional[str] = None
    fsync: bool = False

    def __post_init__(self) -> None:
        _integer("queue.max_size", self.max_size, minimum=1)
        _choice("queue.overflow", self.overflow, QUEUE_OVERFLOW)
        if self.path is not None:
            if not isinstance(self.path, (str, os.PathLike)):
                raise TypeError("queue.path must be a str or os.PathLike, or None")
            object.__setattr__(self, "path", os.fspath(self.path))
        if not isinstance(self.fsync, bool):
            raise TypeError("queue.fsync must be a bool")


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


# RFC 6455 §4.1 (Sec-WebSocket-Protocol): each subprotocol is an RFC 7230 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def coerce_subprotocols(value: Any) -> Optional[List[str]]:
    """``subprotocols=``: one name (a ``str``) or a list/tuple of names; None: none.

    A ``str`` is one subprotocol: ``"chat"`` is offered as ``chat``, never as
    the letters ``c, h, a, t``. An empty list offers none, like None.

    Raises:
        TypeError: neither a str nor a list/tuple of str.
        ValueError: a name that is not an RFC 7230 token
            (spaces, commas, quotes...), or the same name twice.
    """
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise TypeError(f"subprotocols must be a str or a list of str, not {type(value).__name__}")
    out: List[str] = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"subprotocols[{i}] must be a str, not {type(name).__name__}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(
                f"subprotocols[{i}] must be a token (letters, digits, !#$%&'*+-.^_`|~),"
                f" got {name!r}"
            )
        if name in out:
            raise ValueError(f"subprotocols: {name!r} is offered twice")
        out.append(name)
    return out or None


#: ``ws_options`` keys handed to websocket-client's ``WebSocket.connect`` as they
#: are (websocket-client 1.x: ``_core.py`` ``connect``, ``_http.py``
#: ``proxy_info``, ``_handshake.py`` ``_get_handshake_headers``).
WS_OPTIONS = frozenset(
    {
        "cookie",
        "origin",
        "connection",
        "suppress_origin",
        "suppress_host",
        "host",
        "http_proxy_host",
        "http_proxy_port",
        "http_no_proxy",
        "http_proxy_auth",
        "http_proxy_timeout",
        "proxy_type",
        "redirect_limit",
    }
)

#: ``connect`` keywords the client sets itself, and the option that does it.
WS_OWN_OPTIONS = {
    "timeout": "connect_timeout",
    "header": "headers",
    "headers": "headers",
    "subprotocols": "subprotocols",
    "sslopt": "sslopt",
    "socket": "nothing: the client opens its own socket",
    "sockopt": "nothing: the client sets its own socket options",
    "skip_utf8_validation": "nothing: the client validates UTF-8 itself",
    "enable_multithread": "nothing: only the client's I/O thread uses the socket",
}


_HEADER_VALUE_BAD = re.compile(r"[\r\n\x00]")


def check_headers(value: Any, where: str = "headers") -> Optional[Dict[str, Optional[str]]]:
    """``headers=`` (or what a headers callable returned): a copy, checked.

    Every name must be an HTTP token and every value a ``str`` (None leaves the
    header out) without CR, LF or NUL: anything else would fail every connect
    attempt later (websocket-client joins the lines), or write a header of the
    caller's choosing into the request (``"a\r\nX-Admin: 1"``). The messages
    name the header, never its value (it may be a credential).

    Raises:
        TypeError: not a dict, a name not a str, a value neither str nor None.
        ValueError: a name that is not a token, a value with CR, LF or NUL.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a dict, not {type(value).__name__}")
    out: Dict[str, Optional[str]] = {}
    for name, text in value.items():
        if not isinstance(name, str):
            raise TypeError(f"{where}: header names must be str, not {type(name).__name__}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{where}: {name!r} is not a valid header name")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"{where}[{name!r}] must be a str (or None), not {type(text).__name__}")
        if text is not None and _HEADER_VALUE_BAD.search(text):
            raise ValueError(f"{where}[{name!r}] must not contain CR, LF or NUL")
        out[name] = text
    return out


#: The ``sslopt`` keys websocket-client reads (``_http._ssl_socket`` and
#: ``_wrap_sni_socket``, 1.x); any other key is ignored there, silently.
SSL_OPTIONS = frozenset(
    {
        "ca_cert_path",
        "ca_certs",
        "cert_chain",
        "cert_reqs",
        "certfile",
        "check_hostname",
        "ciphers",
        "context",
        "ecdh_curve",
        "keyfile",
        "password",
        "server_hostname",
        "ssl_version",
        "suppress_ragged_eofs",
    }
)


def check_sslopt(value: Any) -> Optional[Dict[str, Any]]:
    """``sslopt=``: a copy (None when empty), every key one websocket-client reads.

    Raises:
        TypeError: not a mapping, or a key not a str.
        ValueError: a key websocket-client does not read: a typo (``ca_cert``
            for ``ca_certs``) would otherwise be ignored, and the connection
            made with other TLS settings than the user wrote.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"sslopt must be a dict, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"sslopt keys must be str, not {type(key).__name__}")
        if key not in SSL_OPTIONS:
            raise ValueError(
                f"sslopt: unknown option {key!r}; websocket-client reads "
                + ", ".join(sorted(SSL_OPTIONS))
            )
    return dict(value) or None


def check_ws_options(value: Any) -> Dict[str, Any]:
    """``ws_options=``: a copy of the mapping, every key one websocket-client takes.

    Raises:
        TypeError: not a mapping (None is an empty one), or a key not a str.
        ValueError: a key websocket-client's ``connect`` does not take (a typo
            would otherwise be ignored), or one the client sets itself (the
            message names the client's own option for it).
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"ws_options must be a dict, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"ws_options keys must be str, not {type(key).__name__}")
        if key in WS_OWN_OPTIONS:
            raise ValueError(f"ws_options: {key!r} is set by the client; use {WS_OWN_OPTIONS[key]}")
        if key not in WS_OPTIONS:
            raise ValueError(
                f"ws_options: unknown option {key!r}; websocket-client's connect takes "
                + ", ".join(sorted(WS_OPTIONS))
            )
    return dict(value)
