"""Driving the engine with a fake clock and scripted sockets: no server, no sleeps.

The engine tier (DESIGN §4) runs the real I/O loop, connector threads and
dispatcher, but replaces the two things that make integration tests slow:

* **time**: :class:`EngineClock` is a :class:`~tether_sync.clock.Clock` that moves
  only when the test calls :meth:`EngineClock.advance`, which then wakes the loop
  so it re-evaluates its timers at once (backoff, connect timeout, close
  deadline, heartbeat) instead of waiting in real time;
* **the server**: :class:`Dialing` stands in for the network part of an attempt.
  It replaces ``transport.open_socket`` and ``transport.handshake`` (the TCP
  connect and websocket-client's upgrade), so the real connector code of
  ``engine/attempts.py`` runs, but each attempt waits for the test:
  :meth:`Attempt.accept` hands the loop one end of a ``socket.socketpair()``
  (the opening handshake counts as done) and returns the other as a
  :class:`ServerEnd` the test drives frame by frame; :meth:`Attempt.fail`
  makes the attempt fail; an attempt left alone blocks like a connect that
  never answers, until ``close()`` or the connect timeout aborts it (a
  ``shutdown()`` of its tracked socket, as for a real connect).

Every client of the tier is built by :meth:`Rig.client` and wrapped in a
:class:`Driven` (the one place that touches the engine's insides, to adapt when
they change). A test waits only on events, with a timeout: the client's events
(:class:`Recorder`), the attempts (:meth:`Dialing.next`), frames on the server
end, and :meth:`Driven.sync`, which returns once the I/O thread has run a whole
iteration after the call (so "nothing happened" can be asserted without
waiting in real time).
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from protocol.sessionkit import ClientFrames, Frame, close_frame, server_frame

from tether_sync import TetherClient
from tether_sync.engine import commands as cmd
from tether_sync.engine import transport
from tether_sync.protocol import frames

WAIT = 10.0  # seconds (real) any single wait of a test may take before it fails
EVENTS = (
    "open",
    "close",
    "reconnecting",
    "state_change",
    "error",
    "flushed",
    "backpressure",
    "message",
    "auth_refreshed",
)


class EngineClock:
    """Monotonic and wall seconds that move only when the test says so.

    :meth:`advance` wakes every loop built on this clock, so the timers that
    fell due run at once (the loop's selector otherwise waits in real time).
    """

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()  # guards _now (read by the I/O and test threads)
        self._now = start
        self._wall_offset = wall - start
        self._wakes: List[Callable[[], None]] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time(self) -> float:
        with self._lock:
            return self._now + self._wall_offset

    def on_advance(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` after every :meth:`advance` (a client posts a neutral command)."""
        self._wakes.append(wake)

    def advance(self, dt: float) -> float:
        """Move time ``dt`` seconds on and wake the loops; the new time."""
        assert dt >= 0
        with self._lock:
            self._now += dt
            now = self._now
        for wake in list(self._wakes):
            wake()
        return now


class MaxJitter:
    """An rng for the backoff: every full-jitter delay is its cap (exact delays)."""

    def uniform(self, a: float, b: float) -> float:
        return b


# ------------------------------------------------------------------ the server side


class ServerEnd:
    """The server's end of one accepted connection (a blocking socket, real bytes).

    Reads client frames with sessionkit's independent parser (each must be
    masked) and writes unmasked server frames.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(WAIT)
        self.sock = sock
        self._parser = ClientFrames()
        self._frames: List[Frame] = []
        self.tokens: List[str] = []  # tokens the client presented (hello_ok)

    def read_frames(self, n: int = 1) -> List[Frame]:
        """The next ``n`` frames the client wrote (blocks until they came)."""
        while len(self._frames) < n:
            data = self.sock.recv(1 << 16)
            assert data, "the client closed the connection"
            self._frames.extend(self._parser.feed(data))
        out, self._frames = self._frames[:n], self._frames[n:]
        return out

    def read_text(self, n: int = 1) -> List[str]:
        """The payloads of the next ``n`` frames, which must be text."""
        got = self.read_frames(n)
        assert all(f.opcode == frames.OP_TEXT for f in got), got
        return [f.payload.decode() for f in got]

    def read_json(self) -> Any:
        return self.read_frames(1)[0].json

    def read_until_close(self) -> Tuple[List[Frame], Frame]:
        """The frames before the client's close frame, and that frame."""
        before: List[Frame] = []
        while True:
            (frame,) = self.read_frames()
            if frame.opcode == frames.OP_CLOSE:
                return before, frame
            before.append(frame)

    def read_until_eof(self) -> List[Frame]:
        """Every frame until the client closes its end."""
        out, self._frames = self._frames, []
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                return out
            out.extend(self._parser.feed(data))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.send(server_frame(frames.OP_TEXT, text))

    def send_json(self, obj: Any) -> None:
        self.send_text(json.dumps(obj))

    def hello_ok(self, acked: int = 0, auth_ok: bool = True) -> Dict[str, Any]:
        """Answer the opening of a tether link, as an in-order server; the hello.

        The client writes ``tether:hello``, then ``tether:auth`` (with auth; its
        token is kept in :attr:`tokens`) or a ``tether:ping`` (without); the
        server answers ``hello-ok`` (with ``acked``), then ``auth-ok`` or the pong.
        """
        hello = self.read_json()
        assert hello["type"] == "tether:hello", hello
        then = self.read_json()
        assert then["type"] in ("tether:ping", "tether:auth"), then
        self.send_json(
            {
                "type": "tether:hello-ok",
                "session": hello["session"],
                "features": ["ack", "resume"],
                "acked": acked,
            }
        )
        if then["type"] == "tether:auth":
            self.tokens.append(then["token"])
            self.send_json({"type": "tether:auth-ok", "ok": auth_ok})
        else:
            self.send_json({"type": "tether:pong", "ts": then["ts"]})
        return dict(hello)

    def close_with(self, code: int, reason: str = "") -> None:
        """Send a close frame (the closing handshake's first half)."""
        self.send(close_frame(code, reason))

    def drop(self) -> None:
        """The connection is lost: EOF without a closing handshake."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ------------------------------------------------------------------ attempts


class Attempt:
    """One connection attempt, waiting for the test to say how it ends."""

    def __init__(self, number: int, url: str) -> None:
        self.number = number  # 1, 2, 3 ... across the client's life
        self.url = url
        self.ended = threading.Event()  # the connector thread left open_socket()
        self._gate, self._opener = socket.socketpair()  # the connector blocks on _gate
        self._outcome: Any = None
        self.server: Optional[ServerEnd] = None  # once accepted
        self.aborted = False  # ended by an abort (close() or the connect timeout)
        self.thread: Optional[threading.Thread] = None  # the connector thread running it

    def accept(self) -> ServerEnd:
        """The handshake succeeds: the loop gets one end of a fresh socketpair."""
        client_end, server_end = socket.socketpair()
        # Kept here too: a ServerEnd the test drops must not close the link (GC).
        self.server = server = ServerEnd(server_end)
        self._answer(client_end)
        return server

    def fail(self, error: BaseException) -> None:
        """The attempt fails with ``error`` (as a refused connect or a bad upgrade)."""
        self._answer(error)

    def _answer(self, outcome: Any) -> None:
        self._outcome = outcome
        self._opener.send(b"!")

    def run(self, track: transport.Track) -> socket.socket:
        """The connector thread's part: block until answered or aborted."""
        self.thread = threading.current_thread()
        try:
            if not track(transport.TCP, self._gate):
                raise ConnectionAbortedError("aborted before the connect")
            try:
                got = self._gate.recv(1)  # an abort's shutdown() ends this with b""
            except OSError:
                got = b""
            outcome = self._outcome if got else None
            if outcome is None:
                self.aborted = True
                raise ConnectionAbortedError("connection attempt aborted")
            if isinstance(outcome, BaseException):
                raise outcome
            track(transport.UPGRADE, outcome)
            assert isinstance(outcome, socket.socket)
            return outcome
        finally:
            track(transport.TCP, None)
            self._gate.close()
            self._opener.close()
            self.ended.set()


class Dialing:
    """Stands in for the network part of every attempt (see the module docstring)."""

    def __init__(self) -> None:
        self._new: queue.Queue[Attempt] = queue.Queue()
        self._lock = threading.Lock()  # guards started
        self.started: List[Attempt] = []

    def open_socket(
        self,
        url: str,
        *,
        timeout: float,
        ws_options: Dict[str, Any],
        sslopt: Optional[Dict[str, Any]],
        track: transport.Track,
    ) -> socket.socket:
        # On the connector thread, in place of the TCP connect (and TLS).
        with self._lock:
            attempt = Attempt(len(self.started) + 1, url)
            self.started.append(attempt)
        self._new.put(attempt)
        return attempt.run(track)

    @staticmethod
    def handshake(ws: Any, url: str, *, extra: Optional[Dict[str, Any]] = None, **_: Any) -> Any:
        # In place of websocket-client's upgrade: the socket is ready as it is.
        assert extra is not None
        return extra["socket"]

    def next(self) -> Attempt:
        """The next attempt the engine starts (waits for it)."""
        try:
            return self._new.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no connection attempt within {WAIT}s") from None

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.started)


