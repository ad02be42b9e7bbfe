"""In-band session upkeep for the I/O loop: heartbeat and auth.

A mixin of :class:`~tether_sync.loop.IoLoop`, split out to keep each file
readable; its methods run on the I/O thread only, like the rest of the loop.

Heartbeat: protocol ``tether`` sends ``tether:ping`` every ``interval`` and
expects the pong within ``timeout``; protocol ``raw`` uses WebSocket ping frames.
Any inbound frame counts as a sign of life. A missing pong closes with 4000.

Auth: on every connection the token goes first (``tether:auth``), and the link
is ``open`` only once the server said ``ok``; then subscriptions and the queue
follow. A refusal gets one fresh token; a second refusal is final. Rotation
before expiry goes over the open socket. ``get_token()`` runs on the
:class:`~tether_sync.auth.TokenRefresher` thread; its answer comes back as a
``token`` command.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from . import envelope, frames
from .auth import TokenRefresher
from .clock import Clock
from .events import AuthRefreshedEvent
from .exceptions import AuthError
from .stats import Counters
from .timers import TimerHeap
from .tokens import refresh_at

if TYPE_CHECKING:
    from .loop import LoopConfig

log = logging.getLogger("tether_sync")

# Phases of one connection (shared with loop.py).
NONE, HANDSHAKE, AUTH, OPEN, CLOSING = range(5)

HEARTBEAT_CLOSE_GRACE = 0.25  # seconds; after a missing pong the peer is presumed gone

RefreshWaiter = Callable[[Optional[BaseException]], None]


class SessionMixin:
    """Heartbeat and auth state of the loop (see the module docstring)."""

    if TYPE_CHECKING:  # provided by IoLoop
        config: LoopConfig
        counters: Counters
        last_rtt: Optional[float]
        auth_expires_at: Optional[float]
        _auth: Optional[TokenRefresher]
        _clock: Clock
        _rng: random.Random
        _timers: TimerHeap
        _phase: int
        _sock: Any
        _reading: bool
        _last_rx: float
        _ping_ts: Optional[int]
        _ping_sent: float
        _auth_refused: int
        _auth_round: int
        _attempt_id: int
        _auth_busy: bool
        _auth_pending_exp: Optional[float]
        _auth_force: bool
        _refresh_failures: int
        _refresh_waiters: List[RefreshWaiter]

        _emit: Callable[[Any], None]
        _wants: Callable[[str], bool]

        def post(self, name: str, arg: Any = None) -> None: ...
        def _error(self, exc: BaseException) -> None: ...
        def _send_control(self, opcode: int, payload: bytes) -> None: ...
        def _send_control_text(self, text: str) -> None: ...
        def _close_link(self, code: int, reason: str, final: bool) -> None: ...
        def _opened(self) -> None: ...
        def _finish(self, cause: Optional[BaseException]) -> None: ...

    # ------------------------------------------------------------ heartbeat

    def _start_heartbeat(self) -> None:
        hb = self.config.heartbeat
        if hb is None:
            return
        self._timers.schedule(self._clock.monotonic() + hb.interval, "ping")

    def _timer_ping(self) -> None:
        hb = self.config.heartbeat
        if hb is None or self._phase != OPEN:
            return
        now = self._clock.monotonic()
        self._ping_sent = now
        ts = int(self._clock.time() * 1000)
        self._ping_ts = ts
        if self.config.protocol == "tether":
            self._send_control_text(envelope.encode_ping(ts))
        else:
            self._send_control(frames.OP_PING, str(ts).encode())
        self._timers.schedule(now + hb.timeout, "pong_deadline")
        self._timers.schedule(now + hb.interval, "ping")

    def _on_pong(self, ts: Any) -> None:
        if self._ping_ts is None:
            return
        if isinstance(ts, (bytes, bytearray)):
            try:
                ts = int(ts)
            except ValueError:
                return
        if ts == self._ping_ts:
            self.last_rtt = self._clock.monotonic() - self._ping_sent
            self._ping_ts = None
            self._timers.cancel("pong_deadline")

    def _timer_pong_deadline(self) -> None:
        hb = self.config.heartbeat
        if hb is None or self._phase != OPEN:
            return
        if self._last_rx > self._ping_sent or not self._reading:
            # Any inbound frame since the ping proves the peer alive; and while we
            # hold reading back for a "block" consumer, the pong may sit unread.
            self._ping_ts = None
            return
        log.warning("no pong within %.3fs: closing with 4000", hb.timeout)
        self._close_link(4000, "Heartbeat timeout", final=False)
        # A silent peer will not answer our close frame: do not wait long for it.
        self._timers.schedule(
            self._clock.monotonic() + min(HEARTBEAT_CLOSE_GRACE, hb.timeout), "close_grace"
        )

    # ------------------------------------------------------------ auth

    def _begin_auth(self, force: bool) -> None:
        """Ask for a token (off this thread) and send it when it comes."""
        auth = self._auth
        assert auth is not None
        self._auth_round += 1
        round_id = self._auth_round
        self._auth_busy = True
        force = force or self._auth_force
        self._auth_force = False
        # One budget for get_token() and the server's answer.
        timeout = auth.options.timeout * 2
        self._timers.schedule(self._clock.monotonic() + timeout, "auth_timeout")

        build = auth.options.message if self.config.protocol == "raw" else None

        def reply(token: Optional[str], exp: Optional[float], err: Optional[BaseException]) -> None:
            # Runs on the token helper thread (a forced fetch always does: raw
            # rotations are forced), so the user's Auth.message builder runs here,
            # not on the I/O thread.
            frame: Optional[Tuple[int, bytes]] = None
            if build is not None and token is not None and err is None:
                try:
                    frame = _rotation_frame(build(token))
                except Exception as exc:
                    err = AuthError(f"Auth.message failed with {type(exc).__name__}")
                    err.__cause__ = exc
            self.post("token", (round_id, token, exp, err, frame))

        auth.request(force, reply)

    def _cmd_token(
        self, arg: Tuple[int, Optional[str], Optional[float], Any, Optional[Tuple[int, bytes]]]
    ) -> None:
        round_id, token, exp, err, frame = arg
        if round_id != self._auth_round or self._sock is None or not self._auth_busy:
            return
        if err is not None:
            self._auth_trouble(err)
            return
        assert token is not None
        self._auth_pending_exp = exp
        if self.config.protocol == "tether":
            self._send_control_text(envelope.encode_auth(token))  # never logged
            log.debug("sent tether:auth")
        else:
            # raw: an in-band rotation message; no confirmation can come back.
            if frame is not None:
                self._send_control(*frame)
            self._on_auth_ok(True)

    def _on_auth_ok(self, ok: bool) -> None:
        if not self._auth_busy:
            log.debug("ignoring tether:auth-ok (ok=%s): none awaited", ok)
            return
        auth = self._auth
        assert auth is not None
        self._auth_busy = False
        self._timers.cancel("auth_timeout")
        if ok:
            self._auth_refused = 0
            self._refresh_failures = 0
            exp = self._auth_pending_exp
            self.auth_expires_at = exp
            self.counters.auth_refreshes += 1
            if exp is not None:
                log.info("token accepted, expires in %.1fs", exp - self._clock.time())
            if self._wants("auth_refreshed"):
                self._emit(AuthRefreshedEvent(exp))
            if exp is not None and self._can_rotate_in_band():
                now = self._clock.time()
                at = refresh_at(exp, auth.options.refresh_before, now)
                self._timers.schedule(self._clock.monotonic() + (at - now), "refresh")
            self._fail_refresh_waiters(None)
            if self._phase == AUTH:
                self._opened()
            return
        self._auth_refused += 1
        auth.forget()
        if self._auth_refused == 1:
            log.warning("server refused the token: fetching a fresh one")
            self._begin_auth(force=True)
            return
        err = AuthError("the server refused the token, and a fresh token too")
        log.error("%s: giving up", err)
        self._fail_refresh_waiters(err)
        self._send_control(frames.OP_CLOSE, frames.encode_close_payload(1008, "Auth refused"))
        self._finish(err)

    def _auth_trouble(self, err: BaseException) -> None:
        """get_token() failed or hung, or the server never answered."""
        self._auth_busy = False
        self._timers.cancel("auth_timeout")
        self._error(err)
        self._fail_refresh_waiters(err)
        if self._phase == AUTH:
            # No usable token for this connection: close it and retry with backoff.
            self._close_link(1000, "Token unavailable", final=False)
            return
        # A refresh on an open link: keep the link (its token may still be valid)
        # and retry the fetch with full-jitter backoff.
        self._refresh_failures += 1
        cap = min(30.0, 0.5 * 2.0 ** min(self._refresh_failures, 10))
        delay = self._rng.uniform(0.0, cap)
        log.info("token refresh failed; retrying in %.2fs", delay)
        self._timers.schedule(self._clock.monotonic() + delay, "refresh")

    def _timer_auth_timeout(self) -> None:
        if self._auth_busy:
            budget = self._auth.options.timeout * 2 if self._auth else 0
            self._auth_round += 1  # a late answer is stale now
            self._auth_trouble(TimeoutError(f"no token and auth-ok within {budget:g}s"))

    def _timer_refresh(self) -> None:
        if self._phase == OPEN and not self._auth_busy:
            self._begin_auth(force=True)

    def _cmd_header_token(self, arg: Tuple[int, float]) -> None:
        # protocol "raw": the token the handshake header carries.
        attempt, exp = arg
        if attempt == self._attempt_id:
            self._auth_pending_exp = exp

    def _cmd_refresh(self, waiter: Callable[[Optional[BaseException]], None]) -> None:
        """refresh_auth(): rotate now; ``waiter(error)`` once the server answered."""
        if self._auth is None:
            waiter(AuthError("no auth configured"))
            return
        if self.config.protocol == "raw" and self._auth.options.message is None:
            waiter(AuthError("protocol raw rotates tokens in-band only with Auth(message=...)"))
            return
        self._refresh_waiters.append(waiter)
        if self._phase == OPEN:
            if not self._auth_busy:
                self._begin_auth(force=True)
        elif not self._auth_busy:
            self._auth_force = True  # the next connection fetches a new token

    def _fail_refresh_waiters(self, exc: Optional[BaseException]) -> None:
        waiters, self._refresh_waiters = self._refresh_waiters, []
        for waiter in waiters:
            waiter(exc)

    def _can_rotate_in_band(self) -> bool:
        # Protocol raw carries the token in the handshake header: without an
        # Auth(message=...) builder a new token can only go out on the next connect.
        auth = self._auth
        return self.config.protocol == "tether" or (
            auth is not None and auth.options.message is not None
        )


def _rotation_frame(message: Any) -> Tuple[int, bytes]:
    """The frame for what ``Auth.message`` built: str/bytes as-is, else JSON text."""
    if isinstance(message, str):
        return frames.OP_TEXT, message.encode()
    if isinstance(message, (bytes, bytearray)):
        return frames.OP_BINARY, bytes(message)
    return frames.OP_TEXT, envelope.encode_json(message).encode()
