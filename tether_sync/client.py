"""``TetherClient``: the public, blocking, thread-safe face of tether_sync.

It validates options, encodes payloads in the caller's thread (so a bad payload
fails in ``send()``, never later), and talks to the I/O tier only through the
:class:`~tether_sync.engine.Engine` interface: messages go into its outbound
queue, everything else is a posted command, and what it reports is read from a
snapshot or a property. Every wait takes its time from one
:class:`~tether_sync.clock.Deadline`.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import json
import logging
import os
import random
import sys
import threading
import uuid
import weakref
from json.encoder import encode_basestring as _encode_basestring
from time import perf_counter as _perf_counter
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar, Union, overload

from . import delivery as deliveries
from .clock import Clock, Deadline, SystemClock
from .delivery import Delivery
from .durable import DurableStore
from .engine import Engine, LoopConfig, ThreadDispatcher, TokenRefresher, run_task, validate_url
from .engine import commands as cmd
from .events import EVENT_NAMES, ErrorEvent, MessageEvent, QueuedEvent
from .exceptions import AuthError, ClientClosed, ConnectTimeout, QueueFull, TetherError
from .logfields import LOG_CONTEXT
from .options import (
    INBOUND_OVERFLOW,
    Backpressure,
    Heartbeat,
    Queue,
    Reconnect,
    check_headers,
    check_sslopt,
    check_ws_options,
    coerce,
    coerce_auth,
    coerce_subprotocols,
    number,
)
from .protocol import frames
from .protocol.envelope import encode_data, encode_json
from .redact import redact_url
from .state import State
from .stats import Stats
from .subscription import InboundBuffer, Subscription

log = logging.getLogger("tether_sync")

Handler = Callable[[Any], None]
_H = TypeVar("_H", bound=Callable[[Any], Any])

# Seconds since the previous send() after which a send() writes its message from
# the caller's thread when the I/O thread is idle (see send()). A loop of sends
# comes every few microseconds and is left to the I/O thread, which writes many
# messages per system call; a round trip's next request comes after the reply,
# a hundred microseconds or more later on loopback.
DIRECT_GAP = 50e-6


def _shown(level: int) -> bool:
    """Whether a record of ``level`` on the library's logger reaches a real handler."""
    logger: Optional[logging.Logger] = log
    while logger is not None:
        for handler in logger.handlers:
            if not isinstance(handler, logging.NullHandler) and level >= handler.level:
                return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


# Clients not closed by their owner; flushed and closed at interpreter exit.
_live_clients: weakref.WeakSet[TetherClient] = weakref.WeakSet()
# Every client made in this process, so a forked child can reset them all.
_all_clients: weakref.WeakSet[TetherClient] = weakref.WeakSet()


