"""What a lost link or a failed attempt means: pure decisions, made on the I/O thread.

:func:`after_close` sorts a closed session's unfinished messages (numbered ones
are carried to the next link, the rest go back to the queue), decides whether
the link lived long enough to reset the backoff, and whether the close ends the
client. :func:`plan_retry` decides between the next attempt (and its delay) and
giving up. Both take everything as arguments and return typed values; the loop
acts on them.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Union

from ..backoff import Backoff, UniformRng
from ..delivery import Delivery
from ..exceptions import ClientClosed, TetherError
from ..options import Reconnect
from ..protocol.session import Closed


@dataclasses.dataclass(frozen=True)
class AfterClose:
    """What the loop does with a closed connection."""

    carried: List[Delivery]  # numbered (written, unacked): resent first on the next link
    give_back: List[Delivery]  # never numbered: back to the front of the queue
    reset_backoff: bool  # the link was worth it: the next retry starts from the base delay
    cause: BaseException  # handed to the retry decision (and the policy)
    terminal: bool  # the close ends the client


def after_close(
    event: Closed,
    unfinished: List[Delivery],
    opened_at: Optional[float],
    delivered_something: bool,
    now: float,
    reconnect: Optional[Reconnect],
    close_requested: bool,
) -> AfterClose:
    """Decide what the session's ``Closed`` event means.

    Args:
        event: The session's last event.
        unfinished: The session's messages neither done nor failed.
        opened_at: When the link opened (monotonic), or None if it never did.
        delivered_something: The peer confirmed or sent application data.
        now: Monotonic seconds.
        reconnect: The reconnect options, or None (no reconnecting).
        close_requested: close() was called (the client's own close is never terminal).
    """
    # Numbered (a seq, rule 4): resent first on the next link with the same
    # seq, where hello-ok's acked tells which ones the server already has (its
    # dedupe makes the resend safe). The others carry no seq: they simply go
    # back to the head of the queue.
    numbered = [d for d in unfinished if d._seq > 0]
    others = [d for d in unfinished if d._seq <= 0]
    min_uptime = reconnect.min_uptime if reconnect is not None else 0.0
    # A link that delivered something, or lived min_uptime, was worth it: the
    # backoff starts again from its base. A link that opens and drops at once
    # keeps growing the delay (no reconnect storm against a flapping server).
    reset = opened_at is not None and (delivered_something or now - opened_at >= min_uptime)
    if event.error is not None:  # the session says this close ends the client
        return AfterClose(numbered, others, reset, event.error, terminal=True)
    # Terminal codes are the server's word: a clean close it sent. The client's own
    # closes (4000 heartbeat, protocol failures) are unclean and always retried.
    terminal = (
        reconnect is not None
        and event.was_clean
        and event.code in reconnect.terminal_codes
        and not close_requested
    )
    cause: BaseException = ClientClosed(f"connection closed: {event.code} {event.reason}")
    if terminal:
        cause = TetherError(f"server closed the connection with terminal code {event.code}")
    return AfterClose(numbered, others, reset, cause, terminal)


@dataclasses.dataclass(frozen=True)
class Retry:
    """Try again after ``delay`` seconds, with ``backoff`` as the new backoff."""

    delay: float
    backoff: Backoff
    problem: Optional[BaseException] = None  # a misbehaving policy: reported, never fatal


@dataclasses.dataclass(frozen=True)
class GiveUp:
    """Enter ``closed`` for good; ``reason`` None: close() asked for it."""

    reason: Optional[BaseException]
    problem: Optional[BaseException] = None


def plan_retry(
    cause: BaseException,
    terminal: bool,
    closing_done: bool,
    reconnect: Optional[Reconnect],
    backoff: Backoff,
    rng: UniformRng,
    now: float,
) -> Union[Retry, GiveUp]:
    """After a failed attempt or a lost link: back off and retry, or give up.

    Args:
        cause: Why the attempt or the link ended.
        terminal: The end is final (a terminal close code, a final auth refusal).
        closing_done: close() was called and has nothing left to drain (or its
            deadline passed): finish quietly.
        reconnect: The reconnect options, or None (no reconnecting).
        backoff: The current backoff.
        rng: Draws the default delay.
        now: Monotonic seconds.
    """
    if closing_done:
        return GiveUp(None)
    if terminal or reconnect is None:
        return GiveUp(cause)
    if backoff.exhausted:
        tried = backoff.attempt
        return GiveUp(TetherError(f"gave up after {tried} reconnection attempt(s): {cause}"))
    delay, new, problem = backoff.retry(rng, now, cause, reconnect.policy)
    if delay is None:
        tried = backoff.attempt
        err = TetherError(
            f"the reconnect policy stopped retrying after {tried} attempt(s): {cause}"
        )
        return GiveUp(err, problem)
    return Retry(delay, new, problem)


__all__ = ["AfterClose", "GiveUp", "Retry", "after_close", "plan_retry"]
