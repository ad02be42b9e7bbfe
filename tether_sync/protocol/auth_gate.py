"""The auth gate of one connection: the token that lets the link open, and its rotation.

Owns one token request at a time (single-flight: :attr:`AuthGate.busy`), the
deadline by which it must be answered (the token fetched AND, in protocol
``tether``, the server's ``tether:auth-ok``: one ``auth_timeout`` for both), the
count of refusals, the rotation deadline ``refresh_before`` ahead of the
accepted token's expiry, and the full-jitter retry of a failed rotation.

It never fetches a token (that is ``get_token()`` on a helper thread): it emits
:class:`~tether_sync.protocol.events.TokenNeeded` and is answered through the
session (``token_ready`` / ``token_failed``). It never closes the link either:
where the link must end it returns a :class:`CloseLink` and the session, which
owns closing, acts on it. Whether the link is open yet decides what a failure
means, so the session passes it in (``opening``): before open, no token means
this connection cannot be used (close, and the loop retries with backoff); on an
open link the old token may still be valid, so the link stays and the fetch is
retried.

Tokens never reach a log line, event or exception message from here.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional, Protocol, Tuple, Union

from ..exceptions import AuthError
from . import envelope
from .events import AuthAccepted, AuthTrouble, Output, TokenNeeded
from .token_expiry import refresh_at

log = logging.getLogger("tether_sync")

REFRESH_RETRY_CAP = 30.0  # seconds: the most a failed rotation waits before the next try


class UniformRng(Protocol):
    """The part of :class:`random.Random` the gate needs (refresh retries)."""

    def uniform(self, a: float, b: float) -> float: ...


class CloseLink(NamedTuple):
    """The gate's verdict that the link must end: close with this code and reason."""

    code: int
    reason: str
    error: Optional[BaseException] = None


