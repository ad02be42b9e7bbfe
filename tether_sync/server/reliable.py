"""Reliable-sessions bookkeeping of :class:`~tether_sync.server.MemoryStore` (DESIGN §5).

Pure bookkeeping, no I/O and no clock of its own: every method that depends on
time takes ``now`` (seconds on one monotonic scale, the store's ``clock``).
Both classes are used under the store's lock (also the rule helpers every
store and the hub's :class:`~tether_sync.server.ServerProtocol` share).

* :class:`SessionTable` maps a session id to the highest ``seq`` accepted in it
  (rule 5). An entry lives while any connection of the session is open and for
  ``ttl`` seconds after the last one ended; then it is forgotten and the
  session starts again at 0 (``hello-ok`` says ``acked: 0``).
* :class:`ChannelHistory` numbers what the server publishes on a channel
  (``offset`` 1, 2, 3 ..., with a random ``epoch`` per history start) and keeps
  the newest envelopes, bounded by count and by age, for resubscribes that ask
  to recover (rule 9).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Tuple

__all__ = [
    "FEATURES",
    "MAX_SESSION_LEN",
    "ChannelHistory",
    "Resume",
    "SessionTable",
    "new_epoch",
    "seq_of",
    "valid_session",
]

#: Every feature of the extension the bundled server can grant.
FEATURES = ("ack", "resume")
#: Longest session id a ``tether:hello`` may carry (rule 2).
MAX_SESSION_LEN = 64


def valid_session(value: Any) -> bool:
    """Tell whether ``value`` is a session id rule 2 accepts: a non-empty str of <= 64 chars."""
    return isinstance(value, str) and 0 < len(value) <= MAX_SESSION_LEN


def seq_of(message: Any) -> Optional[int]:
    """The ``seq`` of a data envelope: a JSON integer >= 1, else None (no seq).

    Booleans, floats (even ``3.0``), strings and numbers below 1 count as no
    ``seq``, so such a message is delivered as in §3, without dedupe or ack.
    """
    if not isinstance(message, dict):
        return None
    seq = message.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        return None
    return seq


def new_epoch() -> str:
    """A fresh random epoch: 16 hex digits."""
    return secrets.token_hex(8)


class _SessionEntry:
    __slots__ = ("expires_at", "highest", "live")

    def __init__(self) -> None:
        self.highest = 0
        self.live = 0
        self.expires_at: Optional[float] = None


class SessionTable:
    """Session id -> highest accepted ``seq``, forgotten ``ttl`` seconds after its last connection.

    Args:
        ttl: Seconds an entry is kept once no connection of the session is open.
    """

    def __init__(self, ttl: float) -> None:
        """Create an empty table."""
        self.ttl = ttl
        self._entries: Dict[str, _SessionEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def attach(self, sid: str, now: float) -> int:
        """A connection of session ``sid`` said hello: keep the entry alive.

        Returns:
            The highest ``seq`` accepted in the session so far (0 if new or forgotten).
        """
        self.expire(now)
        entry = self._entries.get(sid)
        if entry is None:
            entry = self._entries[sid] = _SessionEntry()
        entry.live += 1
        entry.expires_at = None
        return entry.highest

    def detach(self, sid: str, now: float) -> None:
        """A connection of session ``sid`` ended; the last one starts the ``ttl`` countdown."""
        entry = self._entries.get(sid)
        if entry is None:
            return
        entry.live = max(entry.live - 1, 0)
        if entry.live == 0:
            entry.expires_at = now + self.ttl

    def accept(self, sid: str, seq: int) -> bool:
        """Offer ``seq`` in session ``sid`` (which must be attached).

        Returns:
            True when ``seq`` is above the highest (it becomes the highest: gaps
            are allowed), False for a duplicate.
        """
        entry = self._entries.get(sid)
        if entry is None:  # not attached: cannot happen on a live connection
            entry = self._entries[sid] = _SessionEntry()
        if seq <= entry.highest:
            return False
        entry.highest = seq
        return True

    def highest(self, sid: str) -> int:
        """The highest ``seq`` accepted in ``sid`` (0 if unknown)."""
        entry = self._entries.get(sid)
        return 0 if entry is None else entry.highest

    def expire(self, now: float) -> None:
        """Forget every session whose countdown has run out."""
        gone = [
            sid
            for sid, entry in self._entries.items()
            if entry.expires_at is not None and entry.expires_at <= now
        ]
        for sid in gone:
            del self._entries[sid]

    def snapshot(self, now: float) -> Dict[str, int]:
        """Live and not yet expired sessions, ``{sid: highest}``."""
        self.expire(now)
        return {sid: entry.highest for sid, entry in self._entries.items()}

    def clear(self) -> None:
        """Forget every session, live ones included (their ``highest`` restarts at 0)."""
        for entry in self._entries.values():
            entry.highest = 0
        self._entries = {sid: e for sid, e in self._entries.items() if e.live}


@dataclass(frozen=True)
class Resume:
    """The answer to a subscribe on a ``resume`` connection (rule 9).

    Attributes:
        recovered: Whether every envelope after the client's offset is replayed.
        epoch: The channel's current epoch.
        offset: The offset the next envelope follows: the client's when
            recovered, else the channel's newest.
        replay: Encoded envelopes to send after ``tether:subscribed``, in order.
    """

    recovered: bool
    epoch: str
    offset: int
    replay: Tuple[str, ...]


class _Channel:
    __slots__ = ("entries", "epoch", "newest")

    def __init__(self) -> None:
        self.epoch = new_epoch()
        self.newest = 0
        # (offset, published at, encoded envelope), oldest first.
        self.entries: Deque[Tuple[int, float, str]] = deque()


class ChannelHistory:
    """Per-channel offsets, epochs and the newest published envelopes.

    Args:
        max_count: Envelopes kept per channel (0 keeps none: only offsets).
        max_age: Seconds an envelope is kept after it was published.
    """

    def __init__(self, max_count: int, max_age: float) -> None:
        """Create an empty history (every channel gets its epoch on first use)."""
        self.max_count = max_count
        self.max_age = max_age
        self._channels: Dict[str, _Channel] = {}

    def _channel(self, channel: str) -> _Channel:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        return state

    def _prune(self, state: _Channel, now: float) -> None:
        entries = state.entries
        while len(entries) > self.max_count:
            entries.popleft()
        cutoff = now - self.max_age
        while entries and entries[0][1] <= cutoff:
            entries.popleft()

    def position(self, channel: str) -> Tuple[str, int]:
        """The channel's ``(epoch, newest offset)`` (0 before anything was published)."""
        state = self._channel(channel)
        return state.epoch, state.newest

    def publish(self, channel: str, envelope: Dict[str, Any]) -> Dict[str, Any]:
        """Number ``envelope`` as the channel's next and return the copy to send.

        The caller encodes the returned dict and hands the text back with
        :meth:`keep`, so each envelope is encoded once for history and fan-out.
        """
        state = self._channel(channel)
        state.newest += 1
        return {**envelope, "offset": state.newest, "epoch": state.epoch}

    def keep(self, channel: str, offset: int, text: str, now: float) -> None:
        """Store the encoded envelope returned by :meth:`publish` for later replays."""
        state = self._channel(channel)
        if self.max_count > 0:
            state.entries.append((offset, now, text))
        self._prune(state, now)

    def resume(self, channel: str, epoch: Any, offset: Any, now: float) -> Resume:
        """Decide a resubscribe by rule 9.

        Recovered only when ``epoch`` is the channel's current one and ``offset``
        an integer between the newest offset the history no longer holds and the
        channel's newest offset. A missing or malformed ``epoch`` or ``offset``
        (including an offset without an epoch) is not recovered.
        """
        state = self._channel(channel)
        self._prune(state, now)
        entries = state.entries
        # Everything after ``floor`` is still held (or nothing was ever dropped).
        floor = entries[0][0] - 1 if entries else state.newest
        valid = (
            isinstance(epoch, str)
            and epoch == state.epoch
            and isinstance(offset, int)
            and not isinstance(offset, bool)
            and floor <= offset <= state.newest
        )
        if not valid:
            return Resume(False, state.epoch, state.newest, ())
        assert isinstance(offset, int)
        replay: List[str] = [text for number, _, text in entries if number > offset]
        return Resume(True, state.epoch, offset, tuple(replay))

    def clear(self) -> None:
        """Start every channel's history over (new epochs, offsets from 1)."""
        self._channels.clear()