class TetherClient:
    """A resilient WebSocket client for blocking code (DESIGN §2).

    Args:
        url: ``ws://`` or ``wss://`` URL, or a non-empty list (or tuple) of them:
            endpoints that take turns, round robin, starting with the first. After
            a failed attempt or a lost link the next attempt goes to the next
            endpoint, and the delay grows with each full rotation (see
            :class:`~tether_sync.Reconnect`). :attr:`url` stays the first one;
            ``stats().endpoint`` and the ``open`` event's ``url`` name the current one.
        protocol: ``"tether"`` (JSON envelopes with channels) or ``"raw"`` (frames
            as-is: ``str`` → text, ``bytes`` → binary, anything else → JSON text;
            inbound arrives on channel ``"default"``).
        auth: An :class:`~tether_sync.Auth`, a dict of its fields, or a plain
            callable returning a token.
        reconnect: :class:`~tether_sync.Reconnect`, a dict, or ``False`` (no reconnection).
        heartbeat: :class:`~tether_sync.Heartbeat`, a dict, or ``False``.
        queue: :class:`~tether_sync.Queue`, a dict, or ``False`` (``send()`` while not
            open raises :class:`~tether_sync.QueueFull`).
        backpressure: :class:`~tether_sync.Backpressure` or a dict.
        dispatcher: ``callable(fn)`` that runs ``fn`` where callbacks belong (e.g. a
            GUI's main thread); by default a dispatcher thread of the client's own.
        headers: Handshake headers: a dict, or a callable returning one, evaluated
            at every connect.
        subprotocols: Offered to the server in the handshake: one name (a ``str``)
            or a list of names.
        sslopt: TLS options, handed to websocket-client.
        connect_timeout: Seconds for one opening handshake.
        max_message_size: Bytes; a bigger inbound message closes the link with 1009.
        exit_flush_timeout: Seconds that a client still open at interpreter exit
            spends flushing its queue before it closes (``0`` disables it).
        ws_options: More keyword arguments for websocket-client's ``connect``
            (``http_proxy_host``, ``origin``, ``redirect_limit``...; any other key
            is refused, see :data:`tether_sync.options.WS_OPTIONS`).
        compression: ``"deflate"``: offer permessage-deflate (RFC 7692) and use it both
            ways if the server agrees; None (the default): no compression.
        clock: Time source (tests inject a fake one).
        rng: Random source of backoff delays (tests inject a seeded one).

    Raises:
        TypeError, ValueError: a bad URL or option, naming it.
    """

    def __init__(
        self,
        url: Union[str, List[str], Tuple[str, ...]],
        *,
        protocol: str = "tether",
        auth: Any = None,
        reconnect: Union[Reconnect, Dict[str, Any], bool, None] = None,
        heartbeat: Union[Heartbeat, Dict[str, Any], bool, None] = None,
        queue: Union[Queue, Dict[str, Any], bool, None] = None,
        backpressure: Union[Backpressure, Dict[str, Any], None] = None,
        dispatcher: Optional[Callable[[Callable[[], None]], Any]] = None,
        headers: Union[Dict[str, str], Callable[[], Dict[str, str]], None] = None,
        subprotocols: Union[str, List[str], Tuple[str, ...], None] = None,
        sslopt: Optional[Dict[str, Any]] = None,
        connect_timeout: float = 10.0,
        max_message_size: int = 16 * 2**20,
        exit_flush_timeout: float = 5.0,
        ws_options: Optional[Dict[str, Any]] = None,
        compression: Optional[str] = None,
        clock: Optional[Clock] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        self._ctor_args = (url,)
        self._ctor_kwargs = {
            k: v for k, v in locals().items() if k not in ("self", "url", "__class__")
        }
        self._pid = os.getpid()
        self._autoconnect = False  # set in a forked child whose parent had connected
        _all_clients.add(self)
        urls = _endpoints(url)
        if protocol not in ("tether", "raw"):
            raise ValueError(f"protocol must be 'tether' or 'raw', got {protocol!r}")
        if dispatcher is not None and not callable(dispatcher):
            raise TypeError("dispatcher must be callable")
        if headers is not None and not (callable(headers) or isinstance(headers, dict)):
            raise TypeError("headers must be a dict or a callable returning one")
        if isinstance(headers, dict):
            check_headers(headers)  # a callable's result is checked at each connect
        # Finite and positive: inf or 1e300 would overflow the timer arithmetic,
        # and NaN would make every comparison false.
        number("connect_timeout", connect_timeout)
        if connect_timeout > 86400:
            raise ValueError(f"connect_timeout must be <= 86400 seconds, got {connect_timeout!r}")
        number("exit_flush_timeout", exit_flush_timeout, strict=False)
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int):
            raise TypeError("max_message_size must be an int")
        if max_message_size < 1:
            raise ValueError("max_message_size must be >= 1")
        if compression not in (None, "deflate"):
            raise ValueError(f"compression must be None or 'deflate', got {compression!r}")
        bp = coerce("backpressure", backpressure, Backpressure)
        assert bp is not None
        self._auth_options = coerce_auth(auth)
        self._config = LoopConfig(
            url=urls[0],
            urls=urls,
            protocol=protocol,
            reconnect=coerce("reconnect", reconnect, Reconnect),
            heartbeat=coerce("heartbeat", heartbeat, Heartbeat),
            queue=coerce("queue", queue, Queue),
            backpressure=bp,
            headers=headers,
            subprotocols=coerce_subprotocols(subprotocols),
            sslopt=check_sslopt(sslopt),
            connect_timeout=float(connect_timeout),
            max_message_size=max_message_size,
            ws_options=check_ws_options(ws_options),
            compression=compression,
        )
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._exit_flush_timeout = float(exit_flush_timeout)
        self._ids = itertools.count(1)
        # A random UUID-shaped prefix plus a counter: unique ids without a uuid4()
        # (and its os.urandom call) per message.
        self._id_prefix = str(uuid.uuid4())[:24]
        self._last_send = 0.0  # perf_counter() of the last send() while open (see send())

        # Guards _handlers (copy-on-write: dispatch reads the current tuple without
        # it) and _started/_closing. Never held while calling out.
        self._lock = threading.Lock()
        self._handlers: Dict[str, Tuple[Handler, ...]] = {}
        self._state_cond = threading.Condition(threading.Lock())  # notified on state change
        self._opens = 0  # times the state became open (under _state_cond)
        self._started = False
        self._closing = False
        self._own_dispatcher: Optional[ThreadDispatcher] = None
        self._refresher: Optional[TokenRefresher] = None
        # Guards _refresh_round: refresh_auth() calls made while one is in progress
        # share it (single flight), so they cause one get_token() call between them.
        self._refresh_lock = threading.Lock()
        self._refresh_round: Optional[_RefreshRound] = None
        self._failures_seen = 0  # engine failures + drops at the last flush()/close()
        self._drop_episode = False  # a drop was logged since the last flush/open
        self._drops = 0  # messages dropped by the queue's policy (in send())
        self._fallback: Optional[ThreadDispatcher] = None
        self._fallback_lock = threading.Lock()  # guards the lazy creation of _fallback
        if dispatcher is None:
            self._own_dispatcher = ThreadDispatcher(self._report_error, "tether-dispatch")
            self._dispatch_fn: Callable[[Callable[[], None]], Any] = self._own_dispatcher
        else:
            self._user_dispatcher = dispatcher
            self._dispatch_fn = self._dispatch_user
        # The I/O tier, reached only through this interface (DESIGN §4). Named
        # _loop for the white-box tests and tools that look at its thread.
        self._loop = Engine(
            self._config,
            self._emit,
            self._wants,
            self._clock,
            rng if rng is not None else random.Random(),
            auth=self._make_authenticator(),
            on_state=self._on_state,
        )
        # Records logged by this client's methods on the caller's thread, and by
        # its dispatcher and store threads, carry its log fields (DESIGN §8).
        self._log_context = self._loop.log_context
        if self._own_dispatcher is not None:
            setattr(self._own_dispatcher, LOG_CONTEXT, self._log_context)
        self._store: Optional[DurableStore] = None
        queue_opt = self._config.queue
        if queue_opt is not None and queue_opt.path is not None:
            # Raises TetherError for a corrupt, foreign or locked file: at construction.
            self._store = DurableStore(
                queue_opt.path,
                fsync=queue_opt.fsync,
                on_commit_ref=self._committed,
                on_commit_refs=self._committed_many,
            )
            setattr(self._store, LOG_CONTEXT, self._log_context)
            # See Outbox.linger: a durable send waits at most 2 ms for the I/O thread
            # (acks take up to 50 ms anyway); fewer wake-ups leave the GIL to senders.
            self._loop.outbox.linger = 0.002
            restored = [self._restore(m) for m in self._store.pending()]
            self._loop.attach_store(self._store, restored)
            if restored:
                log.info(
                    "outbox %s: %d unacked message(s) to resend", queue_opt.path, len(restored)
                )

    def _dispatch_user(self, fn: Callable[[], None]) -> None:
        # Hand ``fn`` to the user's dispatcher. One that raises (a Tk ``after`` on a
        # destroyed window, a closed asyncio loop) must not break the I/O thread:
        # it is reported once, and this task and every later one run on a
        # fallback thread of our own, in order, so no callback is lost.
        task = lambda: run_task(fn, self._report_error)  # noqa: E731
        fallback = self._fallback
        if fallback is not None:
            fallback(task)
            return
        try:
            self._user_dispatcher(task)
            return
        except Exception as exc:
            error = exc
        with self._fallback_lock:
            if self._fallback is None:
                log.error(
                    "dispatcher %r raised %s: running callbacks on a fallback thread from now on",
                    self._user_dispatcher,
                    type(error).__name__,
                )
                fb = ThreadDispatcher(self._report_error, "tether-dispatch-fallback")
                setattr(fb, LOG_CONTEXT, self._log_context)
                fb.start()
                self._fallback = fb
                report = True
            else:
                report = False
        self._fallback(task)
        if report:
            self._fallback(lambda: self._report_error(error))

    def _make_authenticator(self) -> Optional[TokenRefresher]:
        if self._auth_options is None:
            return None
        self._refresher = TokenRefresher(self._auth_options, self._clock)
        return self._refresher

    def __repr__(self) -> str:
        return f"<TetherClient {redact_url(self._config.url)} {self._loop.state.value}>"

    # ------------------------------------------------------------------ events

    @overload
    def on(self, name: str, handler: None = None) -> Callable[[_H], _H]: ...

    @overload
    def on(self, name: str, handler: Handler) -> Callable[[], None]: ...

    def on(
        self, name: str, handler: Optional[Handler] = None
    ) -> Union[Callable[[], None], Callable[[_H], _H]]:
        """Register ``handler(event)`` for event ``name``.

        Handlers run on the dispatcher, in order, never on the I/O thread. A
        handler that raises is logged and reported as an ``error`` event.

        Returns:
            A callable that unregisters the handler; or, without ``handler``, a
            decorator that registers the function and returns it unchanged.

        Raises:
            ValueError: unknown event name.
        """
        if name not in EVENT_NAMES:
            raise ValueError(f"unknown event {name!r}; one of {', '.join(EVENT_NAMES)}")
        if handler is None:

            def decorator(fn: _H) -> _H:
                self.on(name, fn)
                return fn

            return decorator
        if not callable(handler):
            raise TypeError("handler must be callable")
        with self._lock:
            self._handlers[name] = (*self._handlers.get(name, ()), handler)
            engine = self._loop
            if name == "message" and engine.message_buffer is None:
                engine.message_buffer = self._new_buffer(self._fan_out_message)

        def off() -> None:
            with self._lock:
                handlers = list(self._handlers.get(name, ()))
                if handler in handlers:
                    handlers.remove(handler)
                self._handlers[name] = tuple(handlers)
                engine = self._loop
                stream = engine.message_buffer
                if name == "message" and not handlers and stream is not None:
                    stream.close()
                    engine.message_buffer = None

        return off

    def _wants(self, name: str) -> bool:
        return bool(self._handlers.get(name))

    def _emit(self, event: Any) -> None:
        handlers = self._handlers.get(event.type)
        if not handlers:
            return

        def deliver() -> None:
            for handler in handlers:
                self._call(handler, event)

        self._dispatch_fn(deliver)

    def _call(self, handler: Handler, event: Any) -> None:
        try:
            handler(event)
        except Exception as exc:
            log.exception("exception in %r handler %r", event.type, handler)
            if not isinstance(event, ErrorEvent):  # never loop on a failing error handler
                self._report_error(exc)

    def _report_error(self, exc: BaseException) -> None:
        handlers = self._handlers.get("error")
        if handlers:
            event = ErrorEvent(exc)
            for handler in handlers:
                self._call(handler, event)

    def _fan_out_message(self, event: MessageEvent) -> None:
        for handler in self._handlers.get("message", ()):
            self._call(handler, event)

    def _on_state(self, state: State) -> None:
        with self._state_cond:
            if state is State.OPEN:
                # Counted, so a waiter sees an open that was over before it woke
                # (a server that accepts and closes at once).
                self._opens += 1
            self._state_cond.notify_all()

    # ------------------------------------------------------------------ connecting

    def connect(self, wait: bool = False, timeout: Optional[float] = None) -> None:
        """Start the I/O thread and connect; returns at once unless ``wait``.

        Args:
            wait: Block until the state is ``open`` (and authenticated).
            timeout: Seconds to wait with ``wait=True``; ``None`` waits forever.

        Raises:
            ClientClosed: the client was closed (or ended while waiting).
            ConnectTimeout: ``wait`` and not open within ``timeout``.
            AuthError: ``wait`` and the server refused the token for good.
        """
        with self._lock:
            if self._closing:
                raise ClientClosed("the client is closed")
            start = not self._started
            self._started = True
        opens = self._opens
        if start:
            if self._own_dispatcher is not None:
                self._own_dispatcher.start()
            _live_clients.add(self)
            self._loop.start()
        if wait:
            self._wait_open(timeout, opens)

    def wait_open(self, timeout: Optional[float] = None) -> None:
        """Block until the client is ``open`` (see :meth:`connect`)."""
        self._wait_open(timeout, self._opens)

    def _wait_open(self, timeout: Optional[float], opens: int) -> None:
        """Block until the client is open, or was since the count of opens was ``opens``."""
        deadline = Deadline(timeout, self._clock)
        with self._state_cond:
            engine = self._loop
            while engine.state is not State.OPEN and self._opens == opens:
                if engine.state is State.CLOSED:
                    fatal = engine.fatal
                    if isinstance(fatal, TetherError) and not isinstance(fatal, ClientClosed):
                        # A fresh copy each time: raising the stored exception
                        # itself would add this frame to its traceback at every
                        # call (a chain that grows without bound in a retry loop).
                        raise _fresh(fatal) from fatal.__cause__
                    raise ClientClosed("the client closed before it was open") from fatal
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    last = engine.last_failure
                    where = engine.not_open_yet()
                    why = f": last attempt failed: {type(last).__name__}: {last}" if last else ""
                    raise ConnectTimeout(f"not open within {timeout}s ({where}){why}") from last
                self._state_cond.wait(remaining)

    def __enter__(self) -> TetherClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ sending

    def send(
        self, payload: Any, channel: str = "default", *, timeout: Optional[float] = None
    ) -> Delivery:
        """Send ``payload`` (thread-safe).

        While the client is not open the message waits in the queue and is sent,
        in order, after the next (re)connect; ``send()`` never raises because the
        link is down. On a client that was never connected, the first ``send()``
        starts connecting, as :meth:`connect` does. A full queue makes ``send()``
        wait for room, whether the link is open, connecting or down (the default
        ``Queue(overflow="block")``: a loop of a million sends runs at link speed,
        pauses through an outage, and loses nothing); the drop policies are
        opt-in. A send from a callback never waits (see ``Queue``).

        Args:
            payload: With protocol ``tether`` any JSON-serialisable value. With
                ``raw``: ``str`` (text frame), ``bytes`` (binary frame), or any
                JSON-serialisable value (text frame).
            channel: The Tether channel (ignored by ``raw``).
            timeout: Seconds to wait for room in a full queue; ``None`` waits as
                long as it takes.

        Returns:
            A :class:`~tether_sync.delivery.Delivery` (a future): done once the
            server acknowledged it (DESIGN §5) or, with a server without acks, once
            the frame was handed to the kernel; failed if it was dropped.

        Raises:
            TypeError, ValueError: the payload cannot be encoded, or is larger than
                ``max_message_size``.
            QueueFull: no room came within ``timeout``, or the queue is full and
                its (opt-in) policy is ``"reject"`` while not open.
            ClientClosed: the client was closed.
        """
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        delivery = self._make_delivery(payload, channel)
        if not self._started:
            # A client that was never connected starts connecting, as connect()
            # does (DESIGN §1): a script that only sends must not end with its
            # messages queued on a client that never tried. After the payload
            # checks, so a bad payload starts nothing.
            self._start_on_send()
        loop = self._loop
        offline = loop.state is not State.OPEN
        if self._store is not None:
            return self._send_durable(delivery, timeout, offline)
        if offline:
            dropped = loop.outbox.put(delivery, timeout)
            if dropped:
                self._dropped(dropped)
            self._queued(delivery)
            return delivery
        # A message after a pause (a round trip's request, a script's occasional
        # send) is written from this thread at once if the I/O thread is idle
        # (IoLoop.write_now): no hand-off to wait for. A stream of sends goes the
        # usual way, coalesced by the I/O thread into few writes.
        now = _perf_counter()
        alone = now - self._last_send > DIRECT_GAP
        self._last_send = now
        try:
            dropped = loop.outbox.put(delivery, timeout, wake=not alone)
        finally:
            if alone:  # also after a Ctrl-C here: a put without a wake byte is never left behind
                loop.write_now()
        if dropped:
            self._dropped(dropped)
        return delivery

    def send_many(
        self, payloads: Iterable[Any], channel: str = "default", *, timeout: Optional[float] = None
    ) -> List[Delivery]:
        """Send several payloads on ``channel``, in order, as one batch (thread-safe).

        Like :meth:`send` for each payload, but the batch is queued with one
        lock acquisition per run of room (and, with a durable outbox, committed
        in one transaction), and no other sender's message comes between them
        while there is room for the whole batch.

        Every payload is encoded first: one that cannot be encoded raises and
        nothing of the batch is queued. After that, nothing raises for a full
        queue: each message that found no room within ``timeout`` (or was
        dropped by an opt-in policy) fails its own :class:`Delivery` with
        :class:`~tether_sync.QueueFull`, and the messages before it are queued.

        Args:
            payloads: The payloads (any iterable; consumed once).
            channel: The Tether channel (ignored by ``raw``).
            timeout: Seconds, for the whole batch, to wait for room in a full
                queue; ``None`` waits as long as it takes.

        Returns:
            One :class:`~tether_sync.delivery.Delivery` per payload, in order.

        Raises:
            TypeError, ValueError: a payload cannot be encoded, or is larger than
                ``max_message_size`` (nothing is queued).
            ClientClosed: the client was closed.
            TetherError: with a durable outbox, the batch could not be stored
                (its cause says why, e.g. an ``OSError`` for a full disk).
        """
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        # The ids as made (with a durable outbox, for its rows): reading them
        # back from the envelopes costs about 0.7 us a message.
        ids: Optional[List[str]] = [] if self._store is not None else None
        made = self._make_many(payloads, channel, ids)
        if not made:
            return made
        if not self._started:
            self._start_on_send()
        loop = self._loop
        offline = loop.state is not State.OPEN
        if ids is not None:
            self._send_many_durable(made, ids, timeout, offline)
            return made
        dropped, refused, why = loop.outbox.put_many(made, timeout)
        if dropped:
            self._dropped(dropped)
        for d in refused:
            d.set_exception(QueueFull(str(why)))
        if offline:
            for d in made:
                if not d.done():
                    self._queued(d)
        return made

    def _make_many(
        self, payloads: Iterable[Any], channel: str, ids: Optional[List[str]]
    ) -> List[Delivery]:
        """send_many's encoding: :meth:`_make_delivery` for each payload, in a loop.

        With protocol tether the envelope is built here from the pieces of one
        :func:`encode_data` result (the same text, byte for byte): the channel's
        prefix and the id's quoting are done once for the batch, not per
        message (about 0.5 us a message of ~2).
        """
        if self._config.protocol != "tether":
            return [self._make_delivery(payload, channel, ids) for payload in payloads]
        # Keys in the order channel, type, payload, id: the payload ``null``
        # is the last "null" before the id ``"~"`` (ids are [0-9a-f-]).
        sample = encode_data(channel, None, "~")
        at = sample.rindex('null,"id":"~"}')
        prefix = sample[:at]
        id_head, id_tail = sample[at + 4 :].split("~")
        encode = encode_json
        # A str payload is what encode_json's encoder returns for it (JSONEncoder.encode
        # calls this function for a str): two Python calls fewer a message.
        encode_str = _encode_basestring
        limit = self._config.max_message_size
        id_prefix, counter, dispatch = self._id_prefix, self._ids, self._dispatch_fn
        made: List[Delivery] = []
        for payload in payloads:
            msg_id = f"{id_prefix}{next(counter):012x}"
            text = encode_str(payload) if type(payload) is str else encode(payload)
            data = f"{prefix}{text}{id_head}{msg_id}{id_tail}".encode()  # one allocation
            if len(data) > limit:
                raise _too_big(len(data), limit)
            if ids is not None:
                ids.append(msg_id)
            made.append(Delivery(None, channel, payload, frames.OP_TEXT, data, dispatch))
        return made

    def _make_delivery(
        self, payload: Any, channel: str, ids: Optional[List[str]] = None
    ) -> Delivery:
        # Encode in the caller's thread (a bad payload fails here, never later).
        # ``ids``: the message id is appended to it too (send_many's rows).
        msg_id = f"{self._id_prefix}{next(self._ids):012x}"
        if ids is not None:
            ids.append(msg_id)
        if self._config.protocol == "tether":
            data = encode_data(channel, payload, msg_id).encode()
            op = frames.OP_TEXT
        elif isinstance(payload, str):
            data, op = payload.encode(), frames.OP_TEXT
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            data, op = bytes(payload), frames.OP_BINARY
        else:
            data, op = encode_json(payload).encode(), frames.OP_TEXT
        limit = self._config.max_message_size
        if len(data) > limit:
            raise _too_big(len(data), limit)
        # Protocol tether: the id is read back from the envelope when asked for,
        # not kept twice (memory per queued message, issue 22).
        kept = None if self._config.protocol == "tether" else msg_id
        return Delivery(kept, channel, payload, op, data, self._dispatch_fn)

    def _queued(self, d: Delivery) -> None:
        # A message that has to wait because the client is not open.
        self._loop.counters.queued += 1
        if self._handlers.get("queued"):
            self._emit(QueuedEvent(d.id, d.channel, d.payload))

    def _send_durable(self, d: Delivery, timeout: Optional[float], offline: bool) -> Delivery:
        # DESIGN §5 rule 11: send() returns once the message is committed to the
        # file (with its seq, rule 4). The store's commit hook queues it, in seq
        # order, so the wire order is the seq order whatever thread committed it.
        store = self._store
        assert store is not None
        if self._closing or self._loop.stopped.is_set():
            raise ClientClosed("the client is closed")
        # Wait for room here, before the message is numbered and stored: the
        # commit hook (_committed) runs on whichever thread commits, possibly for
        # other senders too, so it must never wait for room itself.
        deadline = Deadline(timeout, self._clock)
        self._loop.outbox.wait_room(timeout)
        store.append(d.id, d.channel, d._op, d._data, deadline.remaining(), d)
        exc = d._exc
        if (
            exc is not None
            and isinstance(exc, (QueueFull, ClientClosed))
            # A drop policy fails the Delivery; reject and a block timeout raise.
            and (isinstance(exc, ClientClosed) or self._loop.outbox.overflow in ("reject", "block"))
        ):
            raise exc
        if offline:
            self._queued(d)
        return d

    def _send_many_durable(
        self, made: List[Delivery], ids: List[str], timeout: Optional[float], offline: bool
    ) -> None:
        # One batch, numbered consecutively and committed in one transaction (up
        # to the store's MAX_BATCH): room is waited for once, before it is stored.
        store = self._store
        assert store is not None
        if self._closing or self._loop.stopped.is_set():
            raise ClientClosed("the client is closed")
        deadline = Deadline(timeout, self._clock)
        try:
            self._loop.outbox.wait_room(timeout)
        except QueueFull as exc:
            for d in made:
                d.set_exception(QueueFull(str(exc)))
            return
        if self._config.protocol == "tether":  # one channel, one opcode: one run
            store.append_batch(
                ids,
                made[0].channel,
                frames.OP_TEXT,
                [d._data for d in made],
                deadline.remaining(),
                made,
            )
        else:  # raw: text and binary frames may mix
            store.append_many(
                [(i, d.channel, d._op, d._data) for i, d in zip(ids, made)],
                deadline.remaining(),
                refs=made,
            )
        if offline:
            for d in made:
                if not d.done():
                    self._queued(d)

    def _committed(self, seq: int, d: Delivery) -> None:
        # The store's commit hook: on the committing thread, in seq order.
        d._seq = seq
        try:
            dropped = self._loop.outbox.put(d, reserved=True)
        except (QueueFull, ClientClosed) as exc:
            assert self._store is not None
            self._store.discard([seq])
            d.set_exception(exc)
            return
        if dropped:
            self._dropped(dropped)

    def _committed_many(self, seqs: List[int], made: List[Delivery]) -> None:
        # The store's commit hook for a transaction of several (send_many(), group
        # commit): one outbox lock for the batch where no policy has a say.
        for seq, d in zip(seqs, made):
            d._seq = seq
        n = self._loop.outbox.put_reserved_many(made)
        for seq, d in zip(seqs[n:], made[n:]):
            self._committed(seq, d)

    def _restore(self, m: Any) -> Delivery:
        """A Delivery for a message the outbox file kept from an earlier process."""
        payload: Any = m.data
        if self._config.protocol == "tether":
            try:
                payload = json.loads(m.data).get("payload")
            except (ValueError, AttributeError):
                payload = None
        elif m.op == frames.OP_TEXT:
            payload = m.data.decode("utf-8", "replace")
        d = Delivery(m.msg_id, m.channel, payload, m.op, m.data, self._dispatch_fn)
        d._seq = m.seq
        return d

    def _dropped(self, dropped: List[Delivery]) -> None:
        # Dropped by the overflow policy while not open: fail each, count them,
        # and say so once per episode (until the link opens again).
        loop = self._loop
        with self._lock:
            loop.counters.dropped_outbound += len(dropped)
            self._drops += len(dropped)
            first = not self._drop_episode
            self._drop_episode = True
        if first:
            log.warning(
                "outbound queue full (%d) while %s: dropping messages (overflow=%r)",
                loop.outbox.capacity,
                loop.state.value,
                loop.outbox.overflow,
            )
        if self._store is not None:  # a dropped message leaves the outbox file too
            self._store.discard([d._seq for d in dropped if d._seq > 0])
        for d in dropped:
            d.set_exception(QueueFull(f"dropped by queue overflow {loop.outbox.overflow!r}"))

    # ------------------------------------------------------------------ channels

    def _new_buffer(
        self,
        callback: Optional[Callable[[Any], None]],
        overflow: Optional[str] = None,
        size: Optional[int] = None,
    ) -> InboundBuffer:
        bp = self._config.backpressure
        policy = overflow if overflow is not None else bp.inbound_overflow
        # A queue consumer about to block in get() may read the socket itself
        # (IoLoop.read_now: no thread hand-off per reply). Only on "block"
        # buffers, which pace the socket to their consumer anyway. A drop policy
        # is chosen for streams where the newest value matters: the I/O thread
        # then reads as fast as the network gives, whatever the consumer's pace,
        # and the buffer drops; a consumer's own reads would pace the server
        # through TCP instead, and nothing would be dropped.
        direct = callback is None and policy == "block"
        return InboundBuffer(
            size if size is not None else bp.inbound_buffer_size,
            policy,
            callback=callback,
            dispatch=self._dispatch_fn,
            on_error=self._report_error,
            on_resume=lambda: self._loop.post(cmd.ResumeInbound()),
            reader=self._loop.read_now if direct else None,
        )

    def subscribe(
        self,
        channel: str,
        callback: Optional[Callable[[Any], None]] = None,
        *,
        overflow: Optional[str] = None,
        buffer_size: Optional[int] = None,
    ) -> Subscription:
        """Receive the payloads sent on ``channel``.

        The subscription is announced to the server now if open, and again after
        every reconnect.

        Args:
            channel: The channel name.
            callback: Called with each payload on the dispatcher. Without one, the
                returned :class:`~tether_sync.Subscription` is a blocking queue.
            overflow: This subscription's inbound policy (default: the client's
                ``Backpressure.inbound_overflow``, ``"block"``).
            buffer_size: This subscription's bound (default: the client's).

        Raises:
            TypeError, ValueError: a bad channel, callback, overflow or buffer_size.
            ClientClosed: the client is closed.
        """
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        if overflow is not None and overflow not in INBOUND_OVERFLOW:
            choices = ", ".join(map(repr, INBOUND_OVERFLOW))
            raise ValueError(f"overflow must be one of {choices}, got {overflow!r}")
        if buffer_size is not None and (
            isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1
        ):
            raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        if self._loop.state is State.CLOSED:
            raise ClientClosed("the client is closed")
        if self._autoconnect:
            self._connect_on_first_use()
        buf = self._new_buffer(callback, overflow, buffer_size)
        sub = Subscription(channel, buf, self._unsubscribe, callback)
        self._post_ordered(cmd.Subscribe(channel, buf))
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        buf = sub._buffer
        buf.close()
        self._post_ordered(cmd.Unsubscribe(sub.channel, buf))

    def _post_ordered(self, command: Union[cmd.Subscribe, cmd.Unsubscribe]) -> None:
        """Post ``command`` so that messages sent after this call follow its frame."""
        # The loop lifts the hold once its handler ran (Outbox.hold_for_command says
        # why). A command refused because the client ended keeps it: nothing pumps then.
        self._loop.outbox.hold_for_command()
        self._loop.post(command)

    # ------------------------------------------------------------------ auth

    def refresh_auth(self, timeout: Optional[float] = None) -> None:
        """Rotate the token now, over the open socket, and wait for the server's yes.

        Threads calling this at the same time share one rotation: ``get_token()`` is
        called once and all of them get its outcome. While offline, the rotation
        happens with the next connection.

        Args:
            timeout: Seconds to wait; ``None`` waits for the outcome.

        Raises:
            AuthError: the server refused the new token (twice), ``get_token()``
                failed, or no auth is configured.
            TimeoutError: no answer within ``timeout``.
            ClientClosed: the client is closed.
        """
        if self._refresher is None:
            raise AuthError("refresh_auth() needs auth= to be configured")
        if self._loop.stopped.is_set():
            raise ClientClosed("the client is closed")
        with self._refresh_lock:
            rnd = self._refresh_round
            start = rnd is None or rnd.done.is_set()
            if start:
                rnd = self._refresh_round = _RefreshRound()
            assert rnd is not None
            rnd.waiters += 1
        if start:
            self._loop.post(cmd.Refresh(rnd.resolve))
        if not rnd.done.wait(timeout):
            raise TimeoutError(f"the server did not confirm a new token within {timeout}s")
        if rnd.error is not None:
            raise rnd.error

    # ------------------------------------------------------------------ waiting

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Block until the queue, the write buffer and the kernel's send buffer are empty.

        With a server that acknowledges (DESIGN §5), it also waits for every ack.

        Returns:
            True when everything was handed over (acknowledged); False on timeout,
            if the client closed with messages left, or if any message was dropped
            or failed since the last ``flush()``.
        """
        loop = self._loop
        if not self._started or loop.stopped.is_set():
            return self._no_failures() and len(loop.outbox) == 0 and loop.outbox.taken == 0
        if threading.current_thread() is loop.thread:
            raise RuntimeError("flush() cannot be called on the I/O thread")
        event = threading.Event()
        loop.post(cmd.Flush(event.set))
        try:
            done = event.wait(timeout)
        except KeyboardInterrupt:
            deliveries.interrupted = True
            log.warning(
                "flush() interrupted: %d message(s) queued and %d in flight were not confirmed",
                len(loop.outbox),
                loop.outbox.taken,
            )
            raise
        clean = self._no_failures()
        return done and clean and not (loop.unsent or len(loop.outbox) or loop.outbox.taken)

    def _no_failures(self) -> bool:
        # Whether no message was dropped or failed since the last flush()/close().
        with self._lock:
            failures = self._loop.failures + self._drops
            clean = failures == self._failures_seen
            self._failures_seen = failures
            self._drop_episode = False
        return clean

    def close(self, timeout: float = 5.0) -> bool:
        """Drain the queue, close with 1000 and join every thread the client started.

        Called from a handler (dispatcher or I/O thread) it cannot wait for
        itself: it starts the close and returns False at once.

        Args:
            timeout: Seconds for everything: draining, the closing handshake and
                joining threads. Whatever is still queued then fails with
                :class:`~tether_sync.ClientClosed`.

        Returns:
            True if every queued message went out and every thread ended in time.
        """
        deadline = Deadline(timeout, self._clock)
        with self._lock:
            already = self._closing
            self._closing = True
            started = self._started
        _live_clients.discard(self)
        loop = self._loop
        if not started:
            if not already:
                loop.close_unstarted()
                if self._store is not None:
                    self._store.close(deadline.remaining() or 0.1)
            return loop.unsent == 0 and self._no_failures()
        loop.outbox.stop()
        # Keep a slice of the time for the closing handshake and the joins.
        remaining = deadline.remaining() or 0.0
        reserve = min(1.0, remaining * 0.2)
        loop.post(cmd.Close(self._clock.monotonic() + remaining - reserve))
        here = threading.current_thread()
        dispatcher = self._own_dispatcher
        if here is loop.thread or (dispatcher is not None and here is dispatcher.thread):
            # It cannot wait for itself: a short-lived closer thread finishes the
            # job (joins the loop, stops the dispatcher once this callback returns).
            log.warning("close() called from a tether_sync thread: not waiting for it")
            closer = threading.Thread(
                target=self._finish_close, args=(deadline, timeout), name="tether-close"
            )
            closer.daemon = True
            closer.start()
            return False
        return self._finish_close(deadline, timeout)

    def _finish_close(self, deadline: Deadline, timeout: float) -> bool:
        # The waiting half of close(): on the caller's thread, or on a closer thread.
        loop = self._loop
        dispatcher = self._own_dispatcher
        loop.stopped.wait(deadline.remaining())
        ok = loop.join(deadline.remaining())
        if self._refresher is not None:
            # A get_token() that hangs cannot be interrupted: report it, don't wait.
            ok = self._refresher.join(min(0.1, deadline.remaining() or 0.0)) and ok
        if dispatcher is not None:
            ok = dispatcher.stop(deadline.remaining()) and ok
        fallback = self._fallback
        if fallback is not None:
            ok = fallback.stop(deadline.remaining()) and ok
        stored = True
        if self._store is not None:
            stored = self._store.close(deadline.remaining() or 0.1)
            if not stored and not self._store.committer_alive:
                # The committer ended but could not close the file cleanly (a
                # full disk): its own log lines said why; no thread is left.
                log.warning("close(): the outbox file %s was not closed cleanly", self._store.path)
        if not ok or (self._store is not None and self._store.committer_alive):
            log.warning("close(): threads still running after %.3fs", timeout)
        ok = ok and stored
        if loop.unsent:
            log.warning("close(): %d queued message(s) were not sent", loop.unsent)
        return ok and loop.unsent == 0 and loop.stopped.is_set() and self._no_failures()

    # ------------------------------------------------------------------ telemetry

    @property
    def url(self) -> str:
        """The first (primary) endpoint as given, credentials included: never log it.

        The current one, redacted for showing, is ``stats().endpoint``.
        """
        return self._config.url

    @property
    def urls(self) -> Tuple[str, ...]:
        """Every endpoint, in the order they are tried."""
        return self._config.urls

    @property
    def state(self) -> State:
        """``idle``, ``connecting``, ``open``, ``reconnecting`` or ``closed`` (a str enum)."""
        return self._loop.state

    @property
    def queue_depth(self) -> int:
        """Messages waiting in the outbound queue."""
        return len(self._loop.outbox)

    @property
    def buffered_amount(self) -> int:
        """Bytes framed but not yet accepted by the kernel, plus the kernel's unsent bytes."""
        return self._loop.buffered_amount

    @property
    def reconnect_attempt(self) -> int:
        """The current reconnection attempt (0 while open)."""
        return self._loop.attempt

    def stats(self) -> Stats:
        """A frozen snapshot of state and counters (DESIGN §2)."""
        return self._loop.snapshot()

    # ------------------------------------------------------------------ exit

    def _exit_flush(self) -> None:
        if self._loop.stopped.is_set() or not self._started or self._pid != os.getpid():
            return
        # One deadline for the flush and the close: never more than
        # exit_flush_timeout (+ a 0.1 s close when it is 0, or after Ctrl-C).
        budget = self._exit_flush_timeout
        # Ctrl-C: either it interrupted one of our waits, or it ended the script
        # elsewhere (the interpreter records an unhandled exception in
        # sys.last_value before it runs the exit hooks).
        interrupted = deliveries.interrupted or isinstance(
            getattr(sys, "last_value", None), KeyboardInterrupt
        )
        if interrupted:
            log.warning(
                "interrupted (Ctrl-C): not flushing at exit; %d queued, %d in flight left",
                len(self._loop.outbox),
                self._loop.outbox.taken,
            )
            budget = 0.0
        deadline = Deadline(max(budget, 0.1), self._clock)
        if budget > 0:
            log.info("interpreter exit: flushing %s for up to %.1fs", redact_url(self.url), budget)
            self.flush(max(0.0, (deadline.remaining() or 0.0) - 0.05))
        self.close(timeout=deadline.remaining() or 0.0)
        # The final count once the I/O thread ended the client; else (a close cut
        # short, e.g. 0.1 s after Ctrl-C) what it still held.
        lost = self._loop.unsent or self._loop.in_hand()
        if lost and log.isEnabledFor(logging.WARNING) and not _shown(logging.WARNING):
            # close() logged it, but no handler shows it (the library's logger
            # has only its NullHandler): a script that loses messages as it ends
            # must not end in silence (DESIGN §1: nothing is lost silently).
            if budget > 0:
                why = f"not delivered within exit_flush_timeout={budget}s"
            elif interrupted:
                why = "interrupted by Ctrl-C: no exit flush"
            else:
                why = "exit_flush_timeout=0: no exit flush"
            sys.stderr.write(
                f"tether_sync: {lost} message(s) for {redact_url(self.url)} were not sent "
                f"before the interpreter exited ({why})\n"
            )

    # ------------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        """In a forked child: become a fresh, unconnected client (DESIGN, issue 12).

        The child never touches the parent's socket or threads (they do not exist
        here, and their locks may be held forever). What the parent queued stays
        the parent's to send: the child's copies of those Deliveries fail at once.
        Handlers registered with ``on()`` carry over; subscriptions do not (they
        are closed: a ``get()`` raises ``ClientClosed``). A client the parent had
        connected connects again on first use, with a new session.
        """
        old = self._loop
        inherited = old.unfinished()  # no lock: only this thread exists
        handlers = self._handlers
        subscriptions = old.subscription_buffers()
        was_started = self._started and not self._closing
        self.__init__(*self._ctor_args, **self._ctor_kwargs)  # type: ignore[misc]
        self._handlers = handlers
        if handlers.get("message"):
            self._loop.message_buffer = self._new_buffer(self._fan_out_message)
        self._autoconnect = was_started
        reason = ClientClosed("inherited by a forked child: the parent process sends it")
        for d in inherited:
            d._dispatch = None  # the parent's dispatcher thread does not exist here
            d.set_exception(reason)
        for buf in subscriptions:
            buf.reset_after_fork()
        log.debug("forked child: %s is a fresh, unconnected client", redact_url(self._config.url))

    def _start_on_send(self) -> None:
        with self._lock:
            if self._closing:
                raise ClientClosed("the client is closed")
        if not self._autoconnect:
            log.debug("send() on %s before connect(): connecting now", redact_url(self._config.url))
        self._autoconnect = False
        self.connect()

    def _connect_on_first_use(self) -> None:
        if self._autoconnect and not self._started:
            self._autoconnect = False
            self.connect()


def _fresh(exc: BaseException) -> BaseException:
    """A copy of ``exc`` (same type, args and attributes) with no traceback."""
    try:
        twin = copy.copy(exc)
    except Exception:  # an exception type that cannot be copied
        return ClientClosed(f"the client closed: {type(exc).__name__}: {exc}")
    twin.__traceback__ = None
    return twin


def _endpoints(url: Any) -> Tuple[str, ...]:
    """``url=``: one URL, or a non-empty list/tuple of them, each checked."""
    if isinstance(url, str):
        return (validate_url(url),)
    if not isinstance(url, (list, tuple)):
        raise TypeError(f"url must be a str or a non-empty list of str, not {type(url).__name__}")
    if not url:
        raise ValueError("url: the list of endpoints is empty")
    urls = []
    for i, each in enumerate(url):
        try:
            urls.append(validate_url(each))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"url[{i}]: {exc}") from None
    return tuple(urls)


def _reset_clients_in_child() -> None:
    # After os.fork(), in the child: only the forking thread exists. Locks that
    # other threads held stay held forever, so everything is made anew.
    deliveries.reset_after_fork()
    for client in list(_all_clients):
        try:
            client._after_fork_in_child()
        except Exception:  # pragma: no cover - never break a fork
            log.exception("resetting %r after fork failed", client)
    _live_clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_clients_in_child)


@atexit.register
def _flush_at_exit() -> None:
    # Threads are daemons, so they are still alive here: flush what scripts sent
    # without closing their client, then close it (bounded by exit_flush_timeout).
    for client in list(_live_clients):
        try:
            client._exit_flush()
        except Exception:  # pragma: no cover - never break interpreter exit
            log.exception("flushing %r at exit failed", client)


class _RefreshRound:
    """One token rotation that any number of ``refresh_auth()`` callers wait on."""

    __slots__ = ("done", "error", "waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Optional[BaseException] = None
        self.waiters = 0  # callers sharing this round

    def resolve(self, error: Optional[BaseException]) -> None:
        self.error = error
        self.done.set()


def _too_big(size: int, limit: int) -> ValueError:
    """The error of a message over ``max_message_size`` (send() and send_many())."""
    return ValueError(f"message of {size} bytes is larger than max_message_size ({limit})")
