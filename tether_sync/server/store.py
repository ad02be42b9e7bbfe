"""Where a :class:`~tether_sync.server.Hub` keeps its state: sessions, claims and channel history.

One interface, two implementations (DESIGN §7):

* :class:`MemoryStore`, the default: one process, nothing survives it. This is
  the bundled server's behaviour of old.
* :class:`RedisStore` (extra ``tether-sync[redis]``): several nodes on one
  Redis are one service (see :mod:`.redis_store`).

Delivery to the application goes through a *claim*: a node claims a run of a
session's ``seq`` values (atomically: only those above the committed highest,
and only when no other live owner holds a claim), calls the application for
each, then *commits* the highest and acks. Every method may be called from any
thread; each store has one lock or one connection pool of its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .reliable import ChannelHistory, SessionTable

__all__ = ["MemoryStore", "Publication", "Resume", "Store", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """The store could not confirm an operation (e.g. Redis is unreachable).

    A hub that gets this acks nothing that depends on it: it refuses the hello
    or closes the connection with 1011, and the client resends after it
    reconnects.
    """


@dataclass(frozen=True)
class Publication:
    """One envelope published on a channel, numbered by the store.

    Attributes:
        channel: The channel's name.
        epoch: The channel's history epoch.
        offset: Its offset in that epoch (1, 2, 3 ...).
        text: The encoded envelope with ``offset`` and ``epoch`` (for ``resume`` peers).
        plain: The encoded §3 envelope without them, when the store has it
            (else the hub derives it from ``text`` when a plain peer needs it).
    """

    channel: str
    epoch: str
    offset: int
    text: str
    plain: Optional[str] = None


@dataclass(frozen=True)
class Resume:
    """What a store answers to a subscribe (DESIGN §5 rule 9).

    Attributes:
        recovered: Whether every envelope after the asked offset is in ``replay``.
        epoch: The channel's current epoch.
        offset: The asked offset when recovered, else the channel's newest.
        newest: The channel's newest offset when this was read.
        replay: Publications after ``offset``, in order (empty when not recovered).
    """

    recovered: bool
    epoch: str
    offset: int
    newest: int
    replay: Tuple[Publication, ...]


#: Called by a store for every publication, in offset order per channel.
Feed = Callable[[Publication], None]


class Store:
    """The interface a :class:`~tether_sync.server.Hub` needs from its state.

    Attributes:
        blocking: True when calls do network I/O: asyncio adapters then run
            them in a worker thread instead of on the event loop.
    """

    blocking = False

    def configure(self, *, history_size: int, history_age: float, session_ttl: float) -> None:
        """Take the hub's limits (called once by the hub, before :meth:`open`)."""
        raise NotImplementedError

    def open(self, node: str, feed: Feed, resync: Callable[[], None]) -> None:
        """Start delivering publications to ``feed``; ``resync`` after a lost feed."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the feed and release connections."""
        raise NotImplementedError

    def hello(self, sid: str) -> int:
        """A connection of ``sid`` said hello: keep it alive; return its committed highest."""
        raise NotImplementedError

    def goodbye(self, sid: str) -> None:
        """A connection of ``sid`` ended (its TTL countdown may start)."""
        raise NotImplementedError

    def touch(self, sids: Sequence[str]) -> None:
        """Keep live sessions from expiring (called now and then by the hub)."""

    def keep_alive(self, live: Callable[[], Sequence[str]]) -> None:
        """Refresh the sessions ``live()`` names now and then (a store with its own TTLs)."""

    def claim(self, sid: str, owner: str, seqs: Sequence[int]) -> Optional[List[int]]:
        """Claim the new ``seqs`` of ``sid`` for ``owner``.

        Returns:
            The ``seqs`` above the committed highest (each above the one before),
            now claimed, or None when another live owner holds a claim.
        """
        raise NotImplementedError

    def commit(self, sid: str, owner: str, upto: int) -> int:
        """Raise the committed highest to ``upto``, end ``owner``'s claim; return the highest."""
        raise NotImplementedError

    def highest(self, sid: str) -> int:
        """The committed highest ``seq`` of ``sid`` (0 if unknown)."""
        raise NotImplementedError

    def publish(self, channel: str, envelope: Dict[str, Any]) -> Publication:
        """Number ``envelope``, keep it in the history and fan it out to every node's feed."""
        raise NotImplementedError

    def resume(self, channel: str, epoch: Any, offset: Any) -> Resume:
        """Decide a subscribe by rule 9, with the replay when recovered."""
        raise NotImplementedError

    def gap(self, channel: str, epoch: str, first: int, last: int) -> Optional[List[Publication]]:
        """Publications ``first..last`` of the channel, or None when history no longer has them."""
        raise NotImplementedError

    def position(self, channel: str) -> Tuple[str, int]:
        """The channel's ``(epoch, newest offset)``."""
        raise NotImplementedError

    def sessions(self) -> Dict[str, int]:
        """Known sessions, ``{sid: committed highest}`` (for tests and panels)."""
        raise NotImplementedError

    def reset_sessions(self) -> None:
        """Forget every session's highest (tests: a server that lost its table)."""
        raise NotImplementedError

    def reset_channels(self) -> None:
        """Start every channel's history over with a new epoch (tests: a restart)."""

    def unfinished_claims(self, node: str) -> Dict[str, Tuple[str, int]]:
        """Claims ``node`` left open (it died): ``{sid: (owner, upto)}``."""
        return {}

    def settle(self, sid: str, owner: str, recorded: int) -> None:
        """End a dead owner's claim, committing up to ``recorded`` (what it delivered)."""


