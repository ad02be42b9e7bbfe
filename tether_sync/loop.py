"""The I/O loop: the only owner of the socket and the only I/O thread.

One thread runs :meth:`IoLoop._run`: a selector over the socket and a wake-up
socketpair, with a timer heap for backoff, heartbeat, close and auth deadlines.
User threads never touch the socket. They append to the outbound queue or the
command list under ``_lock`` and write one byte to the wake pair; the loop reads
the byte, takes the commands, and does the work (PA ``_packet_queue``, KP
``sender.wakeup()``).

The opening handshake is blocking in websocket-client, so each attempt runs it
on a short-lived connector thread that hands the finished socket to the loop
(with a command). The connector owns the socket until then and never after, so
at any moment exactly one thread touches it. The loop itself blocks only in
``select()``: no ``sendall``, no user callback, no ``get_token()``.

Wire order on every (re)connect (DESIGN §1 Ordering): auth, then the
subscriptions, then the queue in FIFO order, then new sends, because all of them
go through this one writer and the queue drains only once the link is ``open``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import selectors
import socket
import ssl
import threading
import uuid
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import envelope, frames, transport
from .auth import TokenRefresher
from .backoff import Backoff
from .buffers import Ring
from .clock import Clock, Deadline
from .delivery import Delivery
from .events import (
    CloseEvent,
    ErrorEvent,
    OpenEvent,
    ReconnectingEvent,
    StateChangeEvent,
)
from .exceptions import (
    ClientClosed,
    ConnectTimeout,
    QueueFull,
    ServerError,
    TetherError,
)
from .loop_closing import ClosingMixin, Settable
from .loop_inbound import InboundMixin
from .loop_outbound import OutboundMixin
from .loop_session import AUTH as _AUTH
from .loop_session import HANDSHAKE as _HANDSHAKE
from .loop_session import NONE as _NONE
from .loop_session import OPEN as _OPEN
from .loop_session import SessionMixin
from .options import Backpressure, Heartbeat, Queue, Reconnect
from .state import State, check
from .stats import Counters
from .subscription import InboundBuffer
from .timers import TimerHeap
from .writebuf import WriteBuffer

log = logging.getLogger("tether_sync")

_READ_SIZE = 256 * 1024  # bytes per recv(): take everything the kernel has at once


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Everything the loop needs to know about the connection, already validated."""

    url: str
    protocol: str
    reconnect: Optional[Reconnect]
    heartbeat: Optional[Heartbeat]
    queue: Optional[Queue]
    backpressure: Backpressure
    headers: Any
    subprotocols: Optional[List[str]]
    sslopt: Optional[Dict[str, Any]]
    connect_timeout: float
    max_message_size: int
    ws_options: Dict[str, Any]


