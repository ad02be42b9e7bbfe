"""The client's life across connections: its public State, attempts, retries, and its end.

Runs on the I/O thread (no thread and no socket of its own). The I/O loop
(:mod:`~tether_sync.engine.loop`) owns the thread, the selector, the timer heap and
the open :class:`~tether_sync.engine.connection.Connection`; :class:`Lifecycle` owns
what outlives one connection and decides what happens between them:

* the public :class:`~tether_sync.state.State` and its events;
* connection attempts (through the :class:`~tether_sync.engine.attempts.Dialer`), their
  failures and handshake auth refusals, and their deadline: ``connect_timeout``
  from the TCP connect until ``open`` (handshake, hello-ok, token, auth-ok),
  whose :class:`~tether_sync.exceptions.ConnectTimeout` names what the attempt
  was still waiting for;
* the :class:`~tether_sync.backoff.Backoff` and the uptime that resets it, the
  unacked messages carried to the next link (DESIGN §5);
* ``close()``: drain until the deadline (across reconnects), then close with 1000;
* the end: every message left fails, every waiter is answered.

The pure decisions are in :mod:`~tether_sync.engine.retry` (:func:`after_close`,
:func:`plan_retry`) and :class:`~tether_sync.engine.closing.Shutdown`; this class
applies them. It reaches the loop only through :class:`Host` (the open
connection's session, attach and release a socket, hand on events), and the
loop's other parts only through :class:`Wiring`: it never sees the loop's
thread, selector or socket. The loop's event table routes the session's
``Opened``, auth and ``Closed`` events here.

Who may touch what: everything here runs on the I/O thread, except
:meth:`Lifecycle.finish` for a client that never started (the caller's thread,
with no I/O thread alive) and the reads that user threads make through
:class:`~tether_sync.engine.Engine` (``state``, ``fatal``, ``unsent``,
``next_delay``: references and ints, replaced whole).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import uuid
from typing import Any, Callable, List, Optional, Protocol

from ..backoff import Backoff
from ..clock import Clock
from ..delivery import Delivery
from ..events import AuthRefreshedEvent, OpenEvent, ReconnectingEvent, StateChangeEvent
from ..exceptions import ClientClosed, ConnectTimeout, SubprotocolRefused
from ..protocol import session as s
from ..protocol.session import Closed, Continuity, Phase, Session
from ..redact import redact_url
from ..state import State, check
from ..stats import Counters
from . import commands as cmd
from .attempts import Dialer
from .auth import AuthFlow
from .closing import Shutdown
from .commands import Mailbox
from .config import LoopConfig, Timer
from .outbox import Outbox
from .retry import GiveUp, after_close, plan_retry
from .routing import Router
from .session_events import Handoff, _deliveries
from .timers import TimerHeap

log = logging.getLogger("tether_sync")


class Flag(Protocol):
    """A ``threading.Event`` as the lifecycle uses it (set by it, read anywhere)."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class Host(Protocol):
    """What the lifecycle asks of the I/O loop."""

    @property
    def session(self) -> Optional[Session]:
        """The open connection's session, if any."""

    def attach(self, c: cmd.Connected) -> Session:
        """Make the connection for a socket a connector handed over; its session."""

    def release_socket(self) -> None:
        """Drop the connection: its timers, its registration, its socket."""

    def process_events(self) -> None:
        """Hand on what the session produced."""


@dataclasses.dataclass(frozen=True)
class LoopHooks:
    """The loop's side of :class:`Host`: four callables, not the loop itself.

    The I/O loop hands the lifecycle this, so the lifecycle can reach the open
    connection and nothing else of the loop (its selector, tables, thread).
    """

    current_session: Callable[[], Optional[Session]]
    attach: Callable[[cmd.Connected], Session]
    release_socket: Callable[[], None]
    process_events: Callable[[], None]

    @property
    def session(self) -> Optional[Session]:
        """The open connection's session, if any."""
        return self.current_session()


