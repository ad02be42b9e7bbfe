"""Credentials out of URLs, before a URL is shown anywhere.

A WebSocket URL often carries a secret: a password in its userinfo
(``wss://user:pw@host/``) or a token in its query string
(``wss://host/ws?token=...``), because browsers cannot set headers on a
WebSocket and many services took that habit. The client shows its URL in log
lines, ``repr()``, ``stats().endpoint``, the ``open`` event and exception
messages; each of them goes through :func:`redact_url`. The real URL is used
for the handshake only.

What is redacted (the value becomes ``***``, the rest of the URL is kept as
written):

* the password of the userinfo: ``ws://user:pw@host/`` -> ``ws://user:***@host/``.
  A user name alone (``ws://user@host/``) is kept: it names, it does not prove.
* the value of every query parameter whose name, lower-cased and with ``-``,
  ``_`` and ``.`` removed, is one of :data:`SECRET_NAMES` or ends with one of
  :data:`SECRET_SUFFIXES`. So ``token``, ``access_token``, ``Access-Token``,
  ``api_key``, ``apiKey``, ``X-Amz-Signature``, ``client_secret``, ``password``,
  ``auth``, ``sig``, ``jwt`` and ``session_id`` are redacted; ``channel``,
  ``room`` or ``v`` are not.

Redacting too much costs a less useful log line; too little leaks a
credential, so the names are generous. Pure string work: no I/O.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["MASK", "SECRET_NAMES", "SECRET_SUFFIXES", "is_secret_name", "redact_url"]

#: What a secret is replaced with.
MASK = "***"

#: Query parameter names (normalized: lower case, without ``-``, ``_``, ``.``)
#: whose value is always redacted.
SECRET_NAMES = frozenset(
    {
        "auth",
        "authorization",
        "code",
        "jwt",
        "key",
        "pass",
        "passwd",
        "pwd",
        "secret",
        "session",
        "sid",
        "sig",
        "ticket",
        "token",
    }
)

#: Name endings that make a query parameter secret (``access_token``,
#: ``apikey``, ``client_secret``, ``x-amz-signature``, ``session_id``...).
SECRET_SUFFIXES = (
    "apikey",
    "credential",
    "credentials",
    "key",
    "passphrase",
    "password",
    "secret",
    "sessionid",
    "signature",
    "token",
)


def is_secret_name(name: str) -> bool:
    """Whether the query parameter ``name`` (as decoded) holds a secret.

    Args:
        name: The parameter's name, e.g. ``"access_token"``.

    Returns:
        True when its value must never be shown.
    """
    normal = "".join(ch for ch in name.lower() if ch not in "-_. ")
    return normal in SECRET_NAMES or normal.endswith(SECRET_SUFFIXES)


def redact_url(url: str, *, every_value: bool = False) -> str:
    """``url`` with its password and secret query values replaced by ``***``.

    Args:
        url: Any URL (a malformed one is handled as far as it can be split).
        every_value: Replace every query value, not only the secret ones (for
            log fields and metric attributes: also bounds their cardinality).

    Returns:
        The URL to show: scheme, host, port, path, the user name and the other
        query parameters as written; e.g.
        ``redact_url("ws://u:pw@h:8080/ws?token=abc&room=1")`` is
        ``"ws://u:***@h:8080/ws?token=***&room=1"``.
    """
    if not isinstance(url, str):
        return repr(type(url))  # never echo an object that could be anything
    try:
        parts = urlsplit(url)
    except ValueError:
        # urlsplit refuses e.g. an unbalanced "[" in the host: cut what could
        # hold a secret (everything after the scheme's "//") rather than guess.
        head, sep, _ = url.partition("//")
        return f"{head}{sep}{MASK}" if sep else MASK
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else netloc
    query = parts.query
    if query:
        query = "&".join(_redact_pair(pair, every_value) for pair in query.split("&"))
    fragment = parts.fragment
    if fragment and "=" in fragment:  # OAuth implicit flow puts tokens there
        fragment = "&".join(_redact_pair(pair) for pair in fragment.split("&"))
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url  # nothing secret: the URL exactly as the user wrote it
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redact_pair(pair: str, every_value: bool = False) -> str:
    name, eq, _value = pair.partition("=")
    if eq and (every_value or is_secret_name(unquote(name))):
        return f"{name}={MASK}"
    return pair
