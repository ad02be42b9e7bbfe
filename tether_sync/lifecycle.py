"""The client's life across connections: backoff, uptime, and what a loss means.

Runs on the I/O thread; no I/O and no thread of its own. :class:`Lifecycle`
keeps what outlives one connection attempt: the :class:`~tether_sync.backoff.Backoff`
(with the endpoint it points at), when the current link opened, and the delay
of the retry announced. Its methods wrap the pure decisions of
:mod:`~tether_sync.aftermath` (:func:`after_close`, :func:`plan_retry`) and apply
them to that state; the loop acts on what they return.
"""

from __future__ import annotations

import logging
import random
from typing import List, Optional, Union

from .aftermath import AfterClose, GiveUp, Retry, after_close, plan_retry
from .backoff import Backoff
from .delivery import Delivery
from .loopconfig import LoopConfig
from .session import Closed
from .shutdown import Shutdown

log = logging.getLogger("tether_sync")


class Lifecycle:
    """Backoff and uptime across connections.

    Args:
        config: The loop's options (reconnect policy, endpoints).
        rng: Draws the backoff delays.
    """

    def __init__(self, config: LoopConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        rc = config.reconnect
        self.backoff = Backoff(
            rc.base_delay if rc else 1.0,
            rc.max_delay if rc else 1.0,
            rc.max_attempts if rc else 0,
            endpoints=len(config.urls),
        )
        self.next_delay: Optional[float] = None  # the retry announced, while reconnecting
        self.opened_at: Optional[float] = None  # when the current link opened (monotonic)
        self.opened_once = False

    @property
    def endpoint(self) -> str:
        """The URL connected to while open, else the one being tried or to be tried next."""
        return self._config.urls[self.backoff.endpoint]

    def opened(self, now: float) -> bool:
        """A link opened at ``now``; True if it is a reconnection."""
        again = self.opened_once
        self.opened_once = True
        self.opened_at = now
        self.next_delay = None
        return again

    def closed(
        self,
        event: Closed,
        unfinished: List[Delivery],
        delivered_something: bool,
        now: float,
        close_requested: bool,
    ) -> AfterClose:
        """The link is over: sort its messages; a link that was worth it resets the backoff."""
        after = after_close(
            event,
            unfinished,
            self.opened_at,
            delivered_something,
            now,
            self._config.reconnect,
            close_requested,
        )
        if after.reset_backoff:
            self.backoff = self.backoff.reset()
        self.opened_at = None
        log.info("connection closed: %d %s (clean=%s)", event.code, event.reason, event.was_clean)
        return after

    def retry(
        self, cause: BaseException, terminal: bool, shutdown: Shutdown, has_work: bool, now: float
    ) -> Union[Retry, GiveUp]:
        """After a failed attempt or a lost link: the next attempt's delay, or give up.

        A :class:`Retry`'s ``delay`` is already fitted to a ``close()`` deadline.
        """
        plan = plan_retry(
            cause,
            terminal,
            shutdown.due(has_work, now),
            self._config.reconnect,
            self.backoff,
            self._rng,
            now,
        )
        if plan.problem is not None:  # a misbehaving policy costs a log line, never the loop
            log.warning("%s", plan.problem, exc_info=plan.problem.__cause__)
        if isinstance(plan, GiveUp):
            return plan
        self.backoff = plan.backoff
        delay = self.next_delay = shutdown.retry_delay(plan.delay, now)
        attempt = self.backoff.attempt
        log.info(
            "reconnecting to %s: attempt %d in %.3fs (%s)", self.endpoint, attempt, delay, cause
        )
        return Retry(delay, plan.backoff, plan.problem)


__all__ = ["Lifecycle"]
