"""The heartbeat of one connection (DESIGN §1): is the peer still there?

Owns the ping schedule, the one ping in flight and its pong deadline, and the
count of whole inbound messages that liveness is judged by. It decides; the
session acts: :meth:`Heartbeat.on_deadline` returning True means "the peer is
dead", and the session closes with 4000 (it owns closing).

The rules, each kept where it is applied:

- A ping goes out ``interval`` after the link opened, or after the previous
  ping was sent (when it was answered): the schedule does not drift with the
  peer's latency.
- The pong deadline is fixed when the ping is sent and no later ping pushes it
  (there is never more than one in flight), so any ``(interval, timeout)`` pair
  detects a dead peer within ``interval + timeout``.
- Liveness counts whole messages, not bytes: a peer that trickles a
  never-ending frame is dead, one that sent a whole message since the ping is
  alive even if its pong is late.

It also hands out ping timestamps (:meth:`Heartbeat.stamp`) for the session's
other pings (the one after ``tether:hello``): one sequence, so a pong can never
be mistaken for another ping's.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from .events import Output, RoundTrip


class Heartbeat:
    """Pings on a schedule and the verdict when a pong does not come.

    Args:
        output: Where pings and :class:`~tether_sync.protocol.events.RoundTrip`
            events go.
        schedule: ``(interval, timeout)`` in seconds, or None: no heartbeat (only
            :meth:`stamp` and the message count are used).
        wall_offset: ``wall - monotonic`` seconds: a ping's ``ts`` is epoch
            milliseconds, like tether-ws's, while deadlines are monotonic.
    """

    __slots__ = (
        "_due",
        "_last_ts",
        "_output",
        "_ping",
        "_schedule",
        "_wall_offset",
        "answered",
        "heard",
    )

    def __init__(
        self, output: Output, schedule: Optional[Tuple[float, float]], wall_offset: float
    ) -> None:
        self.heard = 0
        """Whole inbound messages so far (the session counts them as it parses)."""
        self.answered = False
        """A heartbeat pong came back on this link (the peer confirmed something)."""
        self._output = output
        self._schedule = schedule
        self._wall_offset = wall_offset
        self._due: Optional[float] = None  # when the next ping goes out (none in flight)
        # The ping in flight: (ts, sent at, ``heard`` then). Its pong deadline is
        # ``sent at + timeout``: computed, not stored, so nothing can move it.
        self._ping: Optional[Tuple[int, float, int]] = None
        self._last_ts = 0

    def stamp(self, now: float) -> int:
        """A fresh ping ``ts``: epoch milliseconds, never twice the same value."""
        ts = max(int((now + self._wall_offset) * 1000), self._last_ts + 1)
        self._last_ts = ts
        return ts

    def start(self, now: float) -> None:
        """The link opened: the first ping is due one interval from now."""
        if self._schedule is not None:
            self._due = now + self._schedule[0]

    def stop(self) -> None:
        """The link is closing: no more pings, and a late pong counts for nothing."""
        self._due = self._ping = None

    def deadline(self) -> Optional[float]:
        """The pong deadline of the ping in flight, else when the next ping is due."""
        ping = self._ping
        if ping is None:
            return self._due
        assert self._schedule is not None
        return ping[1] + self._schedule[1]

    def on_deadline(self, now: float, reading_paused: bool) -> bool:
        """Send the ping that is due, or judge the one whose pong is late.

        Args:
            reading_paused: The loop holds reading back (a full "block" consumer):
                the pong may sit unread in the kernel, so a late one proves nothing.

        Returns:
            True if the peer is presumed dead: no pong and no whole message
            within ``timeout`` of the ping (the caller closes the link).
        """
        schedule = self._schedule
        if schedule is None:
            return False
        ping = self._ping
        if ping is not None and now >= ping[1] + schedule[1]:
            self._ping = None
            if self.heard > ping[2] or reading_paused:
                # Alive without its pong: the next ping follows the schedule, or
                # goes right now if the schedule is already past.
                self._due = max(now, ping[1] + schedule[0])
            else:
                return True
        if self._ping is None and self._due is not None and now >= self._due:
            ts = self.stamp(now)
            self._output.ping(ts)
            self._ping = (ts, now, self.heard)
            self._due = None
        return False

    def on_pong(self, ts: Any, now: float) -> None:
        """A pong carrying ``ts`` arrived; if it answers our ping, schedule the next."""
        ping = self._ping
        if ping is not None and ts == ping[0]:
            self.answered = True
            self._ping = None
            assert self._schedule is not None
            self._due = ping[1] + self._schedule[0]
            self._output.emit(RoundTrip(now - ping[1]))


__all__ = ["Heartbeat"]
