"""Connection attempts, each on a short-lived connector thread.

websocket-client's opening handshake is blocking, so each attempt runs it
(:func:`~tether_sync.connector.handshake`) on its own connector thread, which
posts the outcome to the loop: a :class:`~tether_sync.commands.Connected` that
hands the socket over, or a :class:`~tether_sync.commands.ConnectFailed`. The
connector owns the socket until then and never after. :class:`Dialer` keeps the
attempt in progress (:class:`~tether_sync.connector.Attempts`) and the connector
threads still running, so that ``close()`` can abort and join them.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Union

from . import commands as cmd
from .auth import TokenRefresher
from .clock import Clock, Deadline
from .connector import Attempts, Dial, handshake
from .exceptions import ConnectTimeout
from .loopconfig import LoopConfig, Timer
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
        self._timers = timers  # the connect timeout lives in the loop's timer heap
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


__all__ = ["Dialer"]
