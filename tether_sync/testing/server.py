"""The server behind the ``tether_server`` fixture: bundled server, fault relay, recorder."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, List, Optional

from .proxy import FaultProxy, Tap
from .recording import PathLike, Recording, ServerTap, read_recording

if TYPE_CHECKING:
    from ..server import TetherServer


class TetherTestServer:
    """A bundled Tether server on a free loopback port, with faults, for an app's tests.

    Clients connect to :attr:`url`, a relay in front of the server
    (:class:`~tether_sync.testing.proxy.FaultProxy`): the faults act on the
    network between them, and the URL stays the same across :meth:`kill` and
    :meth:`restart`. The server speaks the whole protocol of DESIGN §3 and §5
    (acks, dedupe, resume), so a client's resends after a fault are
    deduplicated and :meth:`received` holds each accepted message once.

    Args:
        **options: Keyword arguments for :class:`~tether_sync.server.TetherServer`
            (``require_auth=True``, ``broadcast=True``, ``extensions=False``...).
            ``host`` and ``port`` are the fixture's.

    Example::

        def test_survives_a_kill(tether_server):
            client = TetherClient(tether_server.url)
            ...
            tether_server.kill()
            tether_server.restart()
            assert tether_server.wait_received(100, channel="orders")
    """

    def __init__(self, **options: Any) -> None:
        from ..server import TetherServer  # the ``server`` extra, imported when used

        for name in ("host", "port"):
            if name in options:
                raise TypeError(f"tether_server option {name!r} is the fixture's own")
        self._server: TetherServer = TetherServer(host="127.0.0.1", port=0, **options)
        self._server.start()
        self._recording: Optional[Recording] = None
        self._killed = False
        try:
            self._proxy = FaultProxy(("127.0.0.1", self._server.port), self._tap)
        except BaseException:
            self._server.stop()
            raise

    # ------------------------------------------------------------ what tests read

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/``: where clients connect (the same after a restart)."""
        return f"ws://127.0.0.1:{self._proxy.port}/"

    @property
    def server(self) -> TetherServer:
        """The bundled :class:`~tether_sync.server.TetherServer` behind the relay."""
        return self._server

    @property
    def running(self) -> bool:
        """False between :meth:`kill` and :meth:`restart`."""
        return not self._killed

    def received(self, channel: Optional[str] = None) -> List[Any]:
        """Payloads the server's application accepted, in arrival order, across restarts.

        A resend the server had already accepted (same session and ``seq``) is
        not counted again; neither is data it refused.

        Args:
            channel: Only this channel's (default: every channel's).
        """
        return self._server.data_payloads(channel)

    def wait_received(
        self, count: int, channel: Optional[str] = None, timeout: float = 10.0
    ) -> bool:
        """Block until :meth:`received` holds at least ``count`` payloads; False on timeout."""
        return self._server.wait_for_data(count, timeout, channel=channel)

    def wait_subscribed(self, channel: str, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``count`` open connections subscribed to ``channel``; False on timeout."""
        server = self._server
        return server.wait_for(
            lambda: sum(channel in c.subscriptions for c in server.connections) >= count,
            timeout,
        )

    @property
    def connections(self) -> int:
        """Client connections open through the relay now."""
        return self._proxy.connections

    # ------------------------------------------------------------ what tests do

    def publish(self, channel: str, payload: Any) -> int:
        """Send ``payload`` on ``channel`` to every subscribed client.

        It goes through the channel's history (an ``offset``), so a client
        that reconnects after missing it recovers it (DESIGN §5).

        Returns:
            How many connections it was handed to (0 while killed).
        """
        return self._server.broadcast(channel, payload)

    def kill(self) -> None:
        """Crash the server, like ``kill -9``: connections end without a close frame.

        The port refuses connections until :meth:`restart`.
        """
        if self._killed:
            return
        self._killed = True
        self._proxy.kill()
        self._server.stop(timeout=0.0, abrupt=True)

    def restart(self) -> None:
        """Start the server again after :meth:`kill`; else restart it cleanly (close 1001)."""
        if self._killed:
            self._server.start()
            self._proxy.revive()
            self._killed = False
        else:
            self._server.restart()

    def reset_all(self) -> int:
        """Reset (TCP RST) every open connection; the server keeps running.

        Returns:
            How many connections were reset.
        """
        return self._proxy.reset_all()

    def blackhole(self, seconds: float) -> None:
        """Let nothing through, either way, for ``seconds`` (returns at once).

        Open connections go silent (a client's heartbeat notices: DESIGN §1) and
        new ones hang in their handshake; afterwards what was held flows again.
        """
        self._proxy.blackhole(seconds)

    def latency(self, seconds: float) -> None:
        """Deliver everything ``seconds`` late, each way (a round trip grows by twice it).

        Lasts until changed; ``latency(0)`` lifts it.
        """
        self._proxy.set_latency(seconds)

    def stall_reading(self, seconds: float) -> None:
        """Stop reading what clients send for ``seconds`` (returns at once).

        Their writes back up into the kernel buffers, as with a server that
        stopped reading: ``buffered_amount`` grows and backpressure starts.
        """
        self._proxy.stall_reading(seconds)

    def refuse(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` opening handshakes with HTTP ``status`` instead."""
        self._proxy.refuse(n, status)

    def heal(self) -> None:
        """Lift every network fault (latency, blackhole, stall, refusals) at once."""
        self._proxy.heal()

    def record(self, path: PathLike) -> Recording:
        """Record the data messages the server sends to clients, to ``path`` (JSON lines).

        Covers every connection, those already open included, from now until
        ``.stop()`` on the returned recording (or the end of its ``with``
        block, or of the test). A publication (:meth:`publish`, or a client's
        data the server relays to subscribers) is recorded once, however many
        subscribers it went to and however often it was replayed to a client
        that resumed. Replay it with :meth:`replay`.
        """
        if self._recording is not None:
            self._recording.stop()
        self._recording = Recording(path)
        return self._recording

    def replay(self, path: PathLike, speed: Optional[float] = 1.0) -> int:
        """Publish a recording's messages again, in order, to the channels' subscribers.

        Args:
            path: A file from :meth:`record` or
                :func:`~tether_sync.testing.record_client` (e.g. production traffic).
            speed: 1.0 keeps the recorded pace, 2.0 is twice as fast; None or 0
                publishes with no pause.

        Returns:
            How many messages were published.
        """
        pause = threading.Event()  # never set: its wait() paces the replay
        start = time.monotonic()
        count = 0
        for t, channel, payload in read_recording(path):
            if speed:
                wait = start + t / speed - time.monotonic()
                if wait > 0:
                    pause.wait(wait)
            self.publish(channel, payload)
            count += 1
        return count

    def close(self) -> None:
        """Stop the relay and the server (the fixture does it after the test)."""
        if self._recording is not None:
            self._recording.stop()
        self._proxy.close()
        self._server.stop()

    def __enter__(self) -> TetherTestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "killed" if self._killed else "running"
        return f"<TetherTestServer {self.url} {state}, {self.connections} open>"

    def _tap(self) -> Optional[Tap]:
        # Every connection is parsed from its start, so that a recording begun
        # while it is open finds the frame boundaries.
        return ServerTap(self._current_recording)

    def _current_recording(self) -> Optional[Recording]:
        return self._recording


__all__ = ["TetherTestServer"]
