"""Structured fields on every ``tether_sync`` log record (DESIGN §8), and URL redaction.

Every record of the ``tether_sync`` logger carries four attributes, so a JSON
formatter (or ``%(endpoint)s`` in a format string) can use them:

* ``client``: the client's name in this process (``tether-1``, ``tether-2``, ...,
  in the order the clients started, or first logged);
* ``endpoint``: the URL the client is connected to or trying, with credentials
  redacted (:func:`redact_url`);
* ``attempt``: the current reconnection attempt (0 while open);
* ``cause``: the last failure (a refused attempt, or the last close code and
  reason), ``""`` when none.

How: a :class:`logging.Filter` installed on the ``tether_sync`` logger (and
on the bundled server's, demo's loggers beneath it, so that a format string
naming the fields works for their records too) fills them in from a
:class:`Context`. Each client's I/O thread binds its context once
(:func:`bind`) when it starts; the context reads the loop's current values, so
nothing is updated as they change, and no call site passes ``extra=``. On
other threads (the application's in ``send()`` or ``close()``, the
dispatcher's when a callback raised) the record's client is found on the call
stack (:data:`LOG_CONTEXT`). A call site that passes one of these names wins.
A record about no client (the bundled server's) gets ``None`` for ``client``
and ``attempt`` and ``""`` for the others, so every record has all four.

The filter runs only for records the logger's level lets through, so a quiet
logger (the default: a ``NullHandler`` and the root's WARNING) costs nothing
for DEBUG and INFO lines.

Redaction: :func:`redact_url` is :func:`tether_sync.redact.redact_url` with every
query value hidden, cached.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
import threading
from types import FrameType
from typing import Callable, Dict, Optional, Tuple

from . import redact

FIELDS = ("client", "endpoint", "attempt", "cause")
"""The attribute names every ``tether_sync`` record carries."""

Describe = Callable[[], Tuple[str, int, str]]
"""Returns ``(endpoint, attempt, cause)`` of the bound client (the URL unredacted)."""

_local = threading.local()  # .context: the Context of this thread's client (its I/O thread)
_numbers = itertools.count(1)  # client names, in the order they are first needed
_names_lock = threading.Lock()  # guards _numbers (its one purpose: one name per client)
_cache: Dict[str, str] = {}  # url -> redacted url (a client has a handful)
_URL = re.compile(r"\b(?:wss?|https?)://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """The URL without credentials: the password and every query value become ``***``.

    Every query value goes (not only the names known to be secret: ``token``,
    ``key``, ``sig`` ...), which also keeps the value fit for a metric attribute.
    Cached: a client has a handful of endpoints.

    Returns:
        e.g. ``wss://user:***@example.com/ws?token=***&room=***`` for
        ``wss://user:pw@example.com/ws?token=abc&room=1``.
    """
    cached = _cache.get(url)
    if cached is not None:
        return cached
    safe = redact.redact_url(url, every_value=True)
    if len(_cache) < 256:
        _cache[url] = safe
    return safe


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


class Context:
    """One client's log fields: its name and a :data:`Describe` of its current values.

    The name (``tether-N``) is given when first needed: when the client's I/O
    thread starts, or when a record about it is logged before that.

    Args:
        describe: Returns the client's current ``(endpoint, attempt, cause)``.
    """

    __slots__ = ("_describe", "_name")

    def __init__(self, describe: Describe) -> None:
        self._describe = describe
        self._name: Optional[str] = None

    @property
    def name(self) -> str:
        """``tether-N``, N in the order the clients first needed a name."""
        name = self._name
        if name is None:
            with _names_lock:
                name = self._name
                if name is None:
                    name = self._name = f"tether-{next(_numbers)}"
        return name

    def values(self) -> Tuple[object, ...]:
        """``(client, endpoint, attempt, cause)`` now, redacted; never raises."""
        name = self.name
        try:
            endpoint, attempt, cause = self._describe()
            return (name, redact_url(endpoint), attempt, redact_text(cause))
        except Exception:  # a log line must never fail over its fields
            return (name, "", None, "")


def bind(context: Context) -> str:
    """Make records logged on the calling thread carry this client's fields.

    Called once by each client's I/O thread when it starts.

    Returns:
        The client's name (``tether-N``).
    """
    _local.context = context
    return context.name


LOG_CONTEXT = "_log_context"
"""The attribute through which an object says which client's fields its records carry.

On a thread bound to no client (the application's, a user dispatcher's), the
filter looks up the call stack of the logging call for a method of an object
with this attribute set to a :class:`Context` (the client, its outbox, its
dispatcher, its durable store): ``client.send()`` that waits, ``close()``, a
callback that raised, all carry the client's fields that way. It is done only
for records that are emitted, so it costs nothing per message.
"""

_MAX_FRAMES = 40  # how far up the stack a record's client is looked for


def _from_stack() -> Optional[Context]:
    frame: Optional[FrameType] = sys._getframe(2)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        if frame.f_globals.get("__name__", "").startswith("tether_sync"):
            owner = frame.f_locals.get("self")
            context = getattr(owner, LOG_CONTEXT, None) if owner is not None else None
            if isinstance(context, Context):
                return context
        frame = frame.f_back
    return None


class ContextFilter(logging.Filter):
    """Adds ``client``, ``endpoint``, ``attempt`` and ``cause`` to each record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        context: Optional[Context] = getattr(_local, "context", None)
        if context is None:
            try:
                context = _from_stack()
            except Exception:  # pragma: no cover - never fail a log line
                context = None
        values: Tuple[object, ...]
        values = (None, "", None, "") if context is None else context.values()
        fields = record.__dict__
        for key, value in zip(FIELDS, values):
            if key not in fields:  # an ``extra=`` of the call site wins
                fields[key] = value
        return True


CHILD_LOGGERS = (
    "tether_sync.server",
    "tether_sync.server.websockets",
    "tether_sync.demo",
    "tether_sync.testing",
)
"""Loggers beneath ``tether_sync`` that the package logs to (a logger's filters do
not see its children's records, so each gets the filter too)."""


def install() -> None:
    """Give the ``tether_sync`` logger a ``NullHandler`` and a :class:`ContextFilter` (once).

    The ``NullHandler`` keeps the library silent unless the application
    configures logging (then records propagate to its handlers as usual).
    The loggers in :data:`CHILD_LOGGERS` get a filter too.
    """
    logger = logging.getLogger("tether_sync")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    for each in (logger, *(logging.getLogger(name) for name in CHILD_LOGGERS)):
        if not any(isinstance(f, ContextFilter) for f in each.filters):
            each.addFilter(ContextFilter())


install()  # at import: ``import tether_sync`` imports this module first

__all__ = [
    "CHILD_LOGGERS",
    "FIELDS",
    "LOG_CONTEXT",
    "Context",
    "ContextFilter",
    "bind",
    "install",
    "redact_text",
    "redact_url",
]
