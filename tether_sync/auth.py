"""Tokens for the loop, fetched off the I/O thread, one fetch at a time.

:class:`TokenRefresher` runs the user's blocking ``get_token()`` on a helper
thread. Requests that arrive while a fetch is running join it (single flight):
however many threads and reconnects ask at once, ``get_token()`` is called once
and everyone gets its result. A token that is still fresh is reused.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, List, Optional, Tuple

from .clock import Clock
from .exceptions import AuthError
from .options import Auth
from .tokens import expires_at

log = logging.getLogger("tether_sync")

Reply = Callable[[Optional[str], Optional[float], Optional[BaseException]], None]


class TokenRefresher:
    """Single-flight token fetching on a helper thread.

    Args:
        options: The ``Auth`` options.
        clock: Wall time for expiry.
    """

    def __init__(self, options: Auth, clock: Clock) -> None:
        self.options = options
        self._clock = clock
        # Guards _waiters (None when no fetch runs), _cached and _threads. Never
        # held while calling get_token() or a reply.
        self._lock = threading.Lock()
        self._waiters: Optional[List[Reply]] = None
        self._cached: Optional[Tuple[str, float]] = None  # (token, expires_at)
        self._threads: List[threading.Thread] = []
        self.calls = 0  # get_token() calls made, for telemetry and tests

    def __repr__(self) -> str:
        return f"<TokenRefresher calls={self.calls} cached={self._cached is not None}>"

    def request(self, force: bool, reply: Reply) -> None:
        """Ask for a token; ``reply(token, expires_at, error)`` is called later.

        Returns at once. ``reply`` runs on the helper thread (or right here when a
        fresh cached token is reused), so it must only hand the result over.

        Args:
            force: Fetch a new token even if the cached one is still fresh.
        """
        cached: Optional[Tuple[str, float]] = None
        with self._lock:
            if not force and self._cached is not None:
                exp = self._cached[1]
                now = self._clock.time()
                # Reuse only a token that is not yet due for rotation.
                if exp - self.options.refresh_before > now:
                    cached = self._cached
            if cached is None:
                if self._waiters is not None:
                    self._waiters.append(reply)  # join the fetch in flight
                    return
                self._waiters = [reply]
                thread = threading.Thread(target=self._fetch, name="tether-auth", daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        if cached is not None:
            reply(cached[0], cached[1], None)
            return
        thread.start()

    def _fetch(self) -> None:
        self.calls += 1
        token: Optional[str] = None
        exp: Optional[float] = None
        error: Optional[BaseException] = None
        try:
            value = self.options.get_token()
            if not isinstance(value, str) or not value:
                raise TypeError(f"get_token() returned {type(value).__name__}, not a non-empty str")
            token = value
            exp = expires_at(value, self._clock.time(), self.options.token_ttl)
        except BaseException as exc:
            # The message names the kind of failure only: the user's exception
            # text could quote a token. The original stays reachable as __cause__.
            error = AuthError(f"get_token() failed with {type(exc).__name__}")
            error.__cause__ = exc
            log.warning("get_token() failed with %s", type(exc).__name__)
        finally:
            # Whatever happened, answer everyone who waits on this flight, so a
            # failed fetch never leaves later requests joined to a dead one.
            with self._lock:
                waiters, self._waiters = self._waiters or [], None
                if token is not None and exp is not None:
                    self._cached = (token, exp)
            for reply in waiters:
                reply(token, exp, error)

    def get_blocking(self, timeout: float) -> Tuple[str, float]:
        """Fetch (or reuse) a token, waiting up to ``timeout`` (connector thread only).

        Raises:
            AuthError: ``get_token()`` failed or did not return in time.
        """
        done = threading.Event()
        box: List[Tuple[Optional[str], Optional[float], Optional[BaseException]]] = []

        def reply(token: Optional[str], exp: Optional[float], err: Optional[BaseException]) -> None:
            box.append((token, exp, err))
            done.set()

        self.request(False, reply)
        if not done.wait(timeout):
            raise AuthError(f"get_token() did not return within {timeout}s")
        token, exp, err = box[0]
        if err is not None:
            raise err
        assert token is not None and exp is not None
        return token, exp

    def forget(self) -> None:
        """Drop the cached token (the server refused it)."""
        with self._lock:
            self._cached = None

    def join(self, timeout: Optional[float]) -> bool:
        """Wait for fetch threads; a hung ``get_token()`` cannot be interrupted."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in threads)
