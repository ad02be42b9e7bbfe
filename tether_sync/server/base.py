"""The machinery under ``TetherServer``: the loop thread, lifecycle and connection bookkeeping.

The server runs a private asyncio loop in a daemon thread so that plain,
blocking code (tests, the demo panel, scripts) can start it, drive faults and
inspect what it received without touching asyncio. State that other threads
read (records, connections) is guarded by one :class:`threading.Condition`,
notified on every change, which is what lets tests wait for a condition
instead of sleeping. The public API on top of this lives in :mod:`.core`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import threading
import time
from types import TracebackType
from typing import (
    Any,
    Callable,
    Coroutine,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.protocol import State

from tether_sync.redact import redact_url

from .bundled import serve_bundled
from .codec import encode
from .hub import Frame, Hub, Peer
from .state import OutgoingData, Received, TetherConnection
from .store import MemoryStore, Store, StoreUnavailable
from .transport import GatedConnection, NoDebugLogger, connection_class

__all__ = ["ServerBase", "is_data", "to_frame"]

log = logging.getLogger("tether_sync.server")
_T = TypeVar("_T")
# The protocol's kinds of a data envelope (type "data" with a channel), tunnelled controls included.
_DATA_KINDS = ("data", "tunnel")
_S = TypeVar("_S", bound="ServerBase")


class ServerBase:
    """Lifecycle and loop-thread internals of :class:`~tether_sync.server.TetherServer`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        require_auth: bool = False,
        max_size: int = 2**20,
        close_timeout: float = 1.0,
        extensions: bool = True,
        broadcast: bool = False,
        session_ttl: float = 600.0,
        history_size: int = 1000,
        history_max_age: float = 300.0,
        record_path: Optional[str] = None,
        compression: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
        store: Optional[Store] = None,
        node: Optional[str] = None,
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`."""
        if not math.isfinite(session_ttl) or session_ttl < 0:
            raise ValueError(f"session_ttl must be a finite number >= 0, got {session_ttl!r}")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0:
            raise ValueError(f"history_size must be an int >= 0, got {history_size!r}")
        if not history_max_age > 0:  # also refuses NaN
            raise ValueError(f"history_max_age must be > 0, got {history_max_age!r}")
        if compression not in (None, "deflate"):
            raise ValueError(f"compression must be None or 'deflate', got {compression!r}")
        self.host = host
        self._port = port
        self.require_auth = require_auth
        self.max_size = max_size
        self.close_timeout = close_timeout
        self.extensions = extensions
        self.broadcast_mode = broadcast
        self.record_path = record_path
        self.compression = compression
        self._clock = clock
        # DESIGN §5 state lives in the hub's store (its own lock). With the
        # default MemoryStore sessions survive stop()/start() and the channel
        # history restarts (new epochs) at every start(); a shared store
        # (RedisStore) keeps both, as the service outlives one node.
        self._store: Store = store if store is not None else MemoryStore(clock)
        if node is None and record_path is not None:
            # A node's record file is its identity across restarts (claims it
            # left unfinished are settled against it at start()).
            node = "record:" + os.path.abspath(record_path)
        self.hub = Hub(
            self._store,
            history_size=history_size,
            history_age=history_max_age,
            session_ttl=session_ttl,
            broadcast=broadcast,
            node=node,
        )
        self._duplicates = 0
        self._record_fd: Optional[int] = None
        # One RLock-backed condition guards everything other threads read, so a
        # wait_for() predicate may call back into the server's accessors.
        self._cond = threading.Condition(threading.RLock())
        self._records: List[Received] = []
        # Whether received frames are kept in _records (for the inspection API);
        # ``tether-sync serve`` turns it off, as nobody can read them there and
        # a long-running node would keep every message it ever received.
        self._keep_records = True
        # Running counts of accepted data envelopes (total, per channel), so that
        # wait_for_data() predicates stay O(1) however much was received.
        self._data_total = 0
        self._data_by_channel: Dict[Any, int] = {}
        self._open: Dict[int, TetherConnection] = {}
        self._history: List[TetherConnection] = []
        self._transports: Set[GatedConnection] = set()
        self._next_id = 0
        self._broadcasts = 0
        # Fault modes: they also apply to connections accepted while they are on.
        self._blackhole = False
        self._paused = False
        self._default_latency = 0.0
        # Lifecycle, serialised by _lifecycle so stop() never races a call into the loop.
        self._lifecycle = threading.RLock()
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread_id: Optional[int] = None
        # Resolved with (abrupt, timeout) by stop().
        self._stop_request: Optional[asyncio.Future[Tuple[bool, float]]] = None
        self._start_error: Optional[BaseException] = None
        self._tasks: Set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state}, {len(self._open)} open>"

    # Lifecycle

    def start(self, timeout: float = 5.0) -> None:
        """Start listening in a background thread; returns once the socket is bound.

        Raises:
            RuntimeError: If the server is already running.
            OSError: If the port cannot be bound.
            TimeoutError: If the loop did not come up within ``timeout`` seconds.
        """
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError("TetherServer is already running")
            if self.record_path is not None and self._record_fd is None:
                _trim_partial_line(self.record_path)
                # Raises OSError (like a busy port) when the file can't be opened.
                self._record_fd = os.open(
                    self.record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
                )
            self._store.reset_channels()
            try:
                self.hub.start(settle=self._recorded_highest)
            except StoreUnavailable:
                # Served anyway: hellos are refused (1011) until the store is back.
                log.warning("store unavailable at start; hellos are refused until it is back")
            ready = threading.Event()
            self._start_error = None
            thread = threading.Thread(
                target=self._run, args=(ready,), name="tether-server", daemon=True
            )
            self._thread = thread
            thread.start()
            if not ready.wait(timeout):
                raise TimeoutError("TetherServer did not start in time")
            error = self._start_error
            if error is not None:
                thread.join(timeout)
                self._thread = None
                self._loop = None
                self._close_record()
                self.hub.close()
                raise error
            log.info("listening on %s", self.url)

    def stop(self, timeout: float = 5.0, *, abrupt: bool = False) -> None:
        """Stop listening and end every connection, then join the loop thread.

        New connection attempts are refused from the moment this is called.

        Args:
            timeout: Seconds allowed for connections to close before they are reset.
            abrupt: Reset every connection (RST, no close frame) instead of a clean
                close with 1001 (going away).

        Fault modes (blackhole, pause-reading) and the default latency are lifted:
        a restarted server is healthy. Records and connection history are kept.
        Stopping a stopped server does nothing.
        """
        if self._on_loop_thread():
            raise RuntimeError("stop() cannot be called from the server's own thread")
        with self._lifecycle:
            thread, loop, request = self._thread, self._loop, self._stop_request
            if thread is None:
                return
            if loop is not None and request is not None:
                try:
                    loop.call_soon_threadsafe(_resolve, request, (abrupt, timeout))
                except RuntimeError:  # the loop already ended on its own
                    pass
            # _shutdown resets whatever has not closed within ``timeout``.
            thread.join(timeout + 2.0)
            alive = thread.is_alive()
            self._thread = None
            self._loop = None
            self._loop_thread_id = None
            self._stop_request = None
            with self._cond:
                self._blackhole = False
                self._paused = False
                self._default_latency = 0.0
                self._cond.notify_all()
            if not alive:
                self._close_record()
                self.hub.close()
            if alive:
                raise TimeoutError("TetherServer thread did not stop in time")
            log.info("stopped")

    def restart(self, timeout: float = 5.0, *, abrupt: bool = False) -> None:
        """:meth:`stop` then :meth:`start` again on the same port."""
        self.stop(timeout, abrupt=abrupt)
        self.start(timeout)

    def __enter__(self: _S) -> _S:
        """Start the server (if not running) and return it."""
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Stop the server."""
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._thread is not None

    @property
    def port(self) -> int:
        """The TCP port (the real one once started, even if 0 was asked for)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self._port}/"

    # TetherConnection's owner interface

    def _send_to(self, conn: TetherConnection, data: OutgoingData) -> bool:
        payload = to_frame(data)

        def run() -> bool:
            if not conn.open or conn._ws.blackholed:
                return False
            conn._ws.sender.post(payload)
            return True

        return self._on_loop(run, False)

    def _close_conn(self, conn: TetherConnection, code: int, reason: str) -> bool:
        def run() -> bool:
            if not conn.open:
                return False
            self._spawn(conn._ws.close(code, reason))
            return True

        return self._on_loop(run, False)

    def _drop_conn(self, conn: TetherConnection) -> bool:
        def run() -> bool:
            if conn._ws not in self._transports:
                return False
            conn._ws.abort_with_reset()
            return True

        return self._on_loop(run, False)

    # Connection driver and transport hub interfaces

    def _record_run(
        self, conn_id: int, session: Optional[str], handled: Sequence[Tuple[Frame, bool]]
    ) -> None:
        """Count (and keep, see ``_keep_records``) frames handled together; wake waiters once.

        Args:
            conn_id: The connection they arrived on.
            session: Its session (None before a hello).
            handled: The frames, each with whether it was a duplicate.
        """
        at = time.monotonic()
        with self._cond:
            if self._keep_records:
                self._records.extend(
                    Received(
                        conn_id=conn_id,
                        binary=isinstance(frame.data, bytes),
                        raw=frame.data,
                        message=frame.message,
                        is_json=frame.is_json,
                        at=at,
                        refused=frame.refused,
                        session=session,
                        duplicate=duplicate,
                    )
                    for frame, duplicate in handled
                )
            for frame, duplicate in handled:
                if duplicate:
                    self._duplicates += 1
                elif frame.kind in _DATA_KINDS and not frame.refused:
                    # What is_data() counts: type "data" with a "channel" key.
                    self._data_total += 1
                    channel = frame.message["channel"]
                    if isinstance(channel, str):
                        by_channel = self._data_by_channel
                        by_channel[channel] = by_channel.get(channel, 0) + 1
            self._cond.notify_all()

    def _write_record(self, session: Optional[str], message: Any) -> None:
        fd = self._record_fd
        if fd is not None:
            # Written before anything else happens to the message, so before the
            # ack that covers it: after a kill -9 the file holds every acked one.
            line = encode(
                {
                    "session": session,
                    "seq": message.get("seq"),
                    "channel": message.get("channel"),
                    "payload": message.get("payload"),
                }
            )
            _write_all(fd, (line + "\n").encode("utf-8"))

    def _recorded_highest(self, sid: str) -> int:
        """The highest ``seq`` of ``sid`` in the record file (settling this node's claims)."""
        if self.record_path is None:
            return 0
        top = 0
        for entry in _read_records(self.record_path):
            seq = entry.get("seq")
            if entry.get("session") == sid and isinstance(seq, int) and seq > top:
                top = seq
        return top

    def _close_record(self) -> None:
        fd, self._record_fd = self._record_fd, None
        if fd is not None:
            os.close(fd)

    def _publish(self, channel: str, envelope: Dict[str, Any]) -> int:
        """Number, keep and fan out one envelope through the hub.

        Connections granted ``resume`` get the numbered copy (``offset``,
        ``epoch``), every other subscriber the plain §3 envelope.

        Returns:
            How many subscribers it was handed to (blackholed ones are skipped).
        """
        sent = self.hub._publish(channel, envelope)
        with self._cond:
            self._cond.notify_all()
        return sent

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        # asyncio keeps only weak references to tasks: hold them until done.
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background send failed", exc_info=task.exception())

    def _local_fault(self, ws: GatedConnection, action: str, seconds: float) -> None:
        blackhole = action == "blackhole"
        if blackhole:
            ws.set_faults(blackholed=True)
        else:
            ws.set_faults(reading_paused=True)

        def lift() -> None:
            # A server-wide fault that is on keeps holding the connection.
            if blackhole:
                ws.set_faults(blackholed=self._blackhole)
            else:
                ws.set_faults(reading_paused=self._paused)

        asyncio.get_running_loop().call_later(seconds, lift)

    def _transport_made(self, conn: GatedConnection) -> None:
        """Track a new TCP connection and put it under the current fault modes."""
        with self._cond:
            self._transports.add(conn)
            blackhole, paused = self._blackhole, self._paused
            self._cond.notify_all()
        if blackhole or paused:
            conn.set_faults(blackholed=blackhole, reading_paused=paused)

    def _transport_lost(self, conn: GatedConnection) -> None:
        """Forget a TCP connection that ended."""
        with self._cond:
            self._transports.discard(conn)
            self._cond.notify_all()

    # Loop thread

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as exc:  # never let the thread die silently
            log.exception("server loop crashed")
            if not ready.is_set():
                self._start_error = exc
        finally:
            ready.set()
            try:
                _cancel_all_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _main(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        request: asyncio.Future[Tuple[bool, float]] = loop.create_future()
        self._stop_request = request
        try:
            ws_server = await serve(
                self._handler,
                self.host,
                self._port,
                create_connection=connection_class(self),
                # The reference server offers no compression (our default too)
                # and never pings.
                compression=self.compression,
                ping_interval=None,
                # No handshake deadline: a blackholed handshake must hang, not reset.
                open_timeout=None,
                close_timeout=self.close_timeout,
                max_size=self.max_size,
                logger=NoDebugLogger(logging.getLogger("tether_sync.server.websockets"), {}),
                reuse_address=True,
            )
        except OSError as exc:
            self._start_error = exc
            ready.set()
            return
        self._port = int(ws_server.sockets[0].getsockname()[1])
        ready.set()
        abrupt, timeout = await request
        await self._shutdown(ws_server, abrupt, timeout)

    async def _shutdown(self, ws_server: Server, abrupt: bool, timeout: float) -> None:
        # Close the listening socket first and synchronously, so a connect
        # attempt made after stop() returns (or even during it) is refused.
        ws_server.server.close()
        for ws in list(self._transports):
            # A blackholed peer can't take part in a close handshake, and a
            # connection still in its opening handshake (which, with no
            # open_timeout, may wait forever for a request) has nothing to close.
            if abrupt or ws.blackholed or ws.protocol.state is State.CONNECTING:
                ws.abort_with_reset()
            else:
                ws.set_faults(reading_paused=False)
        ws_server.close(close_connections=not abrupt)
        try:
            await asyncio.wait_for(ws_server.wait_closed(), timeout)
        except asyncio.TimeoutError:
            log.warning("connections did not close in time; resetting them")
            for ws in list(self._transports):
                ws.abort_with_reset()
            try:
                await asyncio.wait_for(ws_server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                log.warning("server did not close cleanly")

    async def _handler(self, ws: ServerConnection) -> None:
        assert isinstance(ws, GatedConnection)
        with self._cond:
            self._next_id += 1
            conn = TetherConnection(
                self._next_id, ws, self, self._cond, latency=self._default_latency
            )
            self._open[conn.id] = conn
            self._history.append(conn)
            self._cond.notify_all()
        conn._peer = _ConnPeer(conn, ws)
        log.info(
            "connection %d opened from %s, path %r",
            conn.id,
            conn.remote_address,
            redact_url(conn.path),  # the query may carry a token
        )
        try:
            await serve_bundled(self, conn, ws, conn._peer)
        finally:
            # The sans-I/O protocol's view works with every websockets >= 13.
            code = ws.protocol.close_code
            conn._set(
                _open=False,
                _closed_at=time.monotonic(),
                _close_code=1006 if code is None else int(code),
                _close_reason=ws.protocol.close_reason or "",
            )
            with self._cond:
                self._open.pop(conn.id, None)
                self._cond.notify_all()
            log.info("connection %d closed (%s)", conn.id, conn.close_code)

    def _on_loop_thread(self) -> bool:
        return self._loop_thread_id == threading.get_ident()

    def _on_loop(self, func: Callable[[], _T], default: _T, timeout: float = 5.0) -> _T:
        """Run ``func`` on the loop thread and return its result; ``default`` if stopped."""
        if self._on_loop_thread():
            return func()
        with self._lifecycle:
            loop = self._loop
            if loop is None or self._thread is None:
                return default
            future: concurrent.futures.Future[_T] = concurrent.futures.Future()

            def runner() -> None:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    future.set_result(func())
                except BaseException as exc:
                    future.set_exception(exc)

            try:
                loop.call_soon_threadsafe(runner)
            except RuntimeError:  # loop closed under us
                return default
            return future.result(timeout)


class _ConnPeer(Peer):
    """A bundled-server connection as the hub's fan-out sees it."""

    def __init__(self, conn: TetherConnection, ws: GatedConnection) -> None:
        self.conn = conn
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()

    def post(self, text: str) -> bool:
        if not self.conn.open or self.ws.blackholed:
            return False
        if threading.get_ident() == self.thread:
            self.ws.sender.post(text)
        else:  # the store's feed thread (RedisStore)
            try:
                self.loop.call_soon_threadsafe(self.ws.sender.post, text)
            except RuntimeError:
                return False
        return True


def _read_records(path: str) -> List[Dict[str, Any]]:
    """The complete JSON lines of a record file (a line cut by a kill is left out)."""
    out: List[Dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    out.append(entry)
    except FileNotFoundError:
        pass
    return out


def _trim_partial_line(path: str) -> None:
    """Cut a last line left without its newline by a kill, so appends start clean."""
    try:
        with open(path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def to_frame(data: OutgoingData) -> Union[str, bytes]:
    """Turn what a caller wants sent into a frame body: str/bytes as is, else JSON text.

    Called in the caller's thread, so a payload JSON can't encode fails there.
    """
    return data if isinstance(data, (str, bytes)) else encode(data)


def _write_all(fd: int, data: bytes) -> None:
    # os.write may write less than asked (a signal, a full disk): finish the line.
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def is_data(record: Received) -> bool:
    """Tell whether a record is a data envelope: type ``"data"`` and a ``channel`` key."""
    return record.type == "data" and "channel" in record.message


def _resolve(future: asyncio.Future[Tuple[bool, float]], value: Tuple[bool, float]) -> None:
    if not future.done():
        future.set_result(value)


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    # What asyncio.run() does on exit: cancel leftovers (delayed replies, sends)
    # and let them finish so nothing warns about a destroyed pending task.
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
