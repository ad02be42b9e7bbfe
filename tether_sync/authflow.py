"""Tokens between the sessions and the token helper thread (DESIGN §1 Auth refresh).

A session asks for a token with a ``TokenNeeded`` event; :class:`AuthFlow`
hands the request to the :class:`~tether_sync.auth.TokenRefresher` (whose
helper thread runs ``get_token()``, never the I/O thread) and its answer comes
back to the loop as a :class:`~tether_sync.commands.Token` command. It also
keeps the ``refresh_auth()`` callers waiting for the server's yes, across
connections. Runs on the I/O thread, except the reply closure.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Tuple

from . import commands as cmd
from . import envelope, frames
from .auth import TokenRefresher
from .exceptions import AuthError
from .session import Session

log = logging.getLogger("tether_sync")

Waiter = Callable[[Optional[BaseException]], None]


class AuthFlow:
    """Token requests, answers and ``refresh_auth()`` waiters.

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
        self._waiters.append(waiter)
        if session is None or not session.refresh(now):
            self.force_next = True  # the next connection fetches a new token

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