class AuthGate:
    """One token request at a time, its deadline, and the rotation schedule.

    Args:
        output: Where ``tether:auth`` (or a raw rotation frame) and the auth
            events go.
        tether: Protocol ``tether`` (the server answers ``tether:auth-ok``) or
            ``raw`` (a rotation message is sent and counts as accepted).
        rotates: Whether tokens are rotated on this link (``SessionConfig.auth``).
        timeout: Seconds for one token fetch plus the server's answer.
        refresh_before: Seconds before expiry at which the token is rotated.
        wall_offset: ``wall - monotonic`` seconds (expiries are wall-clock times).
        rng: For full-jitter retries of a failed rotation (None: half the cap).
    """

    __slots__ = (
        "_deadline",
        "_output",
        "_pending_exp",
        "_refresh_at",
        "_refresh_before",
        "_refresh_failures",
        "_refused",
        "_rng",
        "_rotates",
        "_tether",
        "_timeout",
        "_wall_offset",
        "busy",
        "expires_at",
    )

    def __init__(
        self,
        output: Output,
        *,
        tether: bool,
        rotates: bool,
        timeout: float,
        refresh_before: float,
        wall_offset: float,
        rng: Optional[UniformRng],
    ) -> None:
        self.busy = False
        """A token was asked for and its answer (token, then auth-ok) is awaited."""
        self.expires_at: Optional[float] = None
        """The accepted token's expiry (epoch seconds), if it said."""
        self._output = output
        self._tether = tether
        self._rotates = rotates
        self._timeout = timeout
        self._refresh_before = refresh_before
        self._wall_offset = wall_offset
        self._rng = rng
        self._deadline: Optional[float] = None  # the request in flight must be answered by then
        self._refresh_at: Optional[float] = None  # rotate (or retry a failed rotation) then
        self._pending_exp: Optional[float] = None  # expiry of the token sent, until auth-ok
        self._refused = 0  # refusals in a row (the second one is final)
        self._refresh_failures = 0  # failed rotations in a row (the retry backoff)

    # ------------------------------------------------------------ time

    def deadline(self) -> Optional[float]:
        """The earliest of the request's deadline and the rotation time, or None.

        The rotation time does not count while a request is in flight: the
        request's own answer reschedules it.
        """
        when = self._deadline
        if not self.busy:
            at = self._refresh_at
            if at is not None and (when is None or at < when):
                return at
        return when

    def on_deadline(self, now: float, opening: bool) -> Optional[CloseLink]:
        """Time out the request in flight; start the rotation that is due.

        Args:
            opening: The link is not open yet (it waits for this gate).

        Returns:
            A :class:`CloseLink` if the link must end (a timeout before open).
        """
        if self._deadline is not None and now >= self._deadline:
            verdict = self.failed(
                TimeoutError(f"no token and auth-ok within {self._timeout:g}s"), now, opening
            )
            if verdict is not None:
                return verdict
        if self._refresh_at is not None and now >= self._refresh_at and not self.busy:
            self._refresh_at = None
            if not opening:
                self.request(now, True)
        return None

    def stop(self) -> None:
        """The link is closing: no request is awaited, nothing is timed."""
        self.busy = False
        self._deadline = self._refresh_at = None

    # ------------------------------------------------------------ requests and answers

    def request(self, now: float, force: bool) -> None:
        """Ask for a token (``force``: a fresh one, not a cached one)."""
        self.busy = True
        self._deadline = now + self._timeout
        self._output.emit(TokenNeeded(force))

    def refresh(self, now: float) -> bool:
        """Rotate now (``refresh_auth()`` on an open link); False if this link does not rotate."""
        if not self._rotates:
            return False
        if not self.busy:
            self.request(now, True)
        return True

    def token_ready(
        self,
        token: str,
        expires_at: Optional[float],
        now: float,
        frame: Optional[Tuple[int, bytes]],
    ) -> None:
        """The token asked for arrived (ignored if none is awaited: the link closed since)."""
        if not self.busy:
            return
        self._pending_exp = expires_at
        if self._tether:
            self._output.text(envelope.encode_auth(token))  # never logged
            log.debug("sent tether:auth")
            return
        # raw: an in-band rotation message; no confirmation can come back.
        if frame is not None:
            self._output.frame(*frame)
        self.busy = False
        self._deadline = None
        self.accepted(expires_at, now)

    def failed(self, error: BaseException, now: float, opening: bool) -> Optional[CloseLink]:
        """No token (``get_token()`` failed, or the request timed out).

        Returns:
            A :class:`CloseLink` before open (this connection cannot be used);
            None on an open link, where the rotation is retried with full jitter.
        """
        if not self.busy:
            return None
        self.busy = False
        self._deadline = None
        self._output.emit(AuthTrouble(error))
        if opening:
            return CloseLink(1000, "Token unavailable")
        self._refresh_failures += 1
        cap = min(REFRESH_RETRY_CAP, 0.5 * 2.0 ** min(self._refresh_failures, 10))
        delay = self._rng.uniform(0.0, cap) if self._rng is not None else cap / 2
        log.info("token refresh failed; retrying in %.2fs", delay)
        self._refresh_at = now + delay
        return None

    def on_auth_ok(self, ok: bool, now: float) -> Union[bool, CloseLink]:
        """The server answered ``tether:auth-ok``.

        Returns:
            True if the token was accepted (the link may open), a
            :class:`CloseLink` on the second refusal in a row (final: the close
            carries the :class:`~tether_sync.exceptions.AuthError`), else False
            (ignored, or a first refusal: a fresh token is asked for).
        """
        if not self.busy:
            log.debug("ignoring tether:auth-ok (ok=%s): none awaited", ok)
            return False
        self.busy = False
        self._deadline = None
        if ok:
            self._refused = 0
            self._refresh_failures = 0
            self.accepted(self._pending_exp, now)
            return True
        self._refused += 1
        if self._refused == 1:
            log.warning("server refused the token: fetching a fresh one")
            self.request(now, True)
            return False
        err = AuthError("the server refused the token, and a fresh token too")
        log.error("%s: giving up", err)
        self._output.emit(AuthTrouble(err, final=True))
        return CloseLink(1008, "Auth refused", err)

    def accepted(self, expires_at: Optional[float], now: float) -> None:
        """A token counts as accepted: report it and schedule its rotation."""
        self.expires_at = expires_at
        self._output.emit(AuthAccepted(expires_at))
        if expires_at is not None and self._rotates:
            wall = now + self._wall_offset
            at = refresh_at(expires_at, self._refresh_before, wall)
            self._refresh_at = now + (at - wall)


__all__ = ["AuthGate", "CloseLink", "UniformRng"]
