"""The I/O loop: the only owner of the socket and the only I/O thread.

One thread runs :meth:`IoLoop._run`: a selector over the socket and a wake-up
socketpair, with a timer heap for backoff and connection deadlines. Everything
a connection means on the wire lives in its sans-I/O
:class:`~tether_sync.session.Session`; the loop moves bytes between it and the
socket (``data_to_send()`` is written once per iteration, never from inside a
handler), hands its events on, and keeps what outlives a connection: the
:class:`~tether_sync.outbox.Outbox`, backoff, the public :class:`State`,
subscriptions (:class:`~tether_sync.routing.Router`) and waiters.

User threads never touch the socket: they put messages in the outbox or post a
typed command in the :class:`~tether_sync.mailbox.Mailbox`, which writes one
byte to the wake pair (PA ``_packet_queue``, KP ``sender.wakeup()``). The
opening handshake is blocking in websocket-client, so each attempt runs it
(:func:`~tether_sync.connector.handshake`) on a short-lived connector thread
that hands the finished socket over with a command; the connector owns the
socket until then and never after.

Fault containment (DESIGN §4): every step of an iteration runs under
:meth:`IoLoop._guard`. An exception while handling one message, timer or
command fails that connection (an ``error`` event, then a reconnect), never the
loop. If the loop itself ends, every waiter is released with ``ClientClosed``.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional

from . import commands as cmd
from .aftermath import GiveUp
from .auth import TokenRefresher
from .authflow import AuthFlow
from .clock import Clock, Deadline
from .connection import Connection
from .delivery import Delivery
from .dialer import Dialer
from .durable import DurableStore
from .events import ErrorEvent, OpenEvent, ReconnectingEvent, StateChangeEvent
from .exceptions import AuthError, ClientClosed, ConnectTimeout, TetherError
from .handoff import Handoff, _deliveries
from .lifecycle import Lifecycle
from .loopconfig import LoopConfig, Timer
from .mailbox import Mailbox
from .outbox import Outbox
from .poller import READ, WRITE, Poller
from .routing import Router
from .session import Closed, Continuity, Phase, Session
from .shutdown import Shutdown
from .state import State, check
from .stats import Counters
from .timers import TimerHeap

log = logging.getLogger("tether_sync")


class IoLoop:
    """The connection engine behind :class:`~tether_sync.TetherClient`.

    Args:
        config: The validated options.
        emit: Hands an event to the dispatcher (only if someone listens).
        wants: Whether anyone listens to an event name (to skip building events).
        clock: Monotonic and wall time.
        rng: Draws backoff delays.
        auth: The token source, or None.
        on_state: Called on the I/O thread after every state change.
    """

    def __init__(
        self,
        config: LoopConfig,
        emit: Callable[[Any], None],
        wants: Callable[[str], bool],
        clock: Clock,
        rng: random.Random,
        auth: Optional[TokenRefresher] = None,
        on_state: Optional[Callable[[State], None]] = None,
    ) -> None:
        self.config = config
        self._emit = emit
        self._wants = wants
        self._clock = clock
        self.wall_time = clock.time  # epoch seconds (the handoff logs token expiry with it)
        self._rng = rng
        self._auth = auth
        self._on_state = on_state
        self._lock = threading.Lock()  # guards starting the thread
        self._poller = Poller()  # the selector and the wake pair: where the loop blocks
        self._mailbox = Mailbox(self._poller.wake)  # what user threads post
        self.post = self._mailbox.post
        queue = config.queue
        self.outbox: Outbox[Delivery] = Outbox(
            queue.max_size if queue else 1000,
            queue.overflow if queue else "reject",
            offline_ok=queue is not None,
            wake=self._poller.wake,
        )
        self._thread: Optional[threading.Thread] = None
        self.stopped = threading.Event()  # set when the loop has ended for good

        # Everything below is touched by the I/O thread only (ints read anywhere).
        self.state = State.IDLE
        self.counters = Counters()
        self.router = Router(self.counters, emit, wants)
        self.handoff = Handoff(self.counters, self.outbox, emit, wants)
        self._timers = TimerHeap()
        self.life = Lifecycle(config, rng)  # backoff and uptime across connections
        self.continuity = Continuity(session_id=uuid.uuid4().hex)
        self.carried: List[Delivery] = []  # unacked messages waiting for the next link
        self._conn: Optional[Connection] = None  # the open connection: session and socket
        self._dialer = Dialer(config, auth, self.post)  # connection attempts, their threads
        self._attempts = self._dialer.attempts
        self._shutdown = Shutdown()  # close() and flush() policy
        self.authflow = AuthFlow(auth, config.protocol, self.post) if auth is not None else None
        self.last_rtt: Optional[float] = None
        self.fatal: Optional[BaseException] = None  # why the client ended, if not by close()
        self.unsent = 0  # messages failed by the final close
        # Which method runs each command type (built once, looked up per command).
        self._handlers: Dict[type, Callable[[Any], None]] = {
            cmd.Connected: self.on_connected,
            cmd.ConnectFailed: self.on_connect_failed,
            cmd.Token: self.on_token,
            cmd.Flush: self.on_flush,
            cmd.Close: self.on_close,
            cmd.Subscribe: self.on_subscribe,
            cmd.Unsubscribe: self.on_unsubscribe,
            cmd.ResumeInbound: self.on_resume_inbound,
            cmd.Refresh: self.on_refresh,
        }

    # ------------------------------------------------------------------ user side

    def start(self) -> None:
        """Start the I/O thread and the first connection attempt (any thread)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="tether-io", daemon=True)
        self._thread.start()

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    def attach_store(self, store: DurableStore, restored: List[Delivery]) -> None:
        """The durable outbox (before start): its session, its seq, its unacked messages."""
        self.handoff.store = store
        self.continuity.session_id = store.session_id
        self.continuity.last_seq = store.last_seq
        self.carried = restored  # resent first (or resolved by hello-ok's acked)
        self.outbox.hold(restored)

    @property
    def buffered_amount(self) -> int:
        """User-space bytes not yet written plus the kernel's unsent bytes (as last read)."""
        conn = self._conn
        return conn.buffered_amount if conn is not None else 0

    @property
    def session(self) -> Optional[Session]:
        """The open connection's session, if any."""
        conn = self._conn
        return conn.session if conn is not None else None

    @property
    def attempt(self) -> int:
        return 0 if self.state is State.OPEN else self.life.backoff.attempt

    @property
    def endpoint(self) -> str:
        """The URL connected to while open, else the one being tried or to be tried next."""
        return self.life.endpoint

    def join(self, timeout: Optional[float]) -> bool:
        """Wait for the loop and connector threads; True if all ended in time."""
        deadline = Deadline(timeout, self._clock)
        me = threading.current_thread()
        if self._thread is not None and self._thread is not me:
            self._thread.join(deadline.remaining())
        alive = self._dialer.join(deadline)
        if self._thread is not None and self._thread is not me and self._thread.is_alive():
            alive.append(self._thread)
        return not [t for t in alive if t is not me]

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._guard(self._connect)
            while not self.stopped.is_set():
                self._select_once()
        except BaseException as exc:  # a bug: never leave the user hanging
            log.exception("tether_sync I/O loop crashed")
            try:
                self._finish(TetherError(f"I/O loop crashed: {exc!r}"), cause=exc)
            except BaseException:
                log.exception("cleaning up after the crash failed too")
        finally:
            self._stop_for_good()
            self._poller.close()

    def _select_once(self) -> None:
        """One iteration: wait, then run only the steps that have something to do.

        A round trip's latency is what this costs between the selector's wake-up
        and the next wait (a woken user thread waits for the GIL until then), so
        idle steps are skipped with a cheap test instead of being called.
        """
        conn = self._conn
        due = self._timers.next_due()
        if conn is not None:
            when = conn.session.next_deadline()
            if when is not None and (due is None or when < due):
                due = when
        timeout = None if due is None else max(0.0, due - self._clock.monotonic())
        tls = conn is not None and conn.link.io.tls and self._reading()
        if tls and conn is not None and conn.link.tls_pending():
            timeout = 0.0  # decrypted bytes already wait inside the SSL object
        if self._mailbox.waiting:
            timeout = 0.0  # commands put back after a failure (no wake byte came for them)
        ready = self._poller.wait(timeout)
        if (ready and ready[0] & READ) or (tls and self._tls_pending()):
            self._guard(self._on_readable)
        if due is not None and self._clock.monotonic() >= due:
            self._guard(self._on_timers)
        if self._mailbox.waiting:
            self._guard(self._drain_commands)
        conn = self._conn
        if conn is not None:
            if len(self.outbox):
                self._guard(self._pump)
            if conn.session.wants_write or conn.link.io.want_write:
                self._guard(self._write)
        if self._shutdown.requested:
            self._guard(self._maybe_close)
        if self._shutdown.flush_waiting:
            self._guard(self._check_flush_waiters)
        conn = self._conn
        if conn is not None:
            io = conn.link.io
            mask = (READ if self._reading() else 0) | (WRITE if io.want_write else 0)
            if io.mask != mask or io.registered != bool(mask):
                self._guard(self._update_interest)

    def _tls_pending(self) -> bool:
        conn = self._conn
        return conn is not None and conn.link.tls_pending()

    def _guard(self, step: Callable[[], None]) -> None:
        """Run one step; an exception costs at most this connection, never the loop."""
        try:
            step()
        except Exception as exc:
            if self.stopped.is_set():
                raise
            log.exception("tether_sync: %s failed; failing the connection", step.__name__)
            err = TetherError(f"internal error in {step.__name__}: {exc!r}")
            err.__cause__ = exc
            self._error(err)
            session = self.session
            if session is not None and session.phase is not Phase.CLOSED:
                session.abort(1011, "internal error")
                self._process_events()
            elif self.state is State.CONNECTING and self.session is None:
                self._retry_or_finish(err)

    def _drain_commands(self) -> None:
        commands = self._mailbox.take()
        handlers = self._handlers
        for i, command in enumerate(commands):
            try:
                handlers[type(command)](command)
            except Exception as exc:
                # This command failed (the connection pays); answer the rest later.
                cmd.refuse(command, exc)
                self._mailbox.put_back(commands[i + 1 :])
                raise
        self._process_events()  # what the commands made the session do

    def _on_timers(self) -> None:
        now = self._clock.monotonic()
        for name in self._timers.pop_due(now):
            timer = Timer(name)
            if timer is Timer.CONNECT_TIMEOUT:
                self._on_connect_timeout()
            elif timer is Timer.RECONNECT:
                if self.state is State.RECONNECTING:
                    self._connect()
            elif timer is Timer.CLOSE_DEADLINE:
                if not self.stopped.is_set():
                    self._close_now()
            elif timer is Timer.LINGER:
                self.outbox.end_linger()  # what arrived meanwhile is pumped below
            elif timer is Timer.KERNEL_POLL and self._conn is not None:
                self._conn.poll_kernel()  # the iteration then re-runs _pump and the flush check
        session = self.session
        if session is not None:
            when = session.next_deadline()
            if when is not None and when <= now:
                session.on_deadline(now)
                self._process_events()

    # ------------------------------------------------------------ state changes

    def _set_state(self, new: State) -> None:
        old = self.state
        if old is new:
            return
        check(old, new)
        self.state = new
        self.outbox.set_open(new is State.OPEN)
        log.debug("state %s -> %s", old.value, new.value)
        if self._on_state is not None:
            self._on_state(new)
        if self._wants("state_change"):
            self._emit(StateChangeEvent(old.value, new.value))
        close, self.handoff.pending_close = self.handoff.pending_close, None
        if close is not None and self._wants("close"):
            self._emit(close)

    def _error(self, exc: BaseException) -> None:
        if self._wants("error"):
            self._emit(ErrorEvent(exc))

    # ------------------------------------------------------------ connecting

    def _connect(self) -> None:
        """Start one connection attempt on a connector thread."""
        self._set_state(State.CONNECTING)
        self._dialer.dial(self.endpoint)  # round robin: _retry_or_finish moved on
        self._timers.schedule(
            self._clock.monotonic() + self.config.connect_timeout, Timer.CONNECT_TIMEOUT
        )

    def on_connected(self, c: cmd.Connected) -> None:
        if not self._attempts.settle(c.attempt):
            c.sock.close()  # a stale attempt, abandoned after a timeout or close()
            return
        self._timers.cancel(Timer.CONNECT_TIMEOUT)
        log.info("connected to %s", self.endpoint)
        flow = self.authflow
        conn = Connection.open(
            c,
            self.endpoint,
            self.config,
            flow,
            self.continuity,
            self._clock,
            self._rng,
            self._process_events,
            self._timers,
            self._poller,
        )
        self._conn = conn
        carried, self.carried = self.carried, []
        force = False
        if flow is not None:
            force, flow.force_next = flow.force_next, False
        now = self._clock.monotonic()
        conn.session.start(now, resend=carried, force_token=force, header_expiry=c.header_expiry)
        self._process_events()

    def on_connect_failed(self, c: cmd.ConnectFailed) -> None:
        if not self._attempts.settle(c.attempt):
            return
        self._timers.cancel(Timer.CONNECT_TIMEOUT)
        log.info("connection to %s failed: %s", self.endpoint, c.error)
        self._attempt_failed(c.error)

    def _on_connect_timeout(self) -> None:
        if not self._attempts.abandon():  # the connector's late answer is now stale
            return
        log.info("connection to %s timed out", self.endpoint)
        self._attempt_failed(ConnectTimeout(f"no handshake within {self.config.connect_timeout}s"))

    def _attempt_failed(self, cause: BaseException) -> None:
        self.handoff.attempt_failed(cause)
        refused, final = self._attempts.refused(cause, self._auth is not None)
        if final is not None:
            self._finish(final, cause=cause)
            return
        if refused:
            assert self.authflow is not None
            self.authflow.refused()
        self._retry_or_finish(cause)

    def opened(self) -> None:
        """The session says the link is usable: subscriptions, then the queue drains."""
        if self.life.opened(self._clock.monotonic()):
            self.counters.reconnects += 1
        self._attempts.refusals = 0
        if self.handoff.store is not None:
            # Rule 4: new numbers above the hello-ok's acked, across processes too.
            self.handoff.store.raise_seq(self.continuity.last_seq)
        self._set_state(State.OPEN)
        if self._wants("open"):
            self._emit(OpenEvent(self.endpoint, self.life.backoff.endpoint))
        session = self.session
        assert session is not None
        for channel in self.router.routes:
            session.subscribe(channel, str(uuid.uuid4()))

    def _retry_or_finish(self, cause: BaseException, terminal: bool = False) -> None:
        """After a failed attempt or a lost link: back off and retry, or give up."""
        self._release_socket()
        now = self._clock.monotonic()
        plan = self.life.retry(cause, terminal, self._shutdown, self._has_work(), now)
        if plan.problem is not None:
            self._error(plan.problem)
        if isinstance(plan, GiveUp):
            self._finish(plan.reason, cause=cause)
            return
        self._set_state(State.RECONNECTING)
        if self._wants("reconnecting"):
            self._emit(ReconnectingEvent(plan.backoff.attempt, plan.delay, cause))
        self._timers.schedule(now + plan.delay, Timer.RECONNECT)

    # ------------------------------------------------------------ reading and writing

    def _reading(self) -> bool:
        return not self.router.holding

    def _on_readable(self) -> None:
        conn = self._conn
        if conn is not None and self._reading():
            conn.readable(self.router)

    def _write(self) -> None:
        """Write what the session has framed (once per iteration, never from a handler)."""
        if self._conn is not None:
            self._conn.write()

    def _update_interest(self) -> None:
        if self._conn is not None:
            self._conn.watch(self._reading())

    def _pump(self) -> None:
        """Move queued messages into the session while under the high-water mark."""
        conn = self._conn
        if conn is not None and conn.session.is_open and self.state is State.OPEN:
            conn.pump(self.outbox, self.handoff)

    # ------------------------------------------------------------ session events

    def _process_events(self) -> None:
        """Hand on the session's events, including those that handling them caused."""
        session = self.session
        while session is not None and session is self.session:
            events = session.events()
            if not events:
                return
            for event in events:
                if type(event) is Closed:
                    self._connection_closed(session, event)
                else:
                    self.handoff.handle(self, session, event)

    def _connection_closed(self, session: Session, event: Closed) -> None:
        """The session is over: last-chance write (accounted), then retry or finish."""
        conn = self._conn
        if conn is not None:  # e.g. our close frame; what it took counts
            conn.last_write(lambda late: self.handoff.handle(self, session, late))
        self._release_socket()
        unfinished = _deliveries(session.take_unfinished())
        now = self._clock.monotonic()
        requested = self._shutdown.requested
        after = self.life.closed(event, unfinished, session.delivered_something, now, requested)
        if after.carried:
            self.carried = after.carried
        self.outbox.give_back(after.give_back)
        self.handoff.connection_closed(event)
        self._retry_or_finish(after.cause, terminal=after.terminal)

    def _release_socket(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release(self.outbox)

    # ------------------------------------------------------------ commands

    def on_flush(self, c: cmd.Flush) -> None:
        self._shutdown.add_flush_waiter(c.done)

    def on_close(self, c: cmd.Close) -> None:
        self.request_close(c.deadline)

    def on_subscribe(self, c: cmd.Subscribe) -> None:
        if self.router.subscribe(c.channel, c.buffer) and self.session is not None:
            self.session.subscribe(c.channel, str(uuid.uuid4()))

    def on_unsubscribe(self, c: cmd.Unsubscribe) -> None:
        if self.router.unsubscribe(c.channel, c.buffer) and self.session is not None:
            self.session.unsubscribe(c.channel, str(uuid.uuid4()))

    def on_resume_inbound(self, c: cmd.ResumeInbound) -> None:
        self.router.resume()
        if self.session is not None:
            self.session.reading_paused = self.router.holding

    def on_refresh(self, c: cmd.Refresh) -> None:
        """refresh_auth(): rotate now; the waiter hears once the server answered."""
        if self.authflow is None:
            c.waiter(AuthError("no auth configured"))
        else:
            self.authflow.refresh(c.waiter, self.session, self._clock.monotonic())

    def on_token(self, c: cmd.Token) -> None:
        if self.authflow is not None:
            self.authflow.answer(c, self.session, self._clock.monotonic())

    # ------------------------------------------------------------ waiters, close

    def _has_work(self) -> bool:
        return bool(len(self.outbox) or self.outbox.taken)

    def _check_flush_waiters(self) -> None:
        if not self._has_work() and (self._conn is None or self._conn.drained()):
            self._shutdown.release_flush_waiters()

    def request_close(self, deadline: Optional[float]) -> None:
        """close(): drain until ``deadline`` (monotonic), then close with 1000."""
        self._shutdown.request(deadline)
        if deadline is not None:
            self._timers.schedule(deadline, Timer.CLOSE_DEADLINE)
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.stopped.is_set() or not self._shutdown.drained(
            self._has_work(), self._clock.monotonic()
        ):
            return  # still draining (across reconnects); the deadline forces it
        self._close_now()

    def _close_now(self) -> None:
        session = self.session
        if session is not None and session.phase is not Phase.CLOSED:
            if session.phase is not Phase.CLOSING:
                grace = self._shutdown.grace(self._clock.monotonic())
                session.close(1000, "Client disconnect", self._clock.monotonic(), grace=grace)
            return  # the session's Closed event finishes
        self._attempts.abandon()
        self._finish(None)

    def _finish(
        self, reason: Optional[BaseException], cause: Optional[BaseException] = None
    ) -> None:
        """Enter ``closed`` for good: fail what is left, wake every waiter."""
        if self.stopped.is_set():
            return
        if reason is not None and cause is not None and reason is not cause:
            reason.__cause__ = cause
        session = self.session
        self._release_socket()
        left = list(self.carried)
        if session is not None:
            session.abort(1006, "client closed")
            left.extend(_deliveries(session.take_unfinished()))
        self.fatal = reason
        if reason is not None:
            log.warning("client closed: %s", reason)
            self._error(reason)
        self.outbox.stop(reason)
        left.extend(self.outbox.drain())
        self.carried = []
        self.unsent = len(left)
        self.handoff.fail_left(left, reason)
        self._resolve_refresh(reason or ClientClosed("the client was closed"))
        self.router.close_all()
        self._timers.cancel_all()
        if self.state is not State.CLOSED:
            self._set_state(State.CLOSED)
        self._stop_for_good()

    def _stop_for_good(self) -> None:
        """Refuse later commands and answer the pending ones (idempotent)."""
        self.stopped.set()
        closed = ClientClosed("the client is closed")
        if self.fatal is not None:
            closed.__cause__ = self.fatal
        self._mailbox.close(closed)
        self._shutdown.release_flush_waiters()
        self._resolve_refresh(closed)

    def _resolve_refresh(self, error: Optional[BaseException]) -> None:
        if self.authflow is not None:
            self.authflow.resolve(error)

    def finish_unstarted(self) -> None:
        """close() of a client whose loop never ran: the caller's thread does it."""
        assert self._thread is None
        self._finish(None)
        self._poller.close()


__all__ = ["IoLoop", "LoopConfig", "Timer"]
