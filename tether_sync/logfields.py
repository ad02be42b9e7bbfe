"""Structured fields on every ``tether_sync`` log record (DESIGN §8), and URL redaction.

Every record of the ``tether_sync`` logger carries four attributes, so a JSON
formatter (or ``%(endpoint)s`` in a format string) can use them:

* ``client``: the client's name in this process (``tether-1``, ``tether-2``, ...,
  in the order the clients' I/O threads started);
* ``endpoint``: the URL the client is connected to or trying, with credentials
  redacted (:func:`redact_url`);
* ``attempt``: the current reconnection attempt (0 while open);
* ``cause``: the last failure (a refused attempt, or the last close code and
  reason), ``""`` when none.

How: a :class:`logging.Filter` installed on the ``tether_sync`` logger fills
them in from a thread-local context. Each client's I/O thread binds its context
once (:func:`bind`) when it starts; the context is a callable that reads the
loop's current values, so nothing is updated as they change, and no call site
passes ``extra=``. A call site that does pass one of these names wins. Records
logged on other threads (the caller's, the dispatcher's) get ``None`` for
``client`` and ``attempt`` and ``""`` for the others, so every record has all
four.

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
import threading
from typing import Callable, Dict, Optional, Tuple

from . import redact

FIELDS = ("client", "endpoint", "attempt", "cause")
"""The attribute names every ``tether_sync`` record carries."""

Describe = Callable[[], Tuple[str, int, str]]
"""Returns ``(endpoint, attempt, cause)`` of the bound client (the URL unredacted)."""

_local = threading.local()  # .context: (client name, Describe) of this thread's client
_numbers = itertools.count(1)  # client names, in the order the I/O threads bind
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


def bind(describe: Describe) -> str:
    """Make records logged on the calling thread carry this client's fields.

    Called once by each client's I/O thread when it starts.

    Args:
        describe: Returns the client's current ``(endpoint, attempt, cause)``.

    Returns:
        The client's name (``tether-N``).
    """
    name = f"tether-{next(_numbers)}"
    _local.context = (name, describe)
    return name


class ContextFilter(logging.Filter):
    """Adds ``client``, ``endpoint``, ``attempt`` and ``cause`` to each record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        context: Optional[Tuple[str, Describe]] = getattr(_local, "context", None)
        values: Tuple[object, ...]
        if context is None:
            values = (None, "", None, "")
        else:
            name, describe = context
            try:
                endpoint, attempt, cause = describe()
                values = (name, redact_url(endpoint), attempt, redact_text(cause))
            except Exception:  # a log line must never fail over its fields
                values = (name, "", None, "")
        fields = record.__dict__
        for key, value in zip(FIELDS, values):
            if key not in fields:  # an ``extra=`` of the call site wins
                fields[key] = value
        return True


def install() -> None:
    """Give the ``tether_sync`` logger a ``NullHandler`` and a :class:`ContextFilter` (once).

    The ``NullHandler`` keeps the library silent unless the application
    configures logging (then records propagate to its handlers as usual).
    """
    logger = logging.getLogger("tether_sync")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    if not any(isinstance(f, ContextFilter) for f in logger.filters):
        logger.addFilter(ContextFilter())


install()  # at import: ``import tether_sync`` imports this module first

__all__ = ["FIELDS", "ContextFilter", "bind", "install", "redact_text", "redact_url"]