# ------------------------------------------------------------------ events


class Recorder:
    """Every event a client emitted, in order, as its handlers saw them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()  # guards events; notified on each new one
        self.events: List[Tuple[str, Any]] = []
        self.threads: set[str] = set()  # the threads handlers ran on

    def __call__(self, event: Any) -> None:
        with self._cond:
            self.events.append((event.type, event))
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def of(self, name: str) -> List[Any]:
        with self._cond:
            return [e for n, e in self.events if n == name]

    def names(self, *only: str) -> List[str]:
        with self._cond:
            return [n for n, _ in self.events if not only or n in only]

    def wait_for(
        self, name: str, count: int = 1, where: Callable[[Any], bool] = lambda e: True
    ) -> Any:
        """The ``count``-th event ``name`` that matches ``where`` (waits for it)."""

        def found() -> List[Any]:
            return [e for n, e in self.events if n == name and where(e)]

        with self._cond:
            if not self._cond.wait_for(lambda: len(found()) >= count, WAIT):
                raise AssertionError(f"no {name!r} event #{count} within {WAIT}s: {self.events}")
            return found()[count - 1]

    def states(self) -> List[str]:
        return [e.current for e in self.of("state_change")]


# ------------------------------------------------------------------ the rig


class Driven:
    """One client of the tier, with the hooks the tests drive it through."""

    def __init__(self, client: TetherClient, rig: Rig) -> None:
        self.client = client
        self.events = Recorder()
        for name in EVENTS:
            client.on(name, self.events)
        # The engine seam of the whole tier (adapt here when the engine moves):
        # the client's Engine, through its interface only: post() (wrapped, to
        # see what the client posts) and its I/O thread.
        engine = client._loop
        self._engine = engine
        self._rig = rig
        self._dispatcher = client._own_dispatcher  # None with a user's dispatcher=
        self._posted = threading.Condition()  # guards posted; notified on each post
        self.posted: List[Any] = []  # every command user threads posted, in order
        post = engine.post
        # After every advance of the clock, a neutral command wakes the loop, which
        # then checks its timers against the new time (see sync()).
        rig.clock.on_advance(lambda: post(cmd.Connected(0, _Answer())))

        def recording_post(command: Any) -> None:
            with self._posted:
                self.posted.append(command)
                self._posted.notify_all()
            post(command)

        engine.post = recording_post

    def wait_handled(self, kind: type) -> None:
        """Wait until a command of ``kind`` was posted (e.g. close()'s ``Close``)
        and the I/O thread has run it (commands run in the order posted)."""
        with self._posted:
            ok = self._posted.wait_for(lambda: any(isinstance(c, kind) for c in self.posted), WAIT)
        assert ok, f"no {kind.__name__} command posted within {WAIT}s"
        self.sync()

    def sync(self) -> None:
        """Return once the I/O thread ran a whole iteration that began after this call.

        Two round trips through the command queue: the second is taken in an
        iteration that started after the first was answered, so that iteration
        checked the timers against the clock as it is now, and read what the
        socket held. The round trip is a connector's answer for an attempt that
        is not in progress (attempt 0): the loop drops it, changing nothing, and
        closes its "socket", which is the answer.
        """
        for _ in range(2):
            answer = _Answer()
            self._engine.post(cmd.Connected(0, answer))
            assert answer.closed.wait(WAIT), "the I/O loop did not answer a command"

    def io_thread(self) -> Optional[threading.Thread]:
        return self._engine.thread

    def live_threads(self) -> List[threading.Thread]:
        """The threads this client started (I/O, connectors, dispatcher) still alive."""
        started = [self._engine.thread]
        if self._dispatcher is not None:
            started.append(self._dispatcher.thread)
        started += [a.thread for a in self._rig.dialing.started]
        return [t for t in started if t is not None and t.is_alive()]

    def close_in_background(self, timeout: float) -> Closing:
        """Start ``close(timeout)`` on a thread of the test (it blocks)."""
        return Closing(self.client, timeout)


class _Answer:
    """Stands in for the socket of a stale ``Connected``: its close() is the answer."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


class Closing:
    """A ``close()`` call running on its own thread, and its result."""

    def __init__(self, client: TetherClient, timeout: float) -> None:
        self.result: Optional[bool] = None
        self.error: Optional[BaseException] = None
        self.done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(client, timeout), name="test-close", daemon=True
        )
        self._thread.start()

    def _run(self, client: TetherClient, timeout: float) -> None:
        try:
            self.result = client.close(timeout)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.done.set()

    def wait(self) -> Optional[bool]:
        assert self.done.wait(WAIT), "close() did not return"
        self._thread.join(WAIT)
        if self.error is not None:
            raise self.error
        return self.result