class IoLoop(ClosingMixin, OutboundMixin, InboundMixin, SessionMixin):
    """The connection engine behind :class:`~tether_sync.TetherClient`.

    Args:
        config: The validated options.
        emit: Hands an event to the dispatcher (only if someone listens).
        wants: Whether anyone listens to an event name (to skip building events).
        clock: Monotonic and wall time.
        rng: Draws backoff delays.
        auth: The token source, or None.
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
        self._on_state = on_state
        self._emit = emit
        self._wants = wants
        self._clock = clock
        self._rng = rng
        self._auth = auth

        # _lock guards what user threads and the loop share: the outbound queue,
        # the command list, _wake_pending and _accepting. It is held only for
        # list/deque operations, never while doing I/O or calling out.
        self._lock = threading.Lock()
        queue_opt = config.queue
        self._queue: Ring[Delivery] = Ring(
            queue_opt.max_size if queue_opt else 2**62,
            queue_opt.overflow if queue_opt else "reject",
        )
        self._commands: Deque[Tuple[str, Any]] = deque()
        self._wake_pending = False
        self._accepting = True  # False once close() began: send() raises ClientClosed

        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: Optional[threading.Thread] = None
        # Connector threads still running, with the websocket-client object each
        # one handshakes with (so close() can abort it). Connectors remove
        # themselves; dict operations are atomic, so no lock is needed.
        self._connectors: Dict[threading.Thread, Any] = {}
        self.stopped = threading.Event()  # set when the loop has ended for good

        # Everything below is touched by the loop thread only.
        self.state = State.IDLE
        self.counters = Counters()
        self._timers = TimerHeap()
        self._backoff = Backoff(
            config.reconnect.base_delay if config.reconnect else 1.0,
            config.reconnect.max_delay if config.reconnect else 1.0,
            config.reconnect.max_attempts if config.reconnect else 0,
        )
        self.next_delay: Optional[float] = None
        self._phase = _NONE
        self._sock: Optional[socket.socket] = None
        self._handshaker: Any = None
        self._attempt_id = 0
        self._parser = frames.FrameParser(config.max_message_size)
        self._wbuf = WriteBuffer(frames.MaskKeys())
        self._want_write = False
        self._reading = True
        # (buffer, channel, item) refused by a full "block" buffer, in arrival order.
        self._pending_in: Deque[Tuple[InboundBuffer, Optional[str], Any]] = deque()
        # Payloads of the read being parsed, per buffer (see _flush_inbound).
        self._inbound_batch: Dict[InboundBuffer, Tuple[Optional[str], List[Any]]] = {}
        self._routes: Dict[str, List[InboundBuffer]] = {}
        self.message_buffer: Optional[InboundBuffer] = None  # set by the client
        self._close_requested = False
        self._close_deadline: Optional[float] = None
        self._close_sent = False
        self._closing_code: Tuple[int, str] = (1000, "")  # the close frame we sent
        self._opened_once = False
        self._registered = False  # whether the socket is in the selector
        self._mask = 0  # the events it is registered for
        self._tls = False  # the socket is an SSLSocket (its buffer needs pending())
        self.unsent = 0  # messages failed by the final close
        self._flush_waiters: List[Settable] = []  # flush() callers, set when drained
        self._outbound_paused = False  # draining stopped at the high-water mark
        self._pressure_reported = False  # a backpressure event for this episode went out
        self._kernel_bound = 0  # upper bound of the kernel's unsent bytes (see _above_mark)
        self._close_event: Optional[CloseEvent] = None  # emitted with the next state change
        self._stalled_wakeups = 0  # writability wake-ups that found us still paused
        self._lowat = False  # TCP_NOTSENT_LOWAT is set on the socket
        self._last_rx = 0.0
        self._ping_ts: Optional[int] = None
        self._ping_sent = 0.0
        self.last_rtt: Optional[float] = None
        self._auth_refused = 0  # refusals in a row; the second one is final
        self._auth_round = 0  # numbers token requests, so stale answers are dropped
        self._auth_busy = False  # a token is being fetched or its auth-ok awaited
        self._auth_pending_exp: Optional[float] = None
        self._auth_force = False  # the next auth must fetch a new token
        self._refresh_failures = 0
        self._refresh_waiters: List[Callable[[Optional[BaseException]], None]] = []
        self.auth_expires_at: Optional[float] = None
        self.fatal: Optional[BaseException] = None  # why the client ended, if not by close()

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

    def post(self, name: str, arg: Any = None) -> None:
        """Queue a command for the loop and wake it (any thread)."""
        with self._lock:
            self._commands.append((name, arg))
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (the loop is already due to wake) or closed
            pass

    def enqueue(self, delivery: Delivery) -> List[Delivery]:
        """Add a message to the outbound queue (the caller's thread).

        Returns:
            The messages the overflow policy dropped (possibly ``delivery`` itself
            with ``drop-newest``); the caller fails them outside the lock.

        Raises:
            ClientClosed: ``close()`` was called.
            QueueFull: the policy is ``reject`` and the queue is full, or the queue
                is disabled and the client is not open.
        """
        with self._lock:
            if not self._accepting:
                raise ClientClosed("the client is closed")
            if self.config.queue is None and self.state is not State.OPEN:
                raise QueueFull("queue=False and the client is not open")
            dropped = self._queue.push(delivery)
            if dropped:
                if dropped[0] is delivery and self._queue.overflow == "reject":
                    raise QueueFull(f"outbound queue full ({self._queue.capacity} messages)")
                self.counters.dropped_outbound += len(dropped)
            if self.state is not State.OPEN:
                self.counters.queued += 1
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._wake()
        return dropped

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return self._wbuf.in_flight

    @property
    def buffered_amount(self) -> int:
        """User-space bytes not yet written plus the kernel's unsent bytes."""
        sock = self._sock
        kernel = transport.kernel_unsent(sock) if sock is not None else 0
        return self._wbuf.size + kernel

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

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
            self._connect()
            while not self.stopped.is_set():
                self._select_once()
        except BaseException as exc:  # a bug: never leave the user hanging
            log.exception("tether_sync I/O loop crashed")
            try:
                self._finish(TetherError(f"I/O loop crashed: {exc!r}"))
            except BaseException:
                log.exception("cleaning up after the crash failed too")
        finally:
            self.stopped.set()  # whatever happened, close() and waiters must not hang
            self._teardown_loop()

    def _select_once(self) -> None:
        timeout = self._timers.timeout(self._clock.monotonic())
        if self._tls and self._reading and self._tls_pending():
            timeout = 0.0  # decrypted bytes already wait inside the SSL object
        for key, mask in self._selector.select(timeout):
            if key.data is None:
                self._on_wake()
            else:
                if mask & selectors.EVENT_READ:
                    self._on_readable()
                if mask & selectors.EVENT_WRITE and self._sock is not None:
                    self._flush_out()
        if self._tls and self._reading and self._tls_pending():
            self._on_readable()
        self._on_timers()
        self._drain_commands()
        self._pump()
        if self._close_requested:
            self._maybe_close()  # close() waits for the drain: done yet?
        self._check_flush_waiters()
        self._update_interest()

    def _on_wake(self) -> None:
        # One recv is enough: thanks to _wake_pending, at most a few bytes wait.
        try:
            self._wake_r.recv(4096)
        except OSError:  # BlockingIOError: a spurious wake-up
            pass

    def _tls_pending(self) -> bool:
        sock = self._sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _drain_commands(self) -> None:
        # Unlocked peek: posters set _wake_pending under the lock before writing
        # the wake byte, so a command missed here wakes the selector again.
        if not self._wake_pending:
            return
        with self._lock:
            # Clear the flag before taking the commands: a command posted after
            # this point writes a new wake byte, so nothing is left unseen.
            self._wake_pending = False
            commands = list(self._commands)
            self._commands.clear()
        for name, arg in commands:
            getattr(self, "_cmd_" + name)(arg)

    def _on_timers(self) -> None:
        for name in self._timers.pop_due(self._clock.monotonic()):
            getattr(self, "_timer_" + name)()

    # ------------------------------------------------------------ state changes

    def _set_state(self, new: State) -> None:
        old = self.state
        if old is new:
            return
        check(old, new)
        self.state = new
        log.debug("state %s -> %s", old.value, new.value)
        if self._on_state is not None:
            self._on_state(new)
        if self._wants("state_change"):
            self._emit(StateChangeEvent(old.value, new.value))
        close, self._close_event = self._close_event, None
        if close is not None and self._wants("close"):
            self._emit(close)

    def _error(self, exc: BaseException) -> None:
        if self._wants("error"):
            self._emit(ErrorEvent(exc))

    # ------------------------------------------------------------ connecting

    def _connect(self) -> None:
        """Start one connection attempt on a connector thread."""
        self._set_state(State.CONNECTING)
        self._attempt_id += 1
        attempt = self._attempt_id
        self._phase = _HANDSHAKE
        ws = self._handshaker = transport.new_handshaker()
        cfg = self.config
        auth = self._auth
        header_auth = auth is not None and cfg.protocol == "raw" and auth.options.header

        def connector() -> None:
            # Runs on the connector thread: blocking is allowed here, and user code
            # (a headers callable) may run here, never on the I/O thread. This is
            # also where protocol "raw" fetches the token for its handshake header.
            try:
                headers = cfg.headers() if callable(cfg.headers) else cfg.headers
                if header_auth:
                    assert auth is not None and auth.options.header
                    token, exp = auth.get_blocking(auth.options.timeout)
                    name = auth.options.header
                    value = f"Bearer {token}" if name.lower() == "authorization" else token
                    headers = {**(headers or {}), name: value}
                    self.post("header_token", (attempt, exp))
                sock = transport.handshake(
                    ws,
                    cfg.url,
                    timeout=cfg.connect_timeout,
                    headers=headers,
                    subprotocols=cfg.subprotocols,
                    sslopt=cfg.sslopt,
                    extra=cfg.ws_options,
                )
            except BaseException as exc:
                self.post("connect_failed", (attempt, exc))
            else:
                self.post("connected", (attempt, sock))
            finally:
                self._connectors.pop(threading.current_thread(), None)

        thread = threading.Thread(target=connector, name="tether-connect", daemon=True)
        self._connectors[thread] = ws
        thread.start()
        self._timers.schedule(self._clock.monotonic() + cfg.connect_timeout, "connect_timeout")

    def _cmd_connected(self, arg: Tuple[int, socket.socket]) -> None:
        attempt, sock = arg
        if attempt != self._attempt_id or self._phase != _HANDSHAKE:
            sock.close()  # a stale attempt, abandoned after a timeout or close()
            return
        self._timers.cancel("connect_timeout")
        self._handshaker = None
        sock.setblocking(False)
        self._sock = sock
        self._lowat = _set_notsent_lowat(sock, self.config.backpressure.high_water_mark)
        self._parser = frames.FrameParser(self.config.max_message_size)
        self._wbuf.reset()
        self._close_sent = False
        self._reading = not self._pending_in
        self._last_rx = self._clock.monotonic()
        self._selector.register(sock, selectors.EVENT_READ, "sock")
        self._registered = True
        self._mask = selectors.EVENT_READ
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._want_write = False
        log.info("connected to %s", self.config.url)
        if self._auth is not None and self.config.protocol == "tether":
            self._phase = _AUTH
            self._begin_auth(force=self._auth_refused > 0)
        else:
            self._opened()
            if self._auth is not None and self._auth_pending_exp is not None:
                # protocol "raw": the handshake header carried the token.
                self._auth_busy = True
                self._on_auth_ok(True)

    def _cmd_connect_failed(self, arg: Tuple[int, BaseException]) -> None:
        attempt, exc = arg
        if attempt != self._attempt_id or self._phase != _HANDSHAKE:
            return
        self._timers.cancel("connect_timeout")
        self._handshaker = None
        self._phase = _NONE
        log.info("connection to %s failed: %s", self.config.url, exc)
        self._retry_or_finish(exc)

    def _timer_connect_timeout(self) -> None:
        if self._phase == _HANDSHAKE:
            transport.abort(self._handshaker)
            self._attempt_id += 1  # the connector's late answer is now stale
            self._handshaker = None
            self._phase = _NONE
            exc = ConnectTimeout(f"no handshake within {self.config.connect_timeout}s")
            log.info("connection to %s timed out", self.config.url)
            self._retry_or_finish(exc)

    def _opened(self) -> None:
        """The link is usable: announce subscriptions, then drain the queue."""
        if self._opened_once:
            self.counters.reconnects += 1
        self._opened_once = True
        self._phase = _OPEN
        self._backoff = self._backoff.reset()
        self.next_delay = None
        self._set_state(State.OPEN)
        if self._wants("open"):
            self._emit(OpenEvent(self.config.url))
        if self.config.protocol == "tether":
            for channel in self._routes:
                self._send_control_text(
                    envelope.encode_subscription(channel, "subscribe", str(uuid.uuid4()))
                )
        self._start_heartbeat()

    def _retry_or_finish(self, cause: BaseException, terminal: bool = False) -> None:
        """After a failed attempt or a lost link: back off and retry, or give up."""
        self._reset_connection_state()
        if self._close_requested:
            self._finish(None)
            return
        if terminal or self.config.reconnect is None:
            self._finish(cause)
            return
        if self._backoff.exhausted:
            err = TetherError(
                f"gave up after {self._backoff.attempt} reconnection attempt(s): {cause}"
            )
            err.__cause__ = cause
            self._finish(err)
            return
        delay, self._backoff = self._backoff.next(self._rng)
        self.next_delay = delay
        self._set_state(State.RECONNECTING)
        log.info(
            "reconnecting to %s: attempt %d in %.3fs", self.config.url, self._backoff.attempt, delay
        )
        if self._wants("reconnecting"):
            self._emit(ReconnectingEvent(self._backoff.attempt, delay))
        self._timers.schedule(self._clock.monotonic() + delay, "reconnect")

    def _timer_reconnect(self) -> None:
        if self.state is State.RECONNECTING:
            self._connect()

    @property
    def attempt(self) -> int:
        return self._backoff.attempt

    # ------------------------------------------------------------ reading

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None or not self._reading:
            return
        try:
            data = sock.recv(_READ_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self._lost(1006, f"read failed: {exc}", False)
            return
        if not data:
            self._lost(1006, "connection closed without a close frame", False)
            return
        self._last_rx = self._clock.monotonic()
        error: Optional[frames.FrameProtocolError] = None
        try:
            messages = self._parser.feed(data)
        except frames.FrameProtocolError as exc:
            # Deliver what arrived intact before the violation, then fail the link
            # with the code the violation calls for (RFC 6455 §7.1.7).
            error, messages = exc, exc.messages
        for opcode, payload in messages:
            if self._sock is None:
                break  # a close frame (or error) ended the link mid-chunk
            self._on_message(opcode, payload)
        self._flush_inbound()  # what arrived before a close is still delivered
        if error is not None and self._sock is not None:
            log.warning("protocol error from %s: %s", self.config.url, error)
            self._error(error)
            self._close_link(error.close_code, str(error)[:100], final=False)

    def _on_message(self, opcode: int, payload: Any) -> None:
        if opcode == frames.OP_TEXT or opcode == frames.OP_BINARY:
            if self.config.protocol == "raw":
                self._deliver("default", payload, payload)
            else:
                self._on_tether(payload)
        elif opcode == frames.OP_PING:
            self._send_control(frames.OP_PONG, payload)
        elif opcode == frames.OP_PONG:
            self._on_pong(payload)
        elif opcode == frames.OP_CLOSE:
            self._on_close_frame(payload)

    def _on_tether(self, payload: Any) -> None:
        msg = envelope.decode(payload)
        if type(msg) is envelope.Data:
            channel = msg.channel if isinstance(msg.channel, str) else str(msg.channel)
            self._deliver(channel, msg.payload, msg.payload)
        elif type(msg) is envelope.Pong:
            self._on_pong(msg.ts)
        elif type(msg) is envelope.Ping:
            self._send_control_text(envelope.encode_pong(msg.ts))
        elif type(msg) is envelope.AuthOk:
            self._on_auth_ok(msg.ok)
        elif type(msg) is envelope.ServerErrorMsg:
            log.warning("server refused message %r: %s", msg.id, msg.error)
            self._error(ServerError(msg.error, msg.id))
        else:
            assert type(msg) is envelope.Unknown
            # Not ours to interpret: the message stream gets the frame unchanged.
            self._deliver(None, None, payload)

    def _flush_out(self) -> None:
        """Write as much of the write buffer as the kernel takes, without blocking."""
        sock = self._sock
        wbuf = self._wbuf
        while wbuf and sock is not None:
            data = wbuf.pending()
            try:
                n = sock.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError as exc:
                self._lost(1006, f"write failed: {exc}", False)
                return
            self._kernel_bound += n
            done = wbuf.advance(n)
            if done:
                self._on_written(done)
            if n < len(data):
                break  # the kernel is full: wait for writability
        self._want_write = bool(wbuf)

    def _update_interest(self) -> None:
        """Ask the selector for exactly what we can act on (STYLE §3.4).

        Write interest only while bytes wait, read interest only while no
        ``block`` consumer holds reading back.
        """
        sock = self._sock
        if sock is None:
            return
        mask = (selectors.EVENT_READ if self._reading else 0) | (
            selectors.EVENT_WRITE if self._want_write else 0
        )
        if not mask:
            if self._registered:
                self._selector.unregister(sock)
                self._registered = False
        elif not self._registered:
            self._selector.register(sock, mask, "sock")
            self._registered = True
            self._mask = mask
        elif self._mask != mask:
            self._selector.modify(sock, mask, "sock")
            self._mask = mask

    def _timer_kernel_poll(self) -> None:
        pass  # the wake-up alone re-runs _pump and _check_flush_waiters

    def _lost(self, code: int, reason: str, was_clean: bool) -> None:
        """The link ended, for whatever reason: report it, then retry or finish."""
        sock = self._sock
        if sock is None:
            return
        self._release_socket()
        # Announced once the state has left "open" (in _set_state), so a close
        # handler that looks at client.state sees where the client is going.
        self._close_event = CloseEvent(code, reason, was_clean)
        log.info("connection closed: %d %s (clean=%s)", code, reason, was_clean)
        terminal = (
            self.config.reconnect is not None and code in self.config.reconnect.terminal_codes
        ) and not self._close_requested
        cause: BaseException = ClientClosed(f"connection closed: {code} {reason}")
        if terminal:
            cause = TetherError(f"server closed the connection with terminal code {code}")
        self._retry_or_finish(cause, terminal=terminal)

    def _release_socket(self) -> None:
        sock = self._sock
        if sock is None:
            return
        # Best effort: push out whatever is already framed (e.g. our close frame).
        if self._wbuf:
            try:
                sock.send(self._wbuf.pending())
            except OSError:
                pass
        self._sock = None
        if self._registered:
            self._registered = False
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        try:
            sock.close()
        except OSError:
            pass
        self._requeue_in_flight()

    def _requeue_in_flight(self) -> None:
        # Messages taken for sending whose frames the kernel did not fully accept
        # go back to the head of the queue, in order: they are sent again after
        # the reconnect, not lost.
        unwritten = self._wbuf.reset()
        if unwritten:
            with self._lock:
                self._queue.push_front(unwritten)

    def _reset_connection_state(self) -> None:
        self._phase = _NONE
        self._outbound_paused = self._pressure_reported = False
        self._kernel_bound = 0
        self._timers.cancel("connect_timeout")
        self._timers.cancel("ping")
        self._timers.cancel("pong_deadline")
        self._timers.cancel("close_grace")
        self._timers.cancel("auth_timeout")
        self._timers.cancel("refresh")
        self._auth_busy = False
        self._ping_ts = None
        self._release_socket()
        # Payloads held for a full "block" consumer were received: they stay, and
        # the next connection is read only once the consumer has caught up.
        self._reading = not self._pending_in

    def _finish(self, cause: Optional[BaseException]) -> None:
        """Enter ``closed`` for good: fail what is left, wake every waiter."""
        if self.stopped.is_set():
            return
        self._reset_connection_state()
        self.fatal = cause
        if cause is not None:
            log.warning("client closed: %s", cause)
            self._error(cause)
        with self._lock:
            self._accepting = False
            left = self._queue.drain()
        reason = cause if cause is not None else ClientClosed("the client was closed")
        for d in left:
            exc = ClientClosed(f"message not sent: {reason}")
            exc.__cause__ = cause
            d.set_exception(exc)
        self._fail_refresh_waiters(cause or ClientClosed("the client was closed"))
        for buf in [b for bufs in self._routes.values() for b in bufs]:
            buf.close()
        if self.message_buffer is not None:
            self.message_buffer.close()
        for event in self._flush_waiters:
            event.set()  # flush() re-checks and reports False
        self._flush_waiters.clear()
        self._timers.cancel_all()
        self._pending_in.clear()  # their buffers are closed: nobody will read them
        if self.state is not State.CLOSED:
            self._set_state(State.CLOSED)
        self.unsent = len(left)
        self.stopped.set()

    def finish_unstarted(self) -> None:
        """close() of a client whose loop never ran: the caller's thread does it."""
        assert self._thread is None
        self._finish(None)
        self._teardown_loop()

    def _teardown_loop(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _set_notsent_lowat(sock: socket.socket, high_water_mark: int) -> bool:
    """Cap the kernel's unsent bytes near the high-water mark (Linux, macOS).

    With TCP_NOTSENT_LOWAT the kernel stops taking writes, and reports the socket
    writable again, around ``high_water_mark / 2`` unsent bytes: the outbound
    backpressure then rests on a real signal from the kernel, not on polling.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is None or high_water_mark >= 2**31:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(16384, high_water_mark // 2))
    except OSError:
        return False
    return True


__all__ = ["IoLoop", "LoopConfig"]