class Lifecycle:
    """State, attempts, backoff, close() and the end, across connections.

    Args:
        config: The loop's options.
        host: The I/O loop's hooks (:class:`LoopHooks`; a test may pass its own Host).
        clock: Monotonic and wall time.
        rng: Draws the backoff delays.
        timers: The loop's timer heap (reconnect, close deadline).
        dialer: Starts connection attempts.
        parts: The loop's collaborators: counters, outbox, handoff, router,
            mailbox, continuity, auth flow.
        emit: Hands an event to the dispatcher.
        wants: Whether anyone listens to an event name.
        on_state: Called after every state change.
        stopped: Set when the client has ended for good.
    """

    def __init__(
        self,
        config: LoopConfig,
        host: Host,
        clock: Clock,
        rng: random.Random,
        timers: TimerHeap,
        dialer: Dialer,
        parts: Wiring,
        emit: Callable[[Any], None],
        wants: Callable[[str], bool],
        on_state: Optional[Callable[[State], None]],
        stopped: Flag,
    ) -> None:
        self._config = config
        self._host = host
        self._clock = clock
        self._rng = rng
        self._timers = timers
        self._dialer = dialer
        self._p = parts
        self._emit = emit
        self._wants = wants
        self._on_state = on_state
        self.stopped = stopped
        # The backoff is an immutable value (STYLE §3.2), replaced at each
        # attempt and reset once a link lived long enough (after_close decides).
        rc = config.reconnect
        self.backoff = Backoff(
            rc.base_delay if rc else 1.0,
            rc.max_delay if rc else 1.0,
            rc.max_attempts if rc else 0,
            endpoints=len(config.urls),
        )
        self.state = State.IDLE
        self.next_delay: Optional[float] = None  # the retry announced, while reconnecting
        self._opened_at: Optional[float] = None  # when the current link opened (monotonic)
        self._opened_once = False
        self.carried: List[Delivery] = []  # unacked messages waiting for the next link
        self.shutdown = Shutdown()  # close() and flush() policy
        self.fatal: Optional[BaseException] = None  # why the client ended, if not by close()
        self.unsent = 0  # messages failed by the final close
        # Set when connect_timeout ended the session of an attempt (before open):
        # the cause its Closed event is reported with.
        self._timed_out: Optional[ConnectTimeout] = None

    def waiting_for(self) -> Optional[str]:
        """What the attempt in progress waits for (as a connect timeout names it), or None.

        Read from a user thread for an error message (``connect(wait=True)``):
        a snapshot of two references the I/O thread replaces, never changed here.
        """
        dial = self._dialer.attempts.handshaker
        if dial is not None:
            return dial.stage
        session = self._host.session
        if session is not None and not session.is_open:
            return _waiting_for(session.phase, self._p.authflow)
        return None

    @property
    def endpoint(self) -> str:
        """The URL connected to while open, else the one being tried or to be tried next."""
        return self._config.urls[self.backoff.endpoint]

    def has_work(self) -> bool:
        outbox = self._p.outbox
        return bool(len(outbox) or outbox.taken)

    def set_state(self, new: State) -> None:
        """The one place the public state changes (STYLE §3.11): checked, logged, told."""
        old = self.state
        if old is new:
            return
        check(old, new)  # a transition the table does not allow is a bug: raise
        self.state = new
        # Before anyone hears of it: senders blocked for room re-evaluate with
        # the new state (the drop policies apply only while not open).
        self._p.outbox.set_open(new is State.OPEN)
        log.debug("state %s -> %s", old.value, new.value)
        if self._on_state is not None:
            self._on_state(new)
        if self._wants("state_change"):
            self._emit(StateChangeEvent(old.value, new.value))
        # The close event of the link that just ended goes out after the
        # state_change it caused (open -> reconnecting, then close), in one place,
        # whichever path (retry or finish) made the change.
        handoff = self._p.handoff
        close, handoff.pending_close = handoff.pending_close, None
        if close is not None and self._wants("close"):
            self._emit(close)

    def error(self, exc: BaseException) -> None:
        """An ``error`` event for ``exc``, unless it was the last one reported (a
        final auth refusal is reported when the session says so, then ends the client)."""
        handoff = self._p.handoff
        if exc is handoff.reported_error:
            return
        handoff.error(exc)

    # ------------------------------------------------------------ connecting

    def connect(self) -> None:
        """Start one connection attempt (to the endpoint the backoff points at)."""
        self.set_state(State.CONNECTING)
        self._p.counters.attempt_started(self._clock.monotonic())
        self._dialer.dial(self.endpoint)

    def on_reconnect_timer(self) -> None:
        if self.state is State.RECONNECTING:
            self.connect()

    def on_connected(self, c: cmd.Connected) -> None:
        if not self._dialer.settle(c):
            return
        log.info("connected to %s", redact_url(self.endpoint))
        session = self._host.attach(c)
        flow = self._p.authflow
        # The messages the last link left unacked go first, before anything
        # still queued (DESIGN §5): the session resends them once hello-ok says
        # which ones the server already has.
        carried, self.carried = self.carried, []
        force = False
        if flow is not None:
            force, flow.force_next = flow.force_next, False
        now = self._clock.monotonic()
        session.start(now, resend=carried, force_token=force, header_expiry=c.header_expiry)
        self._host.process_events()

    def on_connect_failed(self, c: cmd.ConnectFailed) -> None:
        if self._dialer.settle(c):
            log.info("connection to %s failed: %s", redact_url(self.endpoint), c.error)
            self._attempt_failed(c.error)

    def on_connect_timeout(self) -> None:
        """``connect_timeout`` passed before ``open``: fail the attempt, naming its phase."""
        # One deadline covers the whole attempt: with a session, the handshake
        # is done and the session waits (hello-ok, the token, auth-ok); without
        # one, the connector is still handshaking and is abandoned.
        if self._host.session is not None:
            self._session_timed_out(self._host.session)
            return
        timeout = self._dialer.timed_out()
        if timeout is not None:
            log.info("connection to %s timed out", redact_url(self.endpoint))
            self._attempt_failed(timeout)

    def _attempt_failed(self, cause: BaseException) -> None:
        # Counted and reported (each distinct cause once per run of failures)
        # before deciding, so the error event precedes reconnecting or closed.
        self._p.counters.attempt_ended(self._clock.monotonic(), False, cause)
        self._p.handoff.attempt_failed(cause)
        flow = self._p.authflow
        if isinstance(cause, SubprotocolRefused):  # the server's choice: a retry cannot help
            self.finish(cause)
            return
        refused, final = self._dialer.attempts.refused(cause, flow is not None)
        if final is not None:
            self.finish(final, cause=cause)
            return
        if refused and flow is not None:
            flow.refused()
        self.retry_or_finish(cause)

    def opened(self, session: Session) -> None:
        """The session says the link is usable: subscriptions, then the queue drains."""
        p = self._p
        p.handoff.opened()  # a later failed attempt is reported again
        if self._opened_once:
            p.counters.reconnects += 1
        p.counters.opened(self._clock.monotonic(), self._opened_once)
        self._opened_once = True
        self._opened_at = self._clock.monotonic()
        self._timers.cancel(Timer.CONNECT_TIMEOUT)  # the attempt made it in time
        self.next_delay = None
        self._dialer.attempts.refusals = 0
        if p.handoff.store is not None:
            # Rule 4: new numbers above the hello-ok's acked, across processes too.
            p.handoff.store.raise_seq(p.continuity.last_seq)
        self.set_state(State.OPEN)
        if self._wants("open"):
            self._emit(OpenEvent(redact_url(self.endpoint), self.backoff.endpoint))
        for channel in p.router.routes:
            session.subscribe(channel, str(uuid.uuid4()))

    # ------------------------------------------------------------ auth (session events)

    def token_needed(self, event: s.TokenNeeded) -> None:
        """The session needs a token: the token thread fetches it (never this thread)."""
        flow = self._p.authflow
        assert flow is not None  # a session asks only when auth is configured
        flow.request(event.force)

    def auth_accepted(self, event: s.AuthAccepted) -> None:
        """The server took a token: count it, answer ``refresh_auth()``, tell the app."""
        flow = self._p.authflow
        assert flow is not None
        self._p.counters.auth_refreshes += 1
        flow.accepted(event.expires_at, self._clock.time())
        if self._wants("auth_refreshed"):
            self._emit(AuthRefreshedEvent(event.expires_at))

    def auth_trouble(self, event: s.AuthTrouble) -> None:
        """No token, or no answer to it: an ``error`` event, and ``refresh_auth()`` hears it.

        ``final``: the session's ``Closed`` follows with the same error and ends
        the client; ``fatal`` records the reason already.
        """
        flow = self._p.authflow
        assert flow is not None
        self._p.handoff.error(event.error)
        flow.resolve(event.error)
        if event.final:
            self.fatal = event.error

    # ------------------------------------------------------------ losing a link

    def connection_closed(self, session: Session, event: Closed) -> None:
        """The session is over (the loop wrote what was left): carry, retry or finish."""
        # The socket goes first: nothing below writes to it, and the poller holds
        # one socket's registration at a time (the next link's comes later).
        self._host.release_socket()
        self._p.counters.link_closed(
            self._clock.monotonic(), event.code, event.reason, event.was_clean
        )
        after = after_close(
            event,
            _deliveries(session.take_unfinished()),
            self._opened_at,
            session.delivered_something,
            self._clock.monotonic(),
            self._config.reconnect,
            self.shutdown.requested,
        )
        if after.reset_backoff:
            self.backoff = self.backoff.reset()
        self._opened_at = None
        if after.carried:
            self.carried = after.carried
        # Taken but never numbered: back to the head of the queue, in order,
        # ahead of what senders queued meanwhile.
        self._p.outbox.give_back(after.give_back)
        self._p.handoff.connection_closed(event)
        log.info("connection closed: %d %s (clean=%s)", event.code, event.reason, event.was_clean)
        # A session ended by connect_timeout (before open) is a failed attempt,
        # reported with the ConnectTimeout that names its phase, not as a lost link.
        timed_out, self._timed_out = self._timed_out, None
        if timed_out is not None and not after.terminal:
            self._attempt_failed(timed_out)  # as if the handshake had timed out
            return
        self.retry_or_finish(after.cause, terminal=after.terminal)

    def retry_or_finish(self, cause: BaseException, terminal: bool = False) -> None:
        """After a failed attempt or a lost link: back off and retry, or give up."""
        self._host.release_socket()
        self._timers.cancel(Timer.CONNECT_TIMEOUT)  # that attempt is over
        now = self._clock.monotonic()
        plan = plan_retry(
            cause,
            terminal,
            self.shutdown.due(self.has_work(), now),
            self._config.reconnect,
            self.backoff,
            self._rng,
            now,
        )
        if plan.problem is not None:  # a misbehaving policy costs a log line, never the loop
            log.warning("%s", plan.problem, exc_info=plan.problem.__cause__)
            self.error(plan.problem)
        if isinstance(plan, GiveUp):
            self.finish(plan.reason, cause=cause)
            return
        self.backoff = plan.backoff
        # While close() drains, the retry comes within its deadline (the queue
        # may still go out on the next link).
        delay = self.next_delay = self.shutdown.retry_delay(plan.delay, now)
        self.set_state(State.RECONNECTING)
        attempt, url = self.backoff.attempt, redact_url(self.endpoint)
        log.info("reconnecting to %s: attempt %d in %.3fs (%s)", url, attempt, delay, cause)
        if self._wants("reconnecting"):
            self._emit(ReconnectingEvent(attempt, delay, cause))
        self._timers.schedule(now + delay, Timer.RECONNECT)

    # ------------------------------------------------------------ close() and the end

    def request_close(self, deadline: Optional[float]) -> None:
        """close(): drain until ``deadline`` (monotonic), then close with 1000."""
        self.shutdown.request(deadline)
        if deadline is not None:
            self._timers.schedule(deadline, Timer.CLOSE_DEADLINE)
            # A retry planned before close() keeps its backoff otherwise (60 s in a
            # long outage): close(10) would fail the queue without trying again.
            # Bring it within the deadline as retry_delay does for later retries.
            due = self._timers.when(Timer.RECONNECT)
            if due is not None and self.state is State.RECONNECTING:
                now = self._clock.monotonic()
                sooner = now + self.shutdown.retry_delay(max(0.0, due - now), now)
                if sooner < due:
                    self._timers.schedule(sooner, Timer.RECONNECT)
        self.maybe_close()

    def maybe_close(self) -> None:
        """close() was asked: close now if nothing is left to drain (else later)."""
        if self.stopped.is_set() or not self.shutdown.drained(
            self.has_work(), self._clock.monotonic()
        ):
            return  # still draining (across reconnects); the deadline forces it
        self.close_now()

    def close_now(self) -> None:
        """Drained, or close()'s deadline passed: the closing handshake, or the end."""
        if self.stopped.is_set():
            return
        session = self._host.session
        if session is not None and session.phase is not Phase.CLOSED:
            if session.phase is not Phase.CLOSING:
                now = self._clock.monotonic()
                session.close(1000, "Client disconnect", now, grace=self.shutdown.grace(now))
            return  # the session's Closed event finishes
        self._dialer.attempts.abandon()
        self.finish(None)

    def finish(
        self, reason: Optional[BaseException], cause: Optional[BaseException] = None
    ) -> None:
        """Enter ``closed`` for good: fail what is left, wake every waiter."""
        if self.stopped.is_set():
            return
        if reason is not None and cause is not None and reason is not cause:
            reason.__cause__ = cause
        p = self._p
        session = self._host.session
        self._host.release_socket()
        # Every message not done fails, in order: carried ones (oldest), what
        # the session still held, then the queue. Nothing fails silently.
        left = list(self.carried)
        if session is not None:
            session.abort(1006, "client closed")
            left.extend(_deliveries(session.take_unfinished()))
        self.fatal = reason
        if reason is not None:
            log.warning("client closed: %s", reason)
            self.error(reason)
        p.outbox.stop(reason)  # first: senders blocked for room wake and raise
        left.extend(p.outbox.drain())
        self.carried = []
        self.unsent = len(left)
        p.handoff.fail_left(left, reason)
        self._resolve_refresh(reason or ClientClosed("the client was closed"))
        p.router.flush()  # what was read before the end is still handed over
        p.router.close_all()
        self._timers.cancel_all()
        # CLOSED before stopped is set: a close() waiting on stopped then reads
        # the final state and unsent count.
        self.set_state(State.CLOSED)
        self.stop_for_good()

    def stop_for_good(self) -> None:
        """Refuse later commands and answer the pending ones (idempotent)."""
        # Also the loop's last act (its finally), crash or not: whatever ended
        # it, no flush(), refresh_auth() or posted command waits for ever.
        self.stopped.set()
        closed = ClientClosed("the client is closed")
        if self.fatal is not None:
            closed.__cause__ = self.fatal
        self._p.mailbox.close(closed)
        self.shutdown.release_flush_waiters()
        self._resolve_refresh(closed)

    def _session_timed_out(self, session: Session) -> None:
        """The attempt's deadline passed after the handshake, before ``open``."""
        waiting_for = _waiting_for(session.phase, self._p.authflow)
        if waiting_for is None:
            return  # opened, or already closing: the attempt is over
        timeout = self._dialer.timeout_error(waiting_for)
        log.info("connection attempt: %s", timeout)
        self._timed_out = timeout  # the cause connection_closed reports
        # No closing handshake: a peer that answers nothing would only add the
        # close grace to the time the attempt already took.
        session.abort(1006, "connect timed out")
        self._host.process_events()

    def _resolve_refresh(self, error: Optional[BaseException]) -> None:
        if self._p.authflow is not None:
            self._p.authflow.resolve(error)

    def crashed(self, exc: BaseException) -> None:
        """The loop itself failed (a bug): end, never leave a waiter hanging.

        The reason is a :class:`ClientClosed` (DESIGN §4: every waiter, ``wait_open``
        included, is released with ``ClientClosed`` and the reason chained), not
        the bare ``TetherError`` a final ``AuthError`` or terminal close gives.
        """
        self.finish(ClientClosed(f"I/O loop crashed: {exc!r}"), cause=exc)


def _waiting_for(phase: Phase, flow: Optional[AuthFlow]) -> Optional[str]:
    """What a session not yet open waits for, as a connect timeout names it."""
    if phase is Phase.HELLO:
        return "hello-ok"  # the reply that decides the extension (DESIGN §5)
    if phase is Phase.AUTH:
        if flow is not None and flow.fetching:
            return "the token (get_token())"
        return "auth-ok"
    return None


@dataclasses.dataclass(frozen=True)
class Wiring:
    """The loop's collaborators the lifecycle works with (shared, not owned)."""

    counters: Counters
    outbox: Outbox[Delivery]
    handoff: Handoff
    router: Router
    mailbox: Mailbox
    continuity: Continuity
    authflow: Optional[AuthFlow]


__all__ = ["Host", "Lifecycle", "LoopHooks", "Wiring"]