class Rig:
    """Builds clients on the fake clock and the scripted network (one per test)."""

    def __init__(self) -> None:
        self.clock = EngineClock()
        self.dialing = Dialing()
        self._driven: List[Driven] = []

    def client(self, url: Any = "ws://engine.test/ws", **options: Any) -> Driven:
        """A client on the rig's clock and network (protocol raw unless said)."""
        options.setdefault("protocol", "raw")
        options.setdefault("rng", MaxJitter())
        options.setdefault("connect_timeout", 5.0)
        options.setdefault("heartbeat", False)  # on only where a test says so
        client = TetherClient(url, clock=self.clock, **options)
        driven = Driven(client, self)
        self._driven.append(driven)
        return driven

    def connect(self, driven: Driven) -> ServerEnd:
        """connect(), accept the first attempt and wait for ``open`` (protocol raw)."""
        driven.client.connect()
        server = self.dialing.next().accept()
        driven.events.wait_for("open")
        return server

    def advance_until(self, done: threading.Event, step: float) -> bool:
        """Move the clock on by ``step`` each time ``done`` is not set within 2 ms
        (for what waits on a short timer of the engine, e.g. the kernel poll);
        False if ``done`` was not set within ``WAIT`` seconds of real time."""
        end = time.monotonic() + WAIT
        while not done.wait(0.002):
            if time.monotonic() >= end:
                return False
            self.clock.advance(step)
        return True

    def teardown(self) -> None:
        """Close every client, moving time on until each close() returned."""
        for driven in self._driven:
            closing = Closing(driven.client, 5.0)
            self.advance_until(closing.done, 1.0)  # past any drain deadline, grace, backoff
        for attempt in self.dialing.started:
            if attempt.server is not None:
                attempt.server.sock.close()


__all__ = [
    "EVENTS",
    "WAIT",
    "Attempt",
    "Closing",
    "Dialing",
    "Driven",
    "EngineClock",
    "MaxJitter",
    "Recorder",
    "Rig",
    "ServerEnd",
]
