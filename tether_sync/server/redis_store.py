"""``RedisStore``: the hub's state in Redis, so several nodes are one service (DESIGN §7).

Needs redis-py (extra ``tether-sync[redis]``), imported when a store is made.

Keys (``prefix`` defaults to ``"tether:"``):

* ``{prefix}s:{sid}``, a hash: ``hi`` (the committed highest ``seq``) and, while
  a node delivers a run, its claim: ``co`` (owner: ``node/connection``), ``cu``
  (the run's top ``seq``) and ``ce`` (lease end, ms of Redis time). Expires
  ``session_ttl`` after the last hello, commit or refresh.
* ``{prefix}nc:{node}``, a set: the session keys on which ``node`` holds a
  claim, so that a restarted node finds and settles what it left unfinished.
* ``{prefix}cm:{channel}``, a hash: ``epoch`` and ``offset`` (the newest).
* ``{prefix}ch:{channel}``, a stream: entry id ``{offset}-1`` holds the encoded
  envelope (``t``) and its publish time (``ms``); capped at ``history_size``.
* pub/sub channel ``{prefix}pub:{channel}``: ``epoch \\n offset \\n text`` for
  every publication, published by the same script that numbers and appends it.

Claims, commits, publishing and history reads are Lua scripts, so each is
atomic. Time is Redis' own (``TIME``), so nodes' clocks need not agree.

When Redis cannot be reached every call raises
:class:`~tether_sync.server.store.StoreUnavailable`; the pub/sub feed thread
keeps reconnecting (with a growing delay up to 2 s) and, once back, asks the
hub to resync (read each channel's position and fill the gap from the stream).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .codec import encode
from .store import Feed, Publication, Resume, Store, StoreUnavailable

__all__ = ["RedisStore"]

log = logging.getLogger("tether_sync.server")

# Claim a run of a session's seqs: ARGV owner, lease (ms), ttl, the run's top.
# Returns the committed highest before the claim (the caller keeps, in order,
# the seqs above it and above each other), or -1 while another owner's lease
# holds a claim. Only the top travels: a batch of 256 costs what one does.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'hi', 'co', 'ce')
local hi = tonumber(s[1]) or 0
local co = s[2]
local ce = tonumber(s[3]) or 0
if co and co ~= ARGV[1] and ce > now then
  return -1
end
local top = tonumber(ARGV[4])
if top > hi then
  redis.call('HSET', KEYS[1], 'hi', hi, 'co', ARGV[1], 'cu', top, 'ce', now + tonumber(ARGV[2]))
  redis.call('SADD', KEYS[2], KEYS[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return hi
"""

_COMMIT = """
local hi = tonumber(redis.call('HGET', KEYS[1], 'hi')) or 0
local up = tonumber(ARGV[2])
if up > hi then
  hi = up
end
redis.call('HSET', KEYS[1], 'hi', hi)
if redis.call('HGET', KEYS[1], 'co') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'co', 'cu', 'ce')
  redis.call('SREM', KEYS[2], KEYS[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return hi
"""

# Settle a dead owner's claim: commit what its record shows delivered (at most
# the claim's top), then drop the claim, whoever's set it sits in.
_SETTLE = """
local co = redis.call('HGET', KEYS[1], 'co')
if co == ARGV[1] then
  local hi = tonumber(redis.call('HGET', KEYS[1], 'hi')) or 0
  local cu = tonumber(redis.call('HGET', KEYS[1], 'cu')) or 0
  local rec = tonumber(ARGV[2])
  if rec > cu then rec = cu end
  if rec > hi then redis.call('HSET', KEYS[1], 'hi', rec) end
  redis.call('HDEL', KEYS[1], 'co', 'cu', 'ce')
end
redis.call('SREM', KEYS[2], KEYS[1])
return 1
"""

