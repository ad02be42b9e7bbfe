"""Connection attempts: the I/O thread's bookkeeping, and the connector thread's work.

websocket-client's opening handshake is blocking, so each attempt runs on its
own short-lived connector thread (``tether-connect``), which posts the outcome
to the loop: a :class:`~tether_sync.engine.commands.Connected` that hands the
socket over, or a :class:`~tether_sync.engine.commands.ConnectFailed`. The
connector owns the socket until then and never after. Two sides, one file,
because each change to what a connector does (a new stage, a new way to abort
it) changes what the loop keeps about it:

* **The I/O thread's side**: :class:`Dialer` starts attempts and schedules their
  ``connect_timeout``; :class:`Attempts` numbers them (an answer for an attempt
  abandoned after a timeout or ``close()`` is stale, and its socket is closed)
  and counts handshake auth refusals (HTTP 401/403: one fresh token, then the
  refusal is final). ``close()``'s thread also uses the Dialer, to abort and
  join the connectors still running (:meth:`Dialer.join`).
* **The connector's side**: :func:`handshake` builds the headers (a user's
  ``headers()`` callable and protocol ``raw``'s token run here, never on the
  I/O thread), connects through :mod:`~tether_sync.engine.transport`, and never
  raises; :class:`Dial` is the attempt as the connector runs it: which stage it
  waits for (named by a connect timeout) and the socket an abort shuts down.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Union

from ..clock import Clock, Deadline
from ..exceptions import AuthError, ConnectTimeout, SubprotocolRefused
from ..options import check_headers
from . import commands as cmd
from . import transport
from .auth import TokenRefresher
from .config import LoopConfig, Timer
from .timers import TimerHeap


class Dialer:
    """Starts connection attempts (I/O thread) and joins their threads (any thread).

    Args:
        config: The loop's options.
        auth: The token source, or None.
        post: Posts the attempt's outcome to the loop (from the connector thread).
    """

    def __init__(
        self,
        config: LoopConfig,
        auth: Optional[TokenRefresher],
        post: Callable[[cmd.Command], None],
        timers: TimerHeap,
        clock: Clock,
    ) -> None:
        self._config = config
        self._auth = auth
        self._post = post
        # The connect timeout lives in the loop's timer heap, not in the connector:
        # the I/O thread decides (and names the stage); the connector's own socket
        # timeouts are only a backstop (BACKSTOP below).
        self._timers = timers
        self._clock = clock
        self.attempts = Attempts()  # the attempt in progress, its handshaker, refusals
        # Connector threads still running, with the attempt each one runs (so
        # close() can abort it). Connectors remove themselves; dict operations
        # are atomic, so no lock is needed.
        self._connectors: Dict[threading.Thread, Dial] = {}

    def dial(self, url: str) -> None:
        """Start one attempt to ``url`` on a new connector thread, and its timeout."""
        attempt, dial = self.attempts.begin()
        cfg, auth, post = self._config, self._auth, self._post

        def connector() -> None:
            # Posting is the connector's last act on the socket: after it, a
            # Connected command owns it (the loop adopts it, or closes it if the
            # attempt went stale meanwhile, or refuse() closes it after the end).
            try:
                post(handshake(attempt, dial, url, cfg, auth))
            finally:
                self._connectors.pop(threading.current_thread(), None)

        # The attempt's deadline, from before the TCP connect until open (the
        # lifecycle cancels it when the session opens or the attempt ends).
        self._timers.schedule(self._clock.monotonic() + cfg.connect_timeout, Timer.CONNECT_TIMEOUT)
        thread = threading.Thread(target=connector, name="tether-connect", daemon=True)
        self._connectors[thread] = dial
        try:
            thread.start()
        except BaseException:  # e.g. no new threads at interpreter shutdown
            self._connectors.pop(thread, None)
            raise

    def settle(self, c: Union[cmd.Connected, cmd.ConnectFailed]) -> bool:
        """A connector answered: True if for the attempt in progress (its deadline
        runs on until open); a stale answer (abandoned after a timeout or close())
        is dropped."""
        if not self.attempts.settle(c.attempt):
            if isinstance(c, cmd.Connected):
                c.sock.close()
            return False
        return True

    def timed_out(self) -> Optional[ConnectTimeout]:
        """The connect timeout fired during the handshake: abandon the attempt
        (None if no connector runs for it)."""
        stage = self.attempts.abandon()  # the connector's late answer is now stale
        if stage is None:
            return None
        return self.timeout_error(stage)

    def timeout_error(self, waiting_for: str) -> ConnectTimeout:
        """The cause of an attempt that timed out ``waiting_for`` something."""
        return ConnectTimeout(
            f"connect timed out after {self._config.connect_timeout}s waiting for {waiting_for}"
        )

    def join(self, deadline: Deadline) -> List[threading.Thread]:
        """Abort and join every connector until ``deadline``; those still alive."""
        # A connector may be between two sockets (one address and the next, the
        # plain socket and its TLS one, or inside websocket-client's own connect
        # through a proxy), where one abort() finds nothing to shut down: abort
        # again every few milliseconds until it ends or the deadline passes.
        while self._connectors:
            for thread, dial in list(self._connectors.items()):
                dial.abort()
                if thread.ident is None:
                    # Registered by dial() on the I/O thread and not started yet:
                    # join() would raise (it did: close() failed with "cannot join
                    # thread before it is started"). Aborted, it ends at once.
                    continue
                remaining = deadline.remaining()
                thread.join(0.01 if remaining is None else min(0.01, remaining))
            if deadline.expired:
                break
        return [t for t in self._connectors if t.is_alive()]


# Seconds the connector's own timeouts run past connect_timeout. The bound of an
# attempt is the loop's timer, which aborts the connector and names the phase;
# these are a backstop that must not win the race against it.
BACKSTOP = 1.0

# What an attempt through websocket-client's own connect waits for (a proxy:
# the stages are not told apart there).
THROUGH_PROXY = "the connection and WebSocket handshake"


class Dial:
    """One attempt as its connector thread runs it, and the handle that aborts it.

    Written by the connector and read by the I/O thread (or close()'s thread),
    one attribute at a time: no lock (a flag and references, each set atomically).

    Attributes:
        ws: The websocket-client object the connector handshakes with.
        stage: What the connector waits for (``transport.TCP``, ``TLS``,
            ``UPGRADE``), as a connect timeout names it.
        sock: The socket the connector blocks on, until it hands it over.
        aborted: :meth:`abort` was called.
    """

    def __init__(self) -> None:
        self.ws: Any = transport.new_handshaker()
        self.stage = transport.TCP
        self.sock: Any = None
        self.aborted = False

    def track(self, stage: str, sock: Any) -> bool:
        """The connector now waits for ``stage`` on ``sock``; False if aborted."""
        self.stage, self.sock = stage, sock
        return not self.aborted

    def abort(self) -> None:
        """End the connector's blocking call (any thread; idempotent, best effort):
        a shutdown() of its socket (the connector checks the flag between calls)."""
        self.aborted = True
        transport.abort(self)  # shuts down self.sock
        transport.abort(self.ws)  # websocket-client's own socket (a proxy)


class Attempts:
    """The connection attempt in progress, as the I/O thread sees it."""

    def __init__(self) -> None:
        self.handshaker: Optional[Dial] = None  # the attempt in progress, while it handshakes
        self.id = 0
        self.refusals = 0  # handshake auth refusals (HTTP 401/403) in a row

    def begin(self) -> tuple[int, Dial]:
        """A new attempt: its number and the handle its connector uses."""
        self.id += 1
        self.handshaker = Dial()
        return self.id, self.handshaker

    def settle(self, attempt: int) -> bool:
        """The connector of ``attempt`` answered: True if it is the one in progress
        (it is then over), False if stale (abandoned after a timeout or close())."""
        if attempt != self.id or self.handshaker is None:
            return False
        self.handshaker = None
        return True

    def abandon(self) -> Optional[str]:
        """Abort the attempt in progress, if any (its connector's late answer is now
        stale); what it was waiting for, or None if no attempt was in progress."""
        dial = self.handshaker
        if dial is None:
            return None
        dial.abort()
        self.id += 1
        self.handshaker = None
        return dial.stage

    def refused(self, cause: BaseException, has_auth: bool) -> tuple[bool, Optional[AuthError]]:
        """Whether ``cause`` is an auth refusal of the handshake (HTTP 401/403 with
        auth configured), counted; and the final error if it is the second in a row."""
        status = transport.http_status(cause)
        if status not in (401, 403) or not has_auth:
            return False, None
        # The same rule as a Tether auth refusal: one fresh token, then final.
        self.refusals += 1
        if self.refusals >= 2:
            return True, AuthError(f"the server refused the handshake with HTTP {status}, twice")
        return True, None


def handshake(
    attempt: int, dial: Dial, url: str, cfg: LoopConfig, auth: Optional[TokenRefresher]
) -> cmd.Command:
    """Connect ``dial`` to ``url``; never raises (a failure is a ``ConnectFailed``)."""
    # Runs on the connector thread: blocking is allowed here, and user code
    # (a headers callable) may run here, never on the I/O thread. This is
    # also where protocol "raw" fetches the token for its handshake header.
    header_auth = auth is not None and cfg.protocol == "raw" and auth.options.header
    exp: Optional[float] = None
    ws = dial.ws
    timeout = cfg.connect_timeout + BACKSTOP
    try:
        headers = cfg.headers
        if callable(headers):
            headers = check_headers(headers(), "headers()")
        if header_auth:
            assert auth is not None and auth.options.header
            token, exp = auth.get_blocking(auth.options.timeout)
            name = auth.options.header
            value = f"Bearer {token}" if name.lower() == "authorization" else token
            headers = {**(headers or {}), name: value}
        extra = dict(cfg.ws_options)
        # The TCP connect and TLS on sockets an abort reaches (see open_socket);
        # websocket-client then only does the upgrade.
        sock = transport.open_socket(
            url, timeout=timeout, ws_options=extra, sslopt=cfg.sslopt, track=dial.track
        )
        if sock is not None:
            extra["socket"] = sock
        else:
            dial.stage = THROUGH_PROXY
        sock = transport.handshake(
            ws,
            url,
            timeout=timeout,
            headers=headers,
            subprotocols=cfg.subprotocols,
            sslopt=cfg.sslopt,
            extra=extra,
            compression=cfg.compression,
        )
        dial.sock = None  # handed over: from here on the I/O thread's
        # The server's answer to the offer, checked here: a bad one fails the attempt.
        params = transport.accepted_deflate(ws, cfg.compression)
    except BaseException as exc:
        left, dial.sock = dial.sock, None
        if left is not None:
            left.close()
        return cmd.ConnectFailed(attempt, _refused_subprotocols(exc, cfg.subprotocols))
    return cmd.Connected(attempt, sock, exp, params)


def _refused_subprotocols(exc: BaseException, offered: Optional[List[str]]) -> BaseException:
    # websocket-client says only "Invalid WebSocket Header" when the server's
    # answer names none of the offered subprotocols (its _validate). With
    # subprotocols offered that is what it means in practice; a server whose
    # upgrade headers are otherwise broken is not fixed by retrying either.
    if offered and str(exc) == "Invalid WebSocket Header":
        names = ", ".join(offered)
        refused = SubprotocolRefused(
            f"the server accepted none of the offered subprotocols ({names})", 1002
        )
        refused.__cause__ = exc
        return refused
    return exc


__all__ = ["BACKSTOP", "Attempts", "Dial", "Dialer", "handshake"]