class MemoryStore(Store):
    """State in this process: the default, and the bundled server's state.

    Args:
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty store; :meth:`configure` sets its limits."""
        self._clock = clock
        # Guards the tables, the claims and the feed's order: publish() calls
        # the feed under it, so every node-local subscriber sees offsets in order.
        self._lock = threading.RLock()
        self._sessions = SessionTable(300.0)
        self._channels = ChannelHistory(1000, 300.0)
        # sid -> (owner, upto): one claim at a time per session.
        self._claims: Dict[str, Tuple[str, int]] = {}
        self._feed: Optional[Feed] = None

    def configure(self, *, history_size: int, history_age: float, session_ttl: float) -> None:
        """Take the hub's limits."""
        with self._lock:
            self._sessions.ttl = session_ttl
            self._channels.max_count = history_size
            self._channels.max_age = history_age

    def open(self, node: str, feed: Feed, resync: Callable[[], None]) -> None:
        """Deliver publications to ``feed`` (one process: ``resync`` is never needed)."""
        self._feed = feed

    def close(self) -> None:
        """Stop the feed; the tables are kept (a restarted server still knows them)."""
        self._feed = None

    def hello(self, sid: str) -> int:
        """Attach a connection of ``sid``; return its highest."""
        with self._lock:
            return self._sessions.attach(sid, self._clock())

    def goodbye(self, sid: str) -> None:
        """Detach a connection of ``sid``."""
        with self._lock:
            self._sessions.detach(sid, self._clock())

    def claim(self, sid: str, owner: str, seqs: Sequence[int]) -> Optional[List[int]]:
        """Claim the new ``seqs`` (see :meth:`Store.claim`)."""
        with self._lock:
            held = self._claims.get(sid)
            if held is not None and held[0] != owner:
                return None
            top = self._sessions.highest(sid)
            fresh: List[int] = []
            for seq in seqs:
                if seq > top:
                    fresh.append(seq)
                    top = seq
            if fresh:
                self._claims[sid] = (owner, top)
            return fresh

    def commit(self, sid: str, owner: str, upto: int) -> int:
        """Commit ``upto`` and end ``owner``'s claim."""
        with self._lock:
            self._sessions.accept(sid, upto)
            held = self._claims.get(sid)
            if held is not None and held[0] == owner:
                del self._claims[sid]
            return self._sessions.highest(sid)

    def settle(self, sid: str, owner: str, recorded: int) -> None:
        """End ``owner``'s claim, committing up to ``recorded`` (at most the claim's top)."""
        with self._lock:
            held = self._claims.get(sid)
            if held is not None and held[0] == owner:
                self._sessions.accept(sid, min(recorded, held[1]))
                del self._claims[sid]

    def highest(self, sid: str) -> int:
        """The committed highest of ``sid``."""
        with self._lock:
            return self._sessions.highest(sid)

    def publish(self, channel: str, envelope: Dict[str, Any]) -> Publication:
        """Number, keep and hand ``envelope`` to the feed, all under the store's lock."""
        from .codec import encode

        with self._lock:
            copy = self._channels.publish(channel, envelope)
            text = encode(copy)
            offset = int(copy["offset"])
            self._channels.keep(channel, offset, text, self._clock())
            pub = Publication(channel, str(copy["epoch"]), offset, text, encode(envelope))
            feed = self._feed
            if feed is not None:
                feed(pub)
            return pub

    def resume(self, channel: str, epoch: Any, offset: Any) -> Resume:
        """Decide a subscribe by rule 9."""
        with self._lock:
            result = self._channels.resume(channel, epoch, offset, self._clock())
            newest = self._channels.position(channel)[1]
        replay = tuple(
            Publication(channel, result.epoch, result.offset + index + 1, text)
            for index, text in enumerate(result.replay)
        )
        return Resume(result.recovered, result.epoch, result.offset, newest, replay)

    def gap(self, channel: str, epoch: str, first: int, last: int) -> Optional[List[Publication]]:
        """One process never has gaps in its feed: only reached through misuse."""
        return None

    def position(self, channel: str) -> Tuple[str, int]:
        """The channel's ``(epoch, newest offset)``."""
        with self._lock:
            return self._channels.position(channel)

    def sessions(self) -> Dict[str, int]:
        """Live and not yet expired sessions."""
        with self._lock:
            return self._sessions.snapshot(self._clock())

    def reset_sessions(self) -> None:
        """Forget every session's highest."""
        with self._lock:
            self._sessions.clear()
            self._claims.clear()

    def reset_channels(self) -> None:
        """New epochs, offsets from 1."""
        with self._lock:
            self._channels.clear()
