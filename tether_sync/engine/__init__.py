"""The I/O tier: the I/O thread, which alone owns the socket, and the helper threads it starts.

Only :mod:`tether_sync.client` imports this package (DESIGN §4), and only what
this file exports: :class:`Engine`, the interface between the user's threads
and the I/O thread, plus the typed commands (:mod:`.commands`) and the few
helpers the client needs before any thread runs (the options' container
:class:`LoopConfig`, the token source, the dispatcher thread, URL checks).

How the user's threads and the I/O thread talk, all of it through :class:`Engine`:

* **Data path** (``send()``): the bounded :attr:`Engine.outbox`. A sender puts a
  message there; only the first put since the I/O thread last took writes the
  wake byte. This is the one path where a per-message cost counts, so it goes
  through no method of the engine. A ``send()`` after a pause instead puts
  without a wake-up and calls :attr:`Engine.write_now`: it writes the message
  itself if the I/O thread is idle (the loop's turn, see :mod:`.loop`).
* **Control path**: :meth:`Engine.post` queues a typed command
  (:mod:`tether_sync.engine.commands`) and wakes the loop. Every answer comes
  back through something the command carries (a callback, a buffer), never a
  return value. After the loop ended, a command is answered at once
  (``ClientClosed``), so no caller waits on a command that nobody will run.
* **Reads**: :meth:`Engine.snapshot` for the public :class:`~tether_sync.stats.Stats`,
  and a few properties (:attr:`Engine.state`, :attr:`Engine.fatal`, ...), each
  one reference or integer that the I/O thread replaces whole: a user thread
  may read a value one step old, never a torn one, and takes no lock.

Layout (who calls whom, top down)::

    loop.py            IoLoop: the thread, the selector wait, one table each for
                       commands, timers and session events; fault containment
      lifecycle.py     public State, attempts, retries, close() and the end
        retry.py, closing.py       its pure decisions
        attempts.py    connector threads running websocket-client's handshake
      connection.py    one open link: Session + socket, the read/write/pump steps
        transport.py   the socket calls (Link), the handshake adapter
        flow_control.py            outbound high-water mark, pause and resume
      session_events.py            Handoff: deliveries, public events, counters
      routing.py       inbound payloads to subscription buffers
      auth.py          the token thread (TokenRefresher) and its requests (AuthFlow)
      commands.py, outbox.py       what user threads hand over
      poller.py, timers.py, config.py, dispatch.py
"""

from __future__ import annotations

import random
import threading
from typing import Any, Callable, List, Optional

from ..clock import Clock
from ..delivery import Delivery
from ..durable import DurableStore
from ..logfields import Context
from ..redact import redact_url
from ..state import State
from ..stats import Counters, Stats
from ..subscription import InboundBuffer
from . import commands
from .auth import TokenRefresher
from .commands import Command
from .config import LoopConfig
from .dispatch import ThreadDispatcher, run_task
from .loop import IoLoop
from .outbox import Outbox
from .transport import validate_url


