"""The I/O loop: the only owner of the socket and the only I/O thread.

One thread runs :meth:`IoLoop._run`: it blocks in the
:class:`~tether_sync.engine.poller.Poller` (a selector over the socket and a wake-up
socketpair) until the socket is ready, a user thread woke it, or the next
deadline of the timer heap or the session comes. Everything a connection means
on the wire lives in its sans-I/O :class:`~tether_sync.protocol.session.Session`, and
the bytes between it and the socket in the open
:class:`~tether_sync.engine.connection.Connection`; the loop feeds it, writes what it
framed once per iteration (never from inside a handler), and hands its events
on. What outlives a connection (State, attempts, backoff, close() and the end)
is the :class:`~tether_sync.engine.lifecycle.Lifecycle`'s.

User threads put messages in the
:class:`~tether_sync.engine.outbox.Outbox` or post a typed command in the
:class:`~tether_sync.engine.commands.Mailbox`, which wakes the poller with one byte
(PA ``_packet_queue``, KP ``sender.wakeup()``); they reach the loop only through
:class:`~tether_sync.engine.Engine`.

The turn (issue 22, round trips): the socket and the open connection have one
user at a time, the holder of :attr:`IoLoop.turn`. The I/O thread holds it
except while it waits in its selector. A ``send()`` after a pause (a round
trip's request) that finds the turn free pumps and writes from its own thread
(:meth:`IoLoop.write_now`), as this thread would: no hand-off, which costs
about 50 us on a 2-core machine (``benchmarks/bench_rtt_breakdown.py``). Only
that step runs there (the pump, the write, the events they cause); reads,
timers, commands and the selector registration stay with the I/O thread, which
is woken for whatever the step leaves. One holder at a time means an SSL
object is never used by two threads at once, so TLS takes the same path.

Connection attempts run on connector threads
(:class:`~tether_sync.engine.attempts.Dialer`) that hand the socket over with a
command.

Three tables say what the loop does, each built once in ``__init__`` and looked
up by type: one for commands (command class -> handler), one for the loop's own
timers (:class:`~tether_sync.engine.config.Timer` -> handler), one for session
events (event class -> handler). A handler is a method of the narrowest part
that can act on it (the lifecycle, the router, the hand-off, the auth flow);
no part is handed the loop itself. The parts reach back only through what they
were given: the lifecycle through four hooks
(:class:`~tether_sync.engine.lifecycle.LoopHooks`: the open session, attach and
release a socket, hand on events), a connection through the ``process``
callable (the loop's event step).

Fault containment (DESIGN §4): every step of an iteration runs under
:meth:`IoLoop._guard`. An exception while handling one message, timer or
command fails that connection (an ``error`` event, then a reconnect), never the
loop. If the loop itself ends, every waiter is released with ``ClientClosed``.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional

from .. import logfields
from ..clock import Clock, Deadline
from ..delivery import Delivery
from ..durable import DurableStore
from ..exceptions import AuthError, TetherError
from ..protocol import session as s
from ..protocol.session import Closed, Continuity, Phase, Session
from ..state import State
from ..stats import Counters
from . import commands as cmd
from .attempts import Dialer
from .auth import AuthFlow, TokenRefresher
from .commands import Mailbox
from .config import LoopConfig, Timer
from .connection import Connection, Parts
from .lifecycle import Lifecycle, LoopHooks, Wiring
from .outbox import Outbox
from .poller import READ, WRITE, Poller
from .routing import Router
from .session_events import Handoff
from .timers import TimerHeap

log = logging.getLogger("tether_sync")


def _mine(lock: Any) -> bool:
    """Whether the calling thread holds ``lock``, an RLock.

    ``_is_owned`` is the C RLock's (CPython 3.2 on; ``threading.Condition``
    uses it), not in the typing stubs.
    """
    return bool(lock._is_owned())


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
        self._clock = clock
        self._lock = threading.Lock()  # guards starting the thread
        # The turn: who may touch the socket and the connection's state right now.
        # The I/O thread holds it except while it waits in the selector; a sender
        # that finds it free writes its message itself (write_now). One holder at
        # a time, so the socket (TLS included) still has one user at a time.
        # An RLock, never taken twice by one thread, only for _mine(): a caller
        # asks the lock whether it holds it (see write_now).
        self.turn = threading.RLock()
        # The handshake between a consumer waiting on the socket (read_now) and
        # the I/O thread wanting the turn back (see _select_once); plain flags,
        # each written by one side and read by the other.
        self._reading = False
        self._want_turn = False
        # While the I/O thread waits in the selector: when it will wake by itself
        # (-inf otherwise: it is running, and looks at everything before it waits).
        self._asleep_until = -math.inf
        self._thread: Optional[threading.Thread] = None
        self.stopped = threading.Event()  # set when the loop has ended for good
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
        # This client's log fields (DESIGN §8): the I/O thread binds them; records
        # of the outbox (a send() that waits) find them through its attribute.
        self.log_context = logfields.Context(
            lambda: (self.life.endpoint, self.attempt, self.counters.last_cause)
        )
        setattr(self.outbox, logfields.LOG_CONTEXT, self.log_context)
        setattr(self, logfields.LOG_CONTEXT, self.log_context)  # records of write_now()
        # Everything below is touched by the I/O thread only (ints read anywhere).
        # Built leaves first: each part gets the parts it needs, never the loop;
        # the Lifecycle gets them as a Wiring, a connection as Parts.
        self.counters = Counters()
        self.router = Router(self.counters, emit, wants)
        self.handoff = Handoff(self.counters, self.outbox, emit, wants)
        self._timers = TimerHeap()
        self.continuity = Continuity(session_id=uuid.uuid4().hex)
        self.authflow = AuthFlow(auth, config.protocol, self.post) if auth is not None else None
        self._conn: Optional[Connection] = None  # the open connection: session and socket
        self._dialer = Dialer(config, auth, self.post, self._timers, clock)
        wiring = Wiring(
            self.counters,
            self.outbox,
            self.handoff,
            self.router,
            self._mailbox,
            self.continuity,
            self.authflow,
        )
        # The lifecycle reaches the loop only through these four (its Host).
        hooks = LoopHooks(
            lambda: self.session, self.attach, self.release_socket, self.process_events
        )
        self.life = Lifecycle(
            config,
            hooks,
            clock,
            rng,
            self._timers,
            self._dialer,
            wiring,
            emit,
            wants,
            on_state,
            self.stopped,
        )
        self._parts = Parts(  # what each connection is made with
            config,
            self.authflow,
            self.continuity,
            clock,
            rng,
            self.process_events,
            self._timers,
            self._poller,
            self.counters,
        )
        life = self.life
        # Which method runs each command type (built once, looked up per command).
        # A lambda adapts a command to a part that takes plain values.
        self._handlers: Dict[type, Callable[[Any], None]] = {
            cmd.Connected: life.on_connected,
            cmd.ConnectFailed: life.on_connect_failed,
            cmd.Token: self._on_auth,
            cmd.Refresh: self._on_auth,
            cmd.Flush: lambda c: life.shutdown.add_flush_waiter(c.done),
            cmd.Close: lambda c: life.request_close(c.deadline),
            cmd.Subscribe: self._on_subscription,
            cmd.Unsubscribe: self._on_subscription,
            cmd.ResumeInbound: self._on_subscription,
        }
        # What each of the loop's timers does.
        self._on_timer: Dict[Timer, Callable[[], object]] = {
            Timer.CONNECT_TIMEOUT: life.on_connect_timeout,
            Timer.RECONNECT: life.on_reconnect_timer,
            Timer.CLOSE_DEADLINE: life.close_now,
            Timer.LINGER: self.outbox.end_linger,  # what arrived meanwhile is pumped next
            Timer.KERNEL_POLL: self._poll_kernel,
        }
        # What each session event means, and which part owns that (see
        # process_events). Each handler is a method of the narrowest part that
        # can act on it: the hand-off to the application (Handoff), the inbound
        # routing (Router), what outlives the link (Lifecycle). Only Opened and
        # Closed need the connection itself, so only they are the loop's.
        handoff, router = self.handoff, self.router
        self._on_event: Dict[type, Callable[[Any], None]] = {
            s.Received: router.received,  # collected; _on_readable hands them over
            s.Written: handoff.written,
            s.Acked: handoff.acked,
            s.Refused: handoff.refused,
            s.RoundTrip: handoff.round_trip,
            s.Problem: handoff.problem,
            s.Recovery: handoff.recovery,
            s.TokenNeeded: life.token_needed,
            s.AuthAccepted: life.auth_accepted,
            s.AuthTrouble: life.auth_trouble,
            s.Opened: self._on_opened,
            s.Closed: self._on_closed,
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
    def state(self) -> State:
        return self.life.state

    def attach_store(self, store: DurableStore, restored: List[Delivery]) -> None:
        """The durable outbox (before start): its session, its seq, its unacked messages."""
        self.handoff.store = store
        self.continuity.session_id = store.session_id
        self.continuity.last_seq = store.last_seq
        self.life.carried = restored  # resent first (or resolved by hello-ok's acked)
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
        return 0 if self.life.state is State.OPEN else self.life.backoff.attempt

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

    def finish_unstarted(self) -> None:
        """close() of a client whose loop never ran: the caller's thread does it."""
        assert self._thread is None
        self.life.finish(None)
        self._poller.close()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        # Every record this thread logs carries the client's fields (DESIGN §8).
        logfields.bind(self.log_context)
        self.turn.acquire()
        try:
            self._guard(self.life.connect)
            while not self.stopped.is_set():
                self._select_once()
        except BaseException as exc:  # a bug: never leave the user hanging
            log.exception("tether_sync I/O loop crashed")
            try:
                self.life.crashed(exc)
            except BaseException:
                log.exception("cleaning up after the crash failed too")
        finally:
            try:
                self.life.stop_for_good()
                self._poller.close()
            finally:
                self.turn.release()

    def _select_once(self) -> None:
        """One iteration: wait, then run only the steps that have something to do.

        A round trip's latency is what this costs between the selector's wake-up
        and the next wait (a woken user thread waits for the GIL until then), so
        idle steps are skipped with a cheap test instead of being called.

        The order of the steps is deliberate:

        1. read: what arrived in time counts before a deadline judges it (a pong,
           or any whole message, read now keeps the heartbeat's pong deadline
           from closing the link), and acks read now free room before the pump;
        2. timers, the loop's and the session's;
        3. commands (a Close, a Subscribe, a handed-over socket);
        4. pump the queue into the session, then write: everything the steps
           above framed (acks, pongs, pings, messages) goes out in one write per
           iteration, never from inside a handler;
        5. close() and flush() checks, which need this iteration's writes done;
        6. the selector registration, last, from what the steps left: reading
           unless inbound is held, writing only while framed bytes wait.
        """
        conn = self._conn
        due = self._timers.next_due()
        if conn is not None:
            when = conn.session.next_deadline()
            if when is not None and (due is None or when < due):
                due = when
        timeout = None if due is None else max(0.0, due - self._clock.monotonic())
        # TLS: the SSL object may hold decrypted bytes that the selector cannot
        # see: check it before sleeping, or they wait for the next packet
        # (STYLE §3.4). Not while inbound is held: nothing would read them.
        tls = conn is not None and conn.link.io.tls and not self.router.held
        if tls and conn is not None and conn.link.tls_pending():
            timeout = 0.0  # decrypted bytes already wait inside the SSL object
        if self._mailbox.waiting:
            timeout = 0.0  # commands put back after a failure (no wake byte came for them)
        if conn is not None and conn.session.wants_write and not conn.link.io.want_write:
            # A step after this iteration's write framed bytes (close() framing the
            # close frame once the last ack came): write them now, not after a
            # timer (without this, close() waited out the 1 s close grace).
            timeout = 0.0
        self._asleep_until = math.inf if due is None else due
        self.turn.release()  # a sender may write while this thread waits
        try:
            ready = self._poller.wait(timeout)
        finally:
            if not self.turn.acquire(False):
                # Set before _reading is read, as read_now sets _reading before
                # it reads _want_turn: either it does not wait on the socket, or
                # the byte below ends its wait (its poll watches the wake pair).
                self._want_turn = True
                if self._reading:
                    self._poller.nudge()
                self.turn.acquire()
                self._want_turn = False
            self._asleep_until = -math.inf
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
        shutdown = self.life.shutdown
        if shutdown.requested:
            self._guard(self.life.maybe_close)
        if shutdown.flush_waiters:
            self._guard(self._check_flush_waiters)
        conn = self._conn
        if conn is not None:
            io = conn.link.io
            mask = (0 if self.router.held else READ) | (WRITE if io.want_write else 0)
            if io.mask != mask or io.registered != bool(mask):
                self._guard(self._update_interest)

    def _caller_step(self, step: Callable[[], None]) -> None:
        """Run one loop step on a user thread, under the turn (write_now, read_now).

        As :meth:`_guard`; and if the step is interrupted (a ``KeyboardInterrupt``
        on the main thread, which the I/O thread never gets), the connection's
        state may be half-updated: it fails the ordinary way, so its unfinished
        messages are carried to the next one, then the interruption goes on.
        """
        try:
            self._guard(step)
        except BaseException:
            session = self.session
            if session is not None and session.phase is not Phase.CLOSED:
                try:
                    session.abort(1011, "interrupted")
                    self.process_events()
                except Exception:
                    log.exception("tether_sync: failing an interrupted connection failed")
            raise

    def write_now(self) -> None:
        """Write what the outbox holds from the caller's thread if it is this one's turn.

        Called by ``send()`` after a put that did not wake the I/O thread. If the
        turn is free (the I/O thread waits in its selector), the caller pumps and
        writes as the I/O thread would, under the turn; otherwise, and for
        whatever is left, it wakes the I/O thread.
        """
        turn = self.turn
        if _mine(turn):
            # Already this thread's turn (a send() from code run under it, e.g. a
            # dispatcher that runs callbacks inline): never nest a step in a step.
            self._poller.wake()
            return
        wake = True  # also when the turn is taken: the I/O thread then writes
        try:
            if not turn.acquire(False):
                return
            conn = self._conn
            until = self._asleep_until  # the I/O thread is in its selector until then
            if conn is not None and not self.stopped.is_set():
                self._caller_step(self._pump)
                if self._conn is conn:
                    wake = self._leftover_work(conn, until)
        finally:
            # Asked of the lock, not of acquire()'s result: a Ctrl-C (a signal
            # handler's exception, raised as the call returns) can lose that
            # result but not the lock, which the I/O thread would then wait for
            # forever: no reads, no heartbeat, close() timing out.
            if _mine(turn):
                turn.release()
            if wake:  # in the finally: an interrupted step leaves work (a reconnect)
                self._poller.wake()

    def _leftover_work(self, conn: Connection, until: float) -> bool:
        """Whether a caller's step (write_now, read_now) must wake the I/O thread.

        Only for what the I/O thread must do that it would not do before its
        own time (``until``: the deadline its selector waits for): what the
        kernel did not take, what flow control held back, decrypted TLS bytes
        its selector cannot see, an earlier deadline, a ``close()`` or
        ``flush()`` waiting. Called under the turn.
        """
        session = conn.session
        link = conn.link
        due = self._timers.next_due()
        when = session.next_deadline()
        return bool(
            len(self.outbox)
            or session.wants_write
            or link.io.want_write
            or (link.io.tls and link.tls_pending())
            or self.life.shutdown.requested
            or self.life.shutdown.flush_waiters
            or (due is not None and due < until)
            or (when is not None and when < until)
        )

    def read_now(self, timeout: Optional[float], ready: Callable[[], bool]) -> bool:
        """Wait for the socket and read it on the caller's thread, if it is this one's turn.

        Called by a consumer about to block in ``Subscription.get()`` (through
        its buffer). If the turn is free (the I/O thread waits in its selector)
        and the link is open with nothing to write, the caller takes the socket
        out of the I/O thread's selector, waits for it itself (no longer than
        ``timeout``, nor past the I/O thread's own next deadline, and only until
        another thread wakes the I/O thread), reads and routes what came, as
        the I/O thread would, and puts the socket back. The reply then reaches
        the caller with no thread hand-off, as with websocket-client.

        ``ready()`` says whether the caller's buffer has an item (or is closed)
        already: asked once the turn is held, when nothing can be pushed to it
        behind the caller's back (an item pushed between the caller's own check
        and the turn would otherwise wait until ``timeout``).

        Returns:
            True if it read, or the buffer is ready (the caller looks at its
            buffer again); False if it could not take the turn or nothing came:
            the caller then blocks as usual and the I/O thread carries on.
        """
        if not self._poller.can_wait_socket:
            # No poll() (Windows): the caller could not wait on the socket, so it
            # must not take it out of the selector (that selector is not safe to
            # change while the I/O thread waits in it, and it cost two changes
            # per get() for nothing).
            return False
        turn = self.turn
        if _mine(turn):  # as in write_now: never nest a step in a step
            return False
        read = False
        wake = False
        try:
            if not turn.acquire(False):
                return False
            conn = self._conn
            until = self._asleep_until
            if (
                conn is None
                or self.stopped.is_set()
                or self.router.held
                or conn.link.io.want_write
                or conn.session.wants_write
                or not conn.session.is_open
                or self._mailbox.waiting
                or len(self.outbox)
            ):
                return False
            now = self._clock.monotonic()
            wait = until - now
            if timeout is not None:
                wait = min(wait, timeout)
            if wait <= 0:
                return False
            if ready():
                return True  # pushed before this thread held the turn
            link = conn.link
            # Everything from the flag on is inside the try: a Ctrl-C between
            # two of these lines (right after the socket left the selector, say)
            # must still put the socket back and lower the flag, or the I/O
            # thread, with no deadline to wake it, never reads it again.
            try:
                self._reading = True
                if self._want_turn:  # the I/O thread is waiting for the turn: give it back
                    return False
                self._poller.watch(link, 0)  # the I/O thread's epoll no longer wakes for it
                if link.io.tls and link.tls_pending():
                    # Decrypted bytes already wait in the SSL object, which the
                    # socket's readiness does not show (STYLE §3.4): read them.
                    readable, woken = True, False
                else:
                    readable, woken = self._poller.wait_socket(link, wait)
                if readable and not woken:
                    wake = True  # until the step is done (an interruption leaves work)
                    self._caller_step(self._on_readable)
                    read = True
                    conn = self._conn
                    if conn is not None and conn.session.wants_write:
                        self._caller_step(self._write)  # e.g. a pong or acks the read made
            finally:
                self._reading = False
                conn = self._conn
                if conn is not None and conn.link is link:
                    conn.watch(not self.router.held)
            if conn is None or conn.link is not link:
                wake = True  # the read ended the connection: the I/O thread retries
            else:
                wake = self._leftover_work(conn, until)
        finally:
            if _mine(turn):  # not acquire()'s result: see write_now
                turn.release()
            if wake:  # in the finally: an interrupted step leaves work (a reconnect)
                self._poller.wake()
        return read

    def _tls_pending(self) -> bool:
        conn = self._conn
        return conn is not None and conn.link.tls_pending()

    def _guard(self, step: Callable[[], None]) -> None:
        """Run one step; an exception costs at most this connection, never the loop."""
        try:
            step()
        except Exception as exc:
            if self.stopped.is_set():
                raise  # the end itself failed: _run's handler releases the waiters
            log.exception("tether_sync: %s failed; failing the connection", step.__name__)
            err = TetherError(f"internal error in {step.__name__}: {exc!r}")
            err.__cause__ = exc
            self.life.error(err)
            session = self.session
            if session is not None and session.phase is not Phase.CLOSED:
                # Fail the link the ordinary way: its Closed event makes the
                # lifecycle carry the unacked messages and retry.
                session.abort(1011, "internal error")
                self.process_events()
            elif session is None and (
                self.life.state is State.CONNECTING
                or (
                    self.life.state is State.RECONNECTING
                    and not self._timers.scheduled(Timer.RECONNECT)
                )
            ):
                # No session to fail (a step between attempts, e.g. the reconnect
                # timer's): count it as a failed attempt, which retries or gives
                # up. Without this a failing reconnect step left no retry planned,
                # and the client stayed in reconnecting for good.
                self.life.retry_or_finish(err)

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
            finally:
                if isinstance(command, (cmd.Subscribe, cmd.Unsubscribe)):
                    self.outbox.command_ran()  # client.py held the queue for it
        self.process_events()  # what the commands made the session do

    def _on_timers(self) -> None:
        now = self._clock.monotonic()
        # The loop's timers first (e.g. the close deadline), then the session's
        # own deadlines (heartbeat, auth), which the session keeps itself.
        for name in self._timers.pop_due(now):
            self._on_timer[Timer(name)]()
        session = self.session
        if session is not None:
            when = session.next_deadline()
            if when is not None and when <= now:
                session.on_deadline(now)
                self.process_events()

    def _poll_kernel(self) -> None:
        # No event reports the kernel's send queue draining: a timer re-reads it.
        if self._conn is not None:
            self._conn.poll_kernel()  # the iteration then re-runs _pump and the flush check

    def _on_subscription(self, c: Any) -> None:
        self.router.command(c, self.session)

    def _on_auth(self, c: Any) -> None:
        # Token (the token thread's answer) and Refresh (refresh_auth()); without
        # auth there is no token thread, so only a Refresh can come: refuse it.
        if self.authflow is not None:
            self.authflow.command(c, self.session, self._clock.monotonic())
        elif isinstance(c, cmd.Refresh):
            c.waiter(AuthError("no auth configured"))

    # ------------------------------------------------------------ the connection

    def attach(self, c: cmd.Connected) -> Session:
        """A connector handed a socket over: the connection for it (a Host hook)."""
        self._conn = conn = Connection.open(c, self.life.endpoint, self._parts)
        return conn.session

    def release_socket(self) -> None:
        """Drop the connection, if any (a Host hook).

        From here on ``self._conn`` is None: process_events() stops handing on
        the released session's events (it checks after each batch).
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release(self.outbox)

    def _on_readable(self) -> None:
        conn = self._conn
        router = self.router
        if conn is None or router.held:
            return
        conn.readable()  # parses every whole frame read; Received events reach the router
        # Handed over at once, not at the end of the iteration (measured: that
        # cost 10-30 % of receive throughput), and even if the read ended the
        # connection: what arrived before a close is still delivered.
        router.flush()
        # A full "block" buffer refused some: stop reading until its consumer
        # makes room (ResumeInbound), so TCP pushes back on the server.
        conn.session.reading_paused = router.holding

    def _write(self) -> None:
        """Write what the session has framed (once per iteration, never from a handler)."""
        if self._conn is not None:
            self._conn.write()

    def _update_interest(self) -> None:
        if self._conn is not None:
            self._conn.watch(not self.router.held)

    def _pump(self) -> None:
        """Move queued messages into the session while under the high-water mark."""
        conn = self._conn
        if conn is not None and conn.session.is_open and self.life.state is State.OPEN:
            conn.pump(self.outbox, self.handoff)

    def _check_flush_waiters(self) -> None:
        # flush() returns once the queue, the session's buffer (and its unacked
        # messages: has_work counts them as taken) and the kernel are empty.
        if not self.life.has_work() and (self._conn is None or self._conn.drained()):
            self.life.shutdown.release_flush_waiters()

    def process_events(self) -> None:
        """Hand on the session's events, including those that handling them caused.

        Called after every step that fed the session (a read, a write, a
        command, a deadline). Each event goes to the handler the event table
        names; a handler may make the session produce more events (a token
        answer opens the link), so the loop asks again until none is left. A
        ``Closed`` event releases the connection: whatever follows belongs to
        no connection and is not asked for.
        """
        conn = self._conn
        if conn is None:
            return
        session = conn.session
        handlers = self._on_event
        while True:
            events = session.events()
            if not events:
                return
            for event in events:
                handlers[type(event)](event)
            if self._conn is not conn:
                return

    def _on_opened(self, event: s.Opened) -> None:
        """The session opened: the lifecycle subscribes and lets the queue drain."""
        conn = self._conn
        assert conn is not None  # events come from the open connection only
        self.life.opened(conn.session)

    def _on_closed(self, event: Closed) -> None:
        """The session is over: a last write, then the lifecycle decides (retry or end)."""
        conn = self._conn
        assert conn is not None
        # The last-chance write (e.g. our close frame): what it took counts, so
        # the Written/Acked events it caused are handed on before the
        # lifecycle sorts what is left unfinished.
        conn.last_write(self._hand_on_late)
        self.life.connection_closed(conn.session, event)

    def _hand_on_late(self, event: s.Event) -> None:
        # An event of the last write. The session is already closed: a second
        # Closed (there is none today) must not run connection_closed twice.
        if type(event) is not Closed:
            self._on_event[type(event)](event)

    @property
    def last_rtt(self) -> Optional[float]:
        """Seconds of the last heartbeat round trip, or None."""
        return self.handoff.last_rtt


__all__ = ["IoLoop", "LoopConfig", "Timer"]