_PUBLISH = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('DEL', KEYS[2])
end
local off = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local text = ARGV[2] .. ',"offset":' .. off .. ',"epoch":"' .. epoch .. '"}'
if tonumber(ARGV[3]) > 0 then
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], off .. '-1', 't', text, 'ms', ms)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[1], epoch .. '\\n' .. off .. '\\n' .. text)
return {off, epoch}
"""

# Position and history after ARGV[2] (-1: none wanted); creates the channel's epoch.
_READ = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local newest = tonumber(redis.call('HGET', KEYS[1], 'offset')) or 0
local after = tonumber(ARGV[2])
local upto = tonumber(ARGV[5])
if upto < 0 or upto > newest then upto = newest end
local entries = {}
if after >= 0 and after < upto then
  entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', upto .. '-1', 'COUNT', ARGV[3])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {epoch, newest, now, entries}
"""


class RedisStore(Store):
    """Sessions, claims and channel history in Redis (DESIGN §7).

    Args:
        url: ``redis://HOST:PORT/DB``.
        prefix: Prefix of every key and pub/sub channel.
        lease: Seconds a claim holds a session's run against other owners if
            its node dies before committing. A restarted node settles its own
            claims at once; another node takes over only when the lease ends.
        client: An existing ``redis.Redis`` (tests); ``url`` is then unused.
    """

    blocking = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tether:",
        lease: float = 10.0,
        client: Any = None,
    ) -> None:
        """Connect lazily (the first call opens the connection pool)."""
        import redis

        self._redis_mod = redis
        self.url = url
        self.prefix = prefix
        self.lease = lease
        if client is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # One immediate retry: a pooled connection that died with a Redis
            # restart is replaced at once; a Redis that is down fails fast, so
            # the connection is closed (1011) and the client backs off.
            client = redis.Redis.from_url(
                url,
                socket_timeout=5.0,
                socket_connect_timeout=2.0,
                retry=Retry(NoBackoff(), 1),
            )
        self._r: Any = client
        self._claim = self._r.register_script(_CLAIM)
        self._commit = self._r.register_script(_COMMIT)
        self._settle = self._r.register_script(_SETTLE)
        self._publish = self._r.register_script(_PUBLISH)
        self._read = self._r.register_script(_READ)
        self.history_size = 1000
        self.history_age = 300.0
        self.session_ttl = 300.0
        self._node = ""
        self._feed: Optional[Feed] = None
        self._resync: Optional[Callable[[], None]] = None
        self._live: Optional[Callable[[], Sequence[str]]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        # The URL may carry a password: show only where it points.
        host = self.url.rsplit("@", 1)[-1]
        return f"<RedisStore {host}>"

    # Configuration and the feed

    def configure(self, *, history_size: int, history_age: float, session_ttl: float) -> None:
        """Take the hub's limits."""
        self.history_size = history_size
        self.history_age = history_age
        self.session_ttl = session_ttl

    @property
    def _ttl(self) -> int:
        return max(1, int(self.session_ttl + 0.999))

    @property
    def _meta_ttl(self) -> int:
        # The position outlives the history, so offsets do not restart after a
        # quiet spell; a day of silence starts a new epoch.
        return max(86400, int(self.history_age) * 2)

    def keep_alive(self, live: Callable[[], Sequence[str]]) -> None:
        """Refresh the TTL of the sessions ``live()`` names every third of ``session_ttl``.

        A session key otherwise expires ``session_ttl`` after its last hello or
        commit, even while a quiet connection of it is open.
        """
        self._live = live

    def open(self, node: str, feed: Feed, resync: Callable[[], None]) -> None:
        """Start the pub/sub thread that feeds every publication to ``feed``."""
        self._node = node
        self._feed = feed
        self._resync = resync
        self._stop.clear()
        ready = threading.Event()
        thread = threading.Thread(
            target=self._listen, args=(ready,), name="tether-redis-feed", daemon=True
        )
        self._thread = thread
        thread.start()
        ready.wait(5.0)

    def close(self) -> None:
        """Stop the feed thread (joined, 3 s at most) and the connection pool."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(3.0)
        self._feed = None
        try:
            self._r.close()
        except Exception:  # closing a pool whose server is gone
            log.debug("closing the redis client failed", exc_info=True)

    def _listen(self, ready: threading.Event) -> None:
        delay = 0.05
        first = True
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._r.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(f"{self.prefix}pub:*")
                # Wait for the subscription to be confirmed before serving.
                pubsub.get_message(timeout=1.0)
                ready.set()
                if not first and self._resync is not None:
                    self._resync()  # what was published while the feed was down
                first = False
                delay = 0.05
                refresh_at = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "pmessage":
                        self._deliver(message["channel"], message["data"])
                    if self._live is not None and time.monotonic() >= refresh_at:
                        refresh_at = time.monotonic() + max(1.0, self.session_ttl / 3)
                        self.touch(self._live())
            except self._redis_mod.RedisError as exc:
                ready.set()
                first = False
                log.warning("redis feed lost (%s); reconnecting", type(exc).__name__)
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
            except Exception:  # the feed thread never dies
                log.exception("redis feed: unexpected error")
                self._stop.wait(delay)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

    def _deliver(self, name: Any, data: Any) -> None:
        feed = self._feed
        if feed is None:
            return
        channel = _text(name)[len(self.prefix) + 4 :]
        epoch, offset, text = _text(data).split("\n", 2)
        feed(Publication(channel, epoch, int(offset), text))

    # Calls

    def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except self._redis_mod.RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc

    def _skey(self, sid: str) -> str:
        return f"{self.prefix}s:{sid}"

    def _nkey(self, node: str) -> str:
        return f"{self.prefix}nc:{node}"

    def hello(self, sid: str) -> int:
        """Refresh the session's TTL and return its committed highest."""
        key = self._skey(sid)
        pipe = self._r.pipeline(transaction=False)
        pipe.hget(key, "hi")
        pipe.expire(key, self._ttl)
        value, _ = self._call(pipe.execute)
        return int(value) if value is not None else 0

    def goodbye(self, sid: str) -> None:
        """Start the TTL countdown from now."""
        try:
            self._r.expire(self._skey(sid), self._ttl)
        except self._redis_mod.RedisError:
            pass  # the key then expires from its last refresh

    def touch(self, sids: Sequence[str]) -> None:
        """Refresh the TTL of live sessions."""
        if not sids:
            return
        pipe = self._r.pipeline(transaction=False)
        for sid in sids:
            pipe.expire(self._skey(sid), self._ttl)
        try:
            pipe.execute()
        except self._redis_mod.RedisError:
            pass

    def claim(self, sid: str, owner: str, seqs: Sequence[int]) -> Optional[List[int]]:
        """Claim the new ``seqs`` by the claim script."""
        if not seqs:
            return []
        keys = [self._skey(sid), self._nkey(self._node)]
        args = [owner, int(self.lease * 1000), self._ttl, max(seqs)]
        hi = int(self._call(self._claim, keys=keys, args=args))
        if hi < 0:
            return None
        fresh: List[int] = []
        for seq in seqs:  # what the script claimed: above the highest and each other
            if seq > hi:
                fresh.append(seq)
                hi = seq
        return fresh

    def commit(self, sid: str, owner: str, upto: int) -> int:
        """Commit by the commit script."""
        keys = [self._skey(sid), self._nkey(self._node)]
        return int(self._call(self._commit, keys=keys, args=[owner, upto, self._ttl]))

    def highest(self, sid: str) -> int:
        """The committed highest."""
        value = self._call(self._r.hget, self._skey(sid), "hi")
        return int(value) if value is not None else 0

    def unfinished_claims(self, node: str) -> Dict[str, Tuple[str, int]]:
        """Claims ``node`` left open: ``{sid: (owner, upto)}``."""
        out: Dict[str, Tuple[str, int]] = {}
        cut = len(self.prefix) + 2
        for key in self._call(self._r.smembers, self._nkey(node)):
            skey = _text(key)
            owner, upto = self._call(self._r.hmget, skey, "co", "cu")
            sid = skey[cut:]
            if owner is not None and _text(owner).startswith(node + "/"):
                out[sid] = (_text(owner), int(upto or 0))
            else:
                self._call(self._settle, keys=[skey, self._nkey(node)], args=["", 0])
        return out

    def settle(self, sid: str, owner: str, recorded: int) -> None:
        """End ``owner``'s claim, committing up to ``recorded``."""
        keys = [self._skey(sid), self._nkey(self._node)]
        self._call(self._settle, keys=keys, args=[owner, recorded])

    def publish(self, channel: str, envelope: Dict[str, Any]) -> Publication:
        """Number, append and fan out in one script."""
        text = encode(envelope)
        keys = [f"{self.prefix}cm:{channel}", f"{self.prefix}ch:{channel}"]
        args = [
            f"{self.prefix}pub:{channel}",
            text[:-1],
            self.history_size,
            max(1, int(self.history_age + 0.999)),
            secrets.token_hex(8),
            self._meta_ttl,
        ]
        offset, epoch = self._call(self._publish, keys=keys, args=args)
        number = int(offset)
        epoch_text = _text(epoch)
        numbered = f'{text[:-1]},"offset":{number},"epoch":"{epoch_text}"}}'
        return Publication(channel, epoch_text, number, numbered, text)

    def _read_history(
        self, channel: str, after: int, upto: int = -1
    ) -> Tuple[str, int, List[Publication]]:
        keys = [f"{self.prefix}cm:{channel}", f"{self.prefix}ch:{channel}"]
        args = [secrets.token_hex(8), after, self.history_size + 1, self._meta_ttl, upto]
        epoch, newest, now, entries = self._call(self._read, keys=keys, args=args)
        epoch_text = _text(epoch)
        cutoff = int(now) - int(self.history_age * 1000)
        pubs: List[Publication] = []
        for entry_id, fields in entries:
            values = {_text(k): v for k, v in _pairs(fields)}
            if int(values.get("ms", 0)) <= cutoff:
                continue  # too old: counts as gone
            number = int(_text(entry_id).split("-", 1)[0])
            pubs.append(Publication(channel, epoch_text, number, _text(values["t"])))
        return epoch_text, int(newest), pubs

    def resume(self, channel: str, epoch: Any, offset: Any) -> Resume:
        """Decide a subscribe by rule 9, reading the stream."""
        valid = isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0
        current, newest, pubs = self._read_history(channel, offset if valid else -1)
        if valid and isinstance(epoch, str) and epoch == current and offset <= newest:
            assert isinstance(offset, int)
            wanted = list(range(offset + 1, newest + 1))
            if [pub.offset for pub in pubs] == wanted:
                return Resume(True, current, offset, newest, tuple(pubs))
        return Resume(False, current, newest, newest, ())

    def gap(self, channel: str, epoch: str, first: int, last: int) -> Optional[List[Publication]]:
        """Read offsets ``first..last`` from the stream; None when they are gone."""
        current, _, pubs = self._read_history(channel, first - 1, last)
        if current != epoch or [pub.offset for pub in pubs] != list(range(first, last + 1)):
            return None
        return pubs

    def position(self, channel: str) -> Tuple[str, int]:
        """The channel's ``(epoch, newest offset)``."""
        epoch, newest, _ = self._read_history(channel, -1)
        return epoch, newest

    def sessions(self) -> Dict[str, int]:
        """Every session key's committed highest (SCAN: for tests, not hot paths)."""
        out: Dict[str, int] = {}
        cut = len(self.prefix) + 2
        for key in self._call(self._r.scan_iter, match=f"{self.prefix}s:*"):
            value = self._call(self._r.hget, key, "hi")
            out[_text(key)[cut:]] = int(value or 0)
        return out

    def reset_sessions(self) -> None:
        """Delete every session key."""
        for key in self._call(self._r.scan_iter, match=f"{self.prefix}s:*"):
            self._call(self._r.delete, key)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pairs(fields: Any) -> List[Tuple[Any, Any]]:
    # redis-py gives stream fields as a dict (RESP2 parser) or a flat list.
    if isinstance(fields, dict):
        return list(fields.items())
    return [(fields[i], fields[i + 1]) for i in range(0, len(fields), 2)]
