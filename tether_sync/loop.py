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
from . import transport
from .aftermath import GiveUp, after_close, plan_retry
from .auth import TokenRefresher
from .authflow import AuthFlow
from .backoff import Backoff
from .clock import Clock, Deadline
from .connection import Connection
from .connector import Attempts, handshake
from .delivery import Delivery
from .durable import DurableStore
from .events import ErrorEvent, OpenEvent, ReconnectingEvent, StateChangeEvent
from .exceptions import AuthError, ClientClosed, ConnectTimeout, TetherError
from .handoff import Handoff, _deliveries
from .loopconfig import LoopConfig, Timer, session_config
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

KERNEL_POLL = 0.005  # seconds between SIOCOUTQ checks where no event can tell
# After a write, the kernel's unsent bytes are re-read shortly (for buffered_amount)
# only once this much may sit there: a trickle drains within microseconds, and an
# ioctl after each round trip would cost more than the round trip's own Python.
KERNEL_POLL_BYTES = 16 * 1024


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
        # Connector threads still running, with the websocket-client object each
        # one handshakes with (so close() can abort it). Connectors remove
        # themselves; dict operations are atomic, so no lock is needed.
        self._connectors: Dict[threading.Thread, Any] = {}
        self.stopped = threading.Event()  # set when the loop has ended for good

        # Everything below is touched by the I/O thread only (ints read anywhere).
        self.state = State.IDLE
        self.counters = Counters()
        self.router = Router(self.counters, emit, wants)
        self.handoff = Handoff(self.counters, self.outbox, emit, wants)
        self._timers = TimerHeap()
        rc = config.reconnect
        self._backoff = Backoff(
            rc.base_delay if rc else 1.0,
            rc.max_delay if rc else 1.0,
            rc.max_attempts if rc else 0,
            endpoints=len(config.urls),
        )
        self.next_delay: Optional[float] = None
        self._continuity = Continuity(session_id=uuid.uuid4().hex)
        self._carried: List[Delivery] = []  # unacked messages waiting for the next link
        self._conn: Optional[Connection] = None  # the open connection: session and socket
        self._attempts = Attempts()  # the attempt in progress, its handshaker, refusals
        self._opened_at: Optional[float] = None
        self._opened_once = False
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

    @property
    def auth_expires_at(self) -> Optional[float]:
        return self.authflow.expires_at if self.authflow is not None else None

    def wall_time(self) -> float:
        return self._clock.time()

    @property
    def in_flight(self) -> int:
        return self.outbox.taken

    @property
    def queue_depth(self) -> int:
        return len(self.outbox)

    @property
    def carried(self) -> List[Delivery]:
        """Unacked messages waiting for the next link (read-only view for stats)."""
        return self._carried

    def attach_store(self, store: DurableStore, restored: List[Delivery]) -> None:
        """The durable outbox (before start): its session, its seq, its unacked messages."""
        self.handoff.store = store
        self._continuity.session_id = store.session_id
        self._continuity.last_seq = store.last_seq
        self._carried = restored  # resent first (or resolved by hello-ok's acked)
        self.outbox.hold(restored)

    @property
    def resent(self) -> int:
        return self._continuity.resent

    @property
    def session_id(self) -> str:
        return self._continuity.session_id

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
        return 0 if self.state is State.OPEN else self._backoff.attempt

    @property
    def endpoint(self) -> str:
        """The URL connected to while open, else the one being tried or to be tried next."""
        return self.config.urls[self._backoff.endpoint]

    def join(self, timeout: Optional[float]) -> bool:
        """Wait for the loop and connector threads; True if all ended in time."""
        deadline = Deadline(timeout, self._clock)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(deadline.remaining())
        # A connector may be between its TCP connect and the moment websocket-client
        # publishes the socket, where one abort() finds nothing to shut down: abort
        # again every few milliseconds until it ends or the deadline passes.
        while self._connectors:
            for thread, ws in list(self._connectors.items()):
                transport.abort(ws)
                remaining = deadline.remaining()
                thread.join(0.01 if remaining is None else min(0.01, remaining))
            if deadline.expired:
                break
        threads = [*self._connectors, *([self._thread] if self._thread else [])]
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())

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
                # Also re-runs _pump and the flush check (the wake-up alone does).
                if self._conn.link.read_kernel():
                    self._timers.schedule(now + KERNEL_POLL, Timer.KERNEL_POLL)
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
        attempt, ws = self._attempts.begin()
        cfg = self.config
        url = self.endpoint  # round robin: _retry_or_finish moved on to the next one
        auth = self._auth

        def connector() -> None:
            try:
                self.post(handshake(attempt, ws, url, cfg, auth))
            finally:
                self._connectors.pop(threading.current_thread(), None)

        thread = threading.Thread(target=connector, name="tether-connect", daemon=True)
        self._connectors[thread] = ws
        thread.start()
        self._timers.schedule(self._clock.monotonic() + cfg.connect_timeout, Timer.CONNECT_TIMEOUT)

    def on_connected(self, c: cmd.Connected) -> None:
        if not self._attempts.settle(c.attempt):
            c.sock.close()  # a stale attempt, abandoned after a timeout or close()
            return
        self._timers.cancel(Timer.CONNECT_TIMEOUT)
        link = transport.Link(c.sock, self.endpoint, self.config.backpressure.high_water_mark)
        self._poller.watch(link, READ)
        log.info("connected to %s", self.endpoint)
        now = self._clock.monotonic()
        flow = self.authflow
        auth = flow.auth.options if flow is not None else None
        session = Session(
            session_config(self.config, auth, flow is not None and flow.rotates_in_band, c.deflate),
            self._continuity,
            now,
            wall_offset=self._clock.time() - now,
            rng=self._rng,
        )
        self._conn = Connection(session, link, self._clock, self._process_events, self._wrote)
        carried, self._carried = self._carried, []
        force = False
        if flow is not None:
            force, flow.force_next = flow.force_next, False
        session.start(now, resend=carried, force_token=force, header_expiry=c.header_expiry)
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
        if self._opened_once:
            self.counters.reconnects += 1
        self._opened_once = True
        self._opened_at = self._clock.monotonic()
        self.next_delay = None
        self._attempts.refusals = 0
        if self.handoff.store is not None:
            # Rule 4: new numbers above the hello-ok's acked, across processes too.
            self.handoff.store.raise_seq(self._continuity.last_seq)
        self._set_state(State.OPEN)
        if self._wants("open"):
            self._emit(OpenEvent(self.endpoint, self._backoff.endpoint))
        session = self.session
        assert session is not None
        for channel in self.router.routes:
            session.subscribe(channel, str(uuid.uuid4()))

    def _retry_or_finish(self, cause: BaseException, terminal: bool = False) -> None:
        """After a failed attempt or a lost link: back off and retry, or give up."""
        self._release_socket()
        now = self._clock.monotonic()
        plan = plan_retry(
            cause,
            terminal,
            self._shutdown.due(self._has_work(), now),
            self.config.reconnect,
            self._backoff,
            self._rng,
            now,
        )
        if plan.problem is not None:  # a misbehaving policy costs a log line, never the loop
            log.warning("%s", plan.problem, exc_info=plan.problem.__cause__)
            self._error(plan.problem)
        if isinstance(plan, GiveUp):
            self._finish(plan.reason, cause=cause)
            return
        self._backoff = plan.backoff
        delay = self._shutdown.retry_delay(plan.delay, self._clock.monotonic())
        self.next_delay = delay
        self._set_state(State.RECONNECTING)
        attempt, url = self._backoff.attempt, self.endpoint
        log.info("reconnecting to %s: attempt %d in %.3fs (%s)", url, attempt, delay, cause)
        if self._wants("reconnecting"):
            self._emit(ReconnectingEvent(attempt, delay, cause))
        self._timers.schedule(self._clock.monotonic() + delay, Timer.RECONNECT)

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

    def _wrote(self) -> None:
        # buffered_amount reads kernel_unsent (user threads may not ioctl the
        # socket): refresh it shortly once enough may sit there (KERNEL_POLL_BYTES).
        conn = self._conn
        if (
            conn is not None
            and (conn.link.flow.kernel_bound >= KERNEL_POLL_BYTES or conn.link.kernel_unsent)
            and not self._timers.scheduled(Timer.KERNEL_POLL)
        ):
            self._timers.schedule(self._clock.monotonic() + KERNEL_POLL, Timer.KERNEL_POLL)

    def _update_interest(self) -> None:
        """Ask the selector for exactly what we can act on (STYLE §3.4)."""
        if self._conn is not None:
            link = self._conn.link
            mask = (READ if self._reading() else 0) | (WRITE if link.io.want_write else 0)
            self._poller.watch(link, mask)

    def _pump(self) -> None:
        """Move queued messages into the session while under the high-water mark."""
        conn = self._conn
        if conn is None or not conn.session.is_open or self.state is not State.OPEN:
            return
        linger = self._linger_later if self.outbox.linger > 0 else None
        conn.pump(self.outbox, self.handoff, self._poll_kernel_later, linger)

    def _linger_later(self) -> None:
        if not self._timers.scheduled(Timer.LINGER):
            self._timers.schedule(self._clock.monotonic() + self.outbox.linger, Timer.LINGER)

    def _poll_kernel_later(self) -> None:
        self._timers.schedule(self._clock.monotonic() + 4 * KERNEL_POLL, Timer.KERNEL_POLL)

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
        after = after_close(
            event,
            _deliveries(session.take_unfinished()),
            self._opened_at,
            session.delivered_something,
            self._clock.monotonic(),
            self.config.reconnect,
            self._shutdown.requested,
        )
        if after.carried:
            self._carried = after.carried
        self.outbox.give_back(after.give_back)
        if after.reset_backoff:
            self._backoff = self._backoff.reset()
        self._opened_at = None
        self.handoff.connection_closed(event)
        log.info("connection closed: %d %s (clean=%s)", event.code, event.reason, event.was_clean)
        self._retry_or_finish(after.cause, terminal=after.terminal)

    def _release_socket(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._timers.cancel(Timer.KERNEL_POLL)
        if self._timers.scheduled(Timer.LINGER):
            self._timers.cancel(Timer.LINGER)
            self.outbox.end_linger()  # puts must wake the loop again
        self._poller.forget(conn.link)
        conn.link.close()

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
        if self._has_work():
            return
        if self._conn is not None and self._conn.link.read_kernel() > 0:
            self._timers.schedule(self._clock.monotonic() + KERNEL_POLL, Timer.KERNEL_POLL)
            return
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
        left = list(self._carried)
        if session is not None:
            session.abort(1006, "client closed")
            left.extend(_deliveries(session.take_unfinished()))
        self.fatal = reason
        if reason is not None:
            log.warning("client closed: %s", reason)
            self._error(reason)
        self.outbox.stop(reason)
        left.extend(self.outbox.drain())
        self._carried = []
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
