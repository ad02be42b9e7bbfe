"""Tokens: fetched off the I/O thread, one fetch at a time, and handed to the session.

Two halves, one on each side of the thread boundary:

* :class:`TokenRefresher` (any thread; it starts the ``tether-auth`` helper
  threads) runs the user's blocking ``get_token()``, never on the I/O thread
  (DESIGN §4). Requests that arrive while a fetch runs join it (single flight):
  however many threads and reconnects ask at once, ``get_token()`` is called once
  and everyone gets its result. A token that is not yet due for rotation is
  reused. Connector threads use it too (:meth:`TokenRefresher.get_blocking`),
  for protocol ``raw``'s handshake header.
* :class:`AuthFlow` (I/O thread only) is what the loop and the lifecycle see:
  it asks the refresher when a session needs a token, and the refresher's answer
  comes back as a :class:`~tether_sync.engine.commands.Token` command, numbered
  by round so that the answer to a request made obsolete by a newer one is
  dropped (as is one that finds the connection gone). It also keeps the
  ``refresh_auth()`` waiters, the accepted token's expiry, and whether the next
  connection must fetch anew.

Both halves live here because every change to one (a new kind of request, a new
answer) changes the other; :mod:`~tether_sync.engine.lifecycle` turns the
session's auth events into calls of :class:`AuthFlow`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, Optional, Tuple

from ..clock import Clock
from ..exceptions import AuthError
from ..options import Auth
from ..protocol import envelope, frames
from ..protocol.session import Session
from ..protocol.token_expiry import expires_at
from . import commands as cmd

log = logging.getLogger("tether_sync")

# ``reply(token, expires_at, error)``: how the refresher answers a request. It runs on
# the token thread (or on the requester's, for a reused token): it must only hand over.
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


# -- the I/O thread's side ------------------------------------------------------------------

Waiter = Callable[[Optional[BaseException]], None]


class AuthFlow:
    """Token requests, answers and ``refresh_auth()`` waiters (I/O thread only).

    Nothing here blocks or calls user code: the fetch, and the user's
    ``Auth.message`` builder, run on the token thread.

    Args:
        auth: The token source.
        protocol: ``"tether"`` or ``"raw"``.
        post: Posts a command to the loop (from the token thread).
    """

    def __init__(
        self, auth: TokenRefresher, protocol: str, post: Callable[[cmd.Command], None]
    ) -> None:
        self.auth = auth
        self._protocol = protocol
        self._post = post
        self._round = 0  # numbers token requests, so stale answers are dropped
        self.force_next = False  # the next connection must fetch a fresh token
        self.expires_at: Optional[float] = None  # the accepted token's expiry (epoch seconds)
        self.fetching = False  # a token was asked for and its answer has not come yet
        self._waiters: List[Waiter] = []

    @property
    def rotates_in_band(self) -> bool:
        """Protocol raw carries the token in the handshake header: without an
        ``Auth(message=...)`` builder a new token only goes out on the next connect."""
        return self._protocol == "tether" or self.auth.options.message is not None

    def request(self, force: bool) -> None:
        """A session needs a token: fetch it on the token thread."""
        self._round += 1
        round_id = self._round
        self.fetching = True
        build = self.auth.options.message if self._protocol == "raw" else None

        def reply(token: Optional[str], exp: Optional[float], err: Optional[BaseException]) -> None:
            # Runs on the token helper thread (a forced fetch always does), so the
            # user's Auth.message builder runs here, not on the I/O thread.
            frame = None
            if build is not None and token is not None and err is None:
                try:
                    frame = rotation_frame(build(token))
                except Exception as exc:
                    err = AuthError(f"Auth.message failed with {type(exc).__name__}")
                    err.__cause__ = exc
            self._post(cmd.Token(round_id, token, exp, err, frame))

        if force:
            # The server refused the cached token, or refresh_auth() wants a new
            # one: a fetch already in flight may still hand it out, a later
            # request must not reuse it.
            self.auth.forget()
        self.auth.request(force, reply)

    def answer(self, c: cmd.Token, session: Optional[Session], now: float) -> None:
        """The token thread answered: give the token to the session that asked."""
        if c.round != self._round:
            return  # stale: a newer request
        self.fetching = False
        if session is None:
            return  # the connection that asked is gone
        if c.error is not None or c.token is None:
            session.token_failed(c.error or AuthError("get_token() returned nothing"), now)
        else:
            session.token_ready(c.token, c.expires_at, now, c.frame)

    def command(self, c: cmd.Command, session: Optional[Session], now: float) -> None:
        """Run a Token or Refresh command on the I/O thread."""
        if isinstance(c, cmd.Token):
            self.answer(c, session, now)
        elif isinstance(c, cmd.Refresh):
            self.refresh(c.waiter, session, now)

    def refresh(self, waiter: Waiter, session: Optional[Session], now: float) -> None:
        """refresh_auth(): rotate now; ``waiter`` hears once the server answered."""
        if self._protocol == "raw" and self.auth.options.message is None:
            waiter(AuthError("protocol raw rotates tokens in-band only with Auth(message=...)"))
            return
        # Answered by resolve(): when the server accepts a token (AuthAccepted),
        # refuses it (AuthTrouble), or the client ends. Waiters of one rotation
        # share it: the client makes one Refresh per round of refresh_auth() calls.
        self._waiters.append(waiter)
        if session is None or not session.refresh(now):
            # Offline, or a link that cannot rotate now (not open yet): the
            # next connection fetches a new token, and its auth-ok answers them.
            self.force_next = True

    def accepted(self, expires_at: Optional[float], wall_now: float) -> None:
        """The server took the token: remember its expiry, answer ``refresh_auth()``."""
        self.expires_at = expires_at
        if expires_at is not None:
            log.info("token accepted, expires in %.1fs", expires_at - wall_now)
        self.resolve(None)

    def refused(self) -> None:
        """The handshake was refused (HTTP 401/403): the next attempt needs a new token."""
        self.auth.forget()
        self.force_next = True

    def resolve(self, error: Optional[BaseException]) -> None:
        """Tell every ``refresh_auth()`` caller the outcome (None: accepted)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter(error)


def rotation_frame(message: Any) -> Tuple[int, bytes]:
    """The frame for what ``Auth.message`` built: str/bytes as-is, else JSON text."""
    if isinstance(message, str):
        return frames.OP_TEXT, message.encode()
    if isinstance(message, (bytes, bytearray)):
        return frames.OP_BINARY, bytes(message)
    return frames.OP_TEXT, envelope.encode_json(message).encode()