class Engine:
    """The engine as the client sees it: post a command, read a snapshot, queue data.

    One per :class:`~tether_sync.TetherClient`. Made on the user's thread; it
    starts nothing until :meth:`start`. Everything here may be called from any
    thread unless it says otherwise.

    Args:
        config: The validated options.
        emit: Hands an event to the dispatcher (called only if ``wants`` said yes).
        wants: Whether anyone listens to an event name (to skip building events).
        clock: Monotonic and wall time.
        rng: Draws backoff delays.
        auth: The token source, or None.
        on_state: Called after every state change, on the thread that made it
            (the I/O thread; the caller's for :meth:`close_unstarted`).

    Attributes:
        outbox: The bounded outbound queue: ``send()`` puts messages here
            directly (the data path).
        post: Queues a command for the I/O thread and wakes it (see
            :mod:`tether_sync.engine.commands`).
        stopped: Set once the engine has ended for good (after the last state
            change); ``close()`` waits on it.
        counters: The live counters. The I/O thread writes them; user threads
            add only to ``queued`` and ``dropped_outbound`` (what ``send()``
            saw), and otherwise read them through :meth:`snapshot`.
        log_context: The client's log fields (DESIGN §8), for records logged on
            the client's other threads.
        state: The public state, as of the last change (a plain attribute, read
            by every ``send()``).
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
        self.state = State.IDLE

        def state_changed(new: State) -> None:
            # Set before the client's hook runs, so a thread that the hook wakes
            # (wait_open) already reads the new state here.
            self.state = new
            if on_state is not None:
                on_state(new)

        self._config = config
        self._loop = loop = IoLoop(config, emit, wants, clock, rng, auth, state_changed)
        # The loop's parts that user threads may touch, as plain attributes: no
        # call on send()'s fast path.
        self.outbox: Outbox[Delivery] = loop.outbox
        # After a put that did not wake the I/O thread (see IoLoop.write_now).
        self.write_now: Callable[[], None] = loop.write_now
        # Before a consumer blocks in get() (see IoLoop.read_now).
        self.read_now: Callable[[Optional[float], Callable[[], bool]], bool] = loop.read_now
        self.post: Callable[[Command], None] = loop.post
        self.stopped: threading.Event = loop.stopped
        self.counters: Counters = loop.counters
        self.log_context: Context = loop.log_context

    # ------------------------------------------------------------------ threads

    def start(self) -> None:
        """Start the I/O thread; its first step is the first connection attempt."""
        self._loop.start()

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The I/O thread, once started (a caller compares it with its own thread)."""
        return self._loop.thread

    def join(self, timeout: Optional[float]) -> bool:
        """Wait for the I/O thread and the connector threads; True if all ended in time.

        Never joins the calling thread itself. The token thread is the
        :class:`TokenRefresher`'s to join.
        """
        return self._loop.join(timeout)

    def close_unstarted(self) -> None:
        """close() of an engine never started: end it on the caller's thread.

        Fails whatever was queued (with a durable outbox, it stays in the file)
        and enters ``closed``; no thread is involved.
        """
        self._loop.finish_unstarted()

    # ------------------------------------------------------------------ set up

    def attach_store(self, store: DurableStore, restored: List[Delivery]) -> None:
        """Use a durable outbox (before :meth:`start`): its session, seq and unacked messages."""
        self._loop.attach_store(store, restored)

    @property
    def message_buffer(self) -> Optional[InboundBuffer]:
        """The buffer of the ``message`` event stream, or None (no ``message`` handler)."""
        return self._loop.router.message_buffer

    @message_buffer.setter
    def message_buffer(self, buf: Optional[InboundBuffer]) -> None:
        # The one reference a user thread sets directly (under the client's
        # lock): the I/O thread reads it once per read, so a message handler
        # added by on() gets every message read after on() returned. A command
        # would leave a gap until the loop ran it.
        self._loop.router.message_buffer = buf

    # ------------------------------------------------------------------ reads

    def snapshot(self) -> Stats:
        """A frozen snapshot of state and counters (``TetherClient.stats()``)."""
        loop = self._loop
        life = loop.life
        c = loop.counters
        session = loop.session
        state = life.state
        return Stats(
            state=state.value,
            attempt=loop.attempt,
            next_delay=life.next_delay if state is State.RECONNECTING else None,
            queue_depth=len(loop.outbox),
            in_flight=loop.outbox.taken,
            buffered_amount=loop.buffered_amount,
            high_water_mark=self._config.backpressure.high_water_mark,
            inbound_depth=loop.router.depth(),
            sent=c.sent,
            received=c.received,
            queued=c.queued,
            flushed=c.flushed,
            dropped_inbound=c.dropped_inbound,
            dropped_outbound=c.dropped_outbound,
            reconnects=c.reconnects,
            auth_refreshes=c.auth_refreshes,
            last_rtt=loop.last_rtt,
            auth_expires_at=loop.authflow.expires_at if loop.authflow else None,
            unacked=session.unacked if session is not None else len(life.carried),
            acked=c.acked,
            resent=loop.continuity.resent,
            session_id=loop.continuity.session_id,
            extensions=session.features if session is not None else (),
            endpoint=redact_url(life.endpoint),
            **c.snapshot(),
        )

    @property
    def buffered_amount(self) -> int:
        """Bytes framed but not yet taken by the kernel, plus the kernel's unsent bytes."""
        return self._loop.buffered_amount

    @property
    def attempt(self) -> int:
        """The current reconnection attempt (0 while open)."""
        return self._loop.attempt

    @property
    def fatal(self) -> Optional[BaseException]:
        """Why the engine ended, if not by close() (None while it runs)."""
        return self._loop.life.fatal

    @property
    def unsent(self) -> int:
        """Messages failed by the end (0 until the engine ended)."""
        return self._loop.life.unsent

    @property
    def failures(self) -> int:
        """Messages that failed or were dropped by the I/O thread, ever."""
        return self._loop.handoff.failures

    def in_hand(self) -> int:
        """Messages not yet done: queued, in flight, and carried to the next link."""
        outbox = self._loop.outbox
        return len(outbox) + outbox.taken + len(self._loop.life.carried)

    def not_open_yet(self) -> str:
        """Why the engine is not open, for a ``ConnectTimeout``: where, and waiting for what.

        The endpoint is redacted; the last failed attempt's cause is
        :attr:`last_failure`.
        """
        life = self._loop.life
        now = life.waiting_for()
        return redact_url(life.endpoint) + (f", waiting for {now}" if now else "")

    @property
    def last_failure(self) -> Optional[BaseException]:
        """The last failed attempt's cause, since the link was last open."""
        return self._loop.handoff.last_failure

    # ------------------------------------------------------------------ fork

    def unfinished(self) -> List[Delivery]:
        """The messages queued, and those carried over to the next link, in order.

        Read without a lock: only where no I/O thread runs (before :meth:`start`,
        or in a forked child, where the parent's locks may be held for ever).
        """
        loop = self._loop
        return [*loop.outbox._items, *loop.life.carried]

    def subscription_buffers(self) -> List[InboundBuffer]:
        """Every subscription's buffer (in a forked child, to reset them)."""
        return [b for bufs in self._loop.router.routes.values() for b in bufs]


__all__ = [
    "Engine",
    "LoopConfig",
    "ThreadDispatcher",
    "TokenRefresher",
    "commands",
    "run_task",
    "validate_url",
]
