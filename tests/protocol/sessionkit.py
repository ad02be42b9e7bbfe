"""Scripting one :class:`~tether_sync.protocol.session.Session` with frames and a fake clock.

No threads, sockets, sleeps or wall time: the test plays the server. It builds
server frames (unmasked, as RFC 6455 §5.1 wants) with :func:`server_frame`, feeds
them with :meth:`Peer.feed`, and reads what the session wrote through
:meth:`Peer.pump`, which unmasks the client's frames with a parser of its own
(independent of ``tether_sync.protocol.frames``) and checks that each one is masked.

The :class:`Peer` also stands in for the loop where a test needs it: on
:class:`Opened` it announces the channels of ``subscriptions`` and then sends
whatever ``queue`` holds, as ``IoLoop.opened`` and ``_pump`` do.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import struct
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Type, TypeVar, Union

from tether_sync.protocol import envelope, frames
from tether_sync.protocol.events import Output
from tether_sync.protocol.session import (
    Closed,
    Continuity,
    Event,
    Opened,
    Session,
    SessionConfig,
)
from tether_sync.protocol.writebuf import WriteBuffer

T = TypeVar("T")

_ids = itertools.count(1)


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, dt: float) -> float:
        assert dt >= 0
        self.now += dt
        return self.now


@dataclasses.dataclass(eq=False)
class Msg:
    """The part of a ``Delivery`` the session needs (``writebuf.Item``)."""

    id: str
    _op: int
    _data: bytes
    _seq: int = 0
    channel: str = "chat"
    payload: Any = None


def data_msg(payload: Any = "hi", channel: str = "chat", msg_id: Optional[str] = None) -> Msg:
    """An outbound data envelope as ``TetherClient.send`` encodes it."""
    mid = msg_id if msg_id is not None else f"m{next(_ids)}"
    text = envelope.encode_data(channel, payload, mid)
    return Msg(mid, frames.OP_TEXT, text.encode(), 0, channel, payload)


def big_msg(size: int = 70_000, channel: str = "chat") -> Msg:
    return data_msg("x" * size, channel)


# ---------------------------------------------------------------- server frames


def server_frame(
    opcode: int,
    payload: Union[bytes, str] = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = False,
    length: Optional[int] = None,
) -> bytes:
    """One frame as a server sends it; ``rsv`` is the 3 RSV bits (0-7), ``length``
    overrides the announced payload length (for frames that never complete)."""
    data = payload.encode() if isinstance(payload, str) else payload
    n = len(data) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0x0F])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if masked:
        key = b"\x0f\x1e\x2d\x3c"
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return head + data


def text(obj: Any) -> bytes:
    """A text frame carrying ``obj`` as JSON (``str``: sent as it is)."""
    return server_frame(frames.OP_TEXT, obj if isinstance(obj, str) else json.dumps(obj))


def close_frame(code: Optional[int] = 1000, reason: str = "") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason.encode()
    return server_frame(frames.OP_CLOSE, payload)


# ---------------------------------------------------------------- client frames


@dataclasses.dataclass(frozen=True)
class Frame:
    """One frame the session wrote, unmasked."""

    fin: bool
    opcode: int
    payload: bytes

    @property
    def json(self) -> Any:
        assert self.opcode == frames.OP_TEXT, self
        return json.loads(self.payload.decode("utf-8"))

    @property
    def close_code(self) -> Optional[int]:
        assert self.opcode == frames.OP_CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class ClientFrames:
    """Incremental parser of client frames: every frame must be masked, RSV clear."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> List[Frame]:
        self._buf += data
        out: List[Frame] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            assert b1 & 0x80, "a client frame must be masked (RFC 6455 §5.3)"
            assert not b0 & 0x70, "RSV bits set on a client frame"
            n = b1 & 0x7F
            at = pos + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                (n,) = struct.unpack("!H", buf[at : at + 2])
                at += 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                (n,) = struct.unpack("!Q", buf[at : at + 8])
                at += 8
            if len(buf) - at < 4 + n:
                break
            key = buf[at : at + 4]
            masked = buf[at + 4 : at + 4 + n]
            # Independent of tether_sync.protocol.frames.mask_payload: XOR whole words.
            reps = key * (n // 4 + 1)
            plain = (
                int.from_bytes(masked, "little") ^ int.from_bytes(reps[:n], "little")
            ).to_bytes(n, "little")
            out.append(Frame(bool(b0 & 0x80), b0 & 0x0F, plain))
            pos = at + 4 + n
        self._buf = buf[pos:]
        return out


# ---------------------------------------------------------------- the scripted peer


def make_session(
    clock: FakeClock,
    *,
    protocol: str = "tether",
    heartbeat: Optional[Tuple[float, float]] = None,
    auth: bool = False,
    extensions: Tuple[str, ...] = ("ack", "resume"),
    max_message_size: int = 1 << 20,
    auth_timeout: float = 20.0,
    continuity: Optional[Continuity] = None,
    seed: int = 0,
) -> Session:
    cfg = SessionConfig(
        protocol=protocol,
        heartbeat=heartbeat,
        max_message_size=max_message_size,
        auth=auth,
        auth_timeout=auth_timeout,
        extensions=extensions if protocol == "tether" else (),
    )
    rnd = random.Random(seed)
    return Session(
        cfg,
        continuity if continuity is not None else Continuity("sid-1"),
        clock.now,
        keys=frames.MaskKeys(urandom=rnd.randbytes, batch=64),
        rng=rnd,
    )


class Peer:
    """The server side of one scripted connection, plus the loop's part on ``Opened``.

    Attributes:
        frames: Every frame the session wrote so far, in order.
        log: Every event the session emitted so far, in order.
        subscriptions: Channels announced when the link opens.
        queue: Messages sent (in one batch) when the link opens.
    """

    def __init__(
        self,
        clock: FakeClock,
        session: Optional[Session] = None,
        *,
        subscriptions: Sequence[str] = (),
        queue: Sequence[Msg] = (),
        chunk: Optional[int] = None,
        **config: Any,
    ) -> None:
        self.clock = clock
        self.session = session if session is not None else make_session(clock, **config)
        self.frames: List[Frame] = []
        self.log: List[Event] = []
        self.stamps: List[float] = []  # the clock when each event of ``log`` came out
        self.frame_stamps: List[float] = []  # the clock when each frame of ``frames`` was written
        self.subscriptions = list(subscriptions)
        self.queue = list(queue)
        self.chunk = chunk  # write at most this many bytes per sent() call
        self._parser = ClientFrames()
        self._read = 0  # frames handed out by take()
        self._seen = 0  # events handed out by new_events()

    # -- driving

    def start(self, **kwargs: Any) -> Peer:
        self.session.start(self.clock.now, **kwargs)
        self.pump()
        return self

    def feed(self, *chunks: bytes) -> Peer:
        """The server sends these bytes (each chunk one read)."""
        for data in chunks:
            self.session.receive_data(data, self.clock.now)
            self.pump()
        return self

    def send_json(self, obj: Any) -> Peer:
        return self.feed(text(obj))

    def eof(self) -> Peer:
        self.session.receive_eof(self.clock.now)
        self.pump()
        return self

    def pump(self) -> List[Frame]:
        """Collect events (acting on ``Opened`` like the loop), then write everything out."""
        self._collect()
        new: List[Frame] = []
        while True:
            data = self.session.data_to_send()
            if not len(data):
                break
            n = len(data) if self.chunk is None else min(self.chunk, len(data))
            chunk = bytes(data[:n])
            self.session.sent(n)
            new.extend(self._parser.feed(chunk))
            self._collect()
        self.frames.extend(new)
        self.frame_stamps.extend(self.clock.now for _ in new)
        return new

    def _collect(self) -> None:
        for event in self.session.events():
            self.log.append(event)
            self.stamps.append(self.clock.now)
            if type(event) is Opened:
                for channel in self.subscriptions:
                    self.session.subscribe(channel, f"sub-{channel}")
                if self.queue:
                    batch, self.queue = self.queue, []
                    self.session.send(batch)

    def advance(
        self, dt: float, answer: Optional[Callable[[Frame], Optional[bytes]]] = None
    ) -> None:
        """Move time ``dt`` forward, stopping at every deadline on the way (as the loop's
        selector timeout does); ``answer`` may reply to each frame written meanwhile."""
        end = self.clock.now + dt
        for _ in range(100_000):
            when = self.session.next_deadline()
            if when is None or when > end or self.session.closed:
                break
            self.clock.now = max(self.clock.now, when)
            self.session.on_deadline(self.clock.now)
            for frame in self.pump():
                reply = answer(frame) if answer is not None else None
                if reply:
                    self.feed(reply)
        else:
            raise AssertionError("a deadline that on_deadline() never consumes")
        self.clock.now = end

    # -- reading

    def take(self) -> List[Frame]:
        """Frames written since the last ``take()``."""
        out = self.frames[self._read :]
        self._read = len(self.frames)
        return out

    def take_json(self) -> List[Any]:
        return [f.json for f in self.take() if f.opcode == frames.OP_TEXT]

    def sent_types(self) -> List[str]:
        """``type`` of every text frame written so far (``"data"`` for envelopes)."""
        return [f.json.get("type") for f in self.frames if f.opcode == frames.OP_TEXT]

    def new_events(self) -> List[Event]:
        out = self.log[self._seen :]
        self._seen = len(self.log)
        return out

    def of(self, kind: Type[T]) -> List[T]:
        return [e for e in self.log if isinstance(e, kind)]

    def when(self, kind: type) -> float:
        """The clock when the first event of ``kind`` came out."""
        return next(t for t, e in zip(self.stamps, self.log) if isinstance(e, kind))

    def closed_event(self) -> Closed:
        closed = self.of(Closed)
        assert len(closed) == 1, self.log
        assert self.log[-1] is closed[0], "Closed must be the last event"
        return closed[0]

    def close_frames(self) -> List[Frame]:
        return [f for f in self.frames if f.opcode == frames.OP_CLOSE]


class Wire:
    """An :class:`Output` for one sub-machine tested alone, and what went through it."""

    def __init__(self, tether: bool = True, seed: int = 0) -> None:
        rnd = random.Random(seed)
        self.output = Output(WriteBuffer(frames.MaskKeys(urandom=rnd.randbytes, batch=64)), tether)
        self._parser = ClientFrames()

    def frames(self) -> List[Frame]:
        """The frames written since the last call (all of them taken by the "kernel")."""
        buffer = self.output.buffer
        out: List[Frame] = []
        while buffer.size:
            data = bytes(buffer.pending())
            buffer.advance(len(data))
            out.extend(self._parser.feed(data))
        return out

    def events(self) -> List[Event]:
        """The events emitted since the last call."""
        return self.output.take()


def pong_for(frame: Frame) -> Optional[bytes]:
    """An in-order server's answer to a ``tether:ping`` (or a raw ping)."""
    if frame.opcode == frames.OP_PING:
        return server_frame(frames.OP_PONG, frame.payload)
    if frame.opcode == frames.OP_TEXT:
        msg = frame.json
        if msg.get("type") == "tether:ping":
            return text({"type": "tether:pong", "ts": msg.get("ts")})
    return None


def open_peer(clock: FakeClock, *, hello_ok: Optional[dict] = None, **kwargs: Any) -> Peer:
    """A tether link, no auth, opened by ``hello-ok`` (default: both features, acked 0)."""
    peer = Peer(clock, **kwargs).start()
    ok = {"type": "tether:hello-ok", "session": "sid-1", "features": ["ack", "resume"], "acked": 0}
    if hello_ok is not None:
        ok.update(hello_ok)
    peer.send_json(ok)
    assert peer.session.is_open, peer.log
    return peer


def link(clock: FakeClock, protocol: str, hb: Tuple[float, float]) -> Peer:
    """An open link with heartbeat ``hb`` = (interval, timeout), in either protocol."""
    if protocol == "tether":
        return open_peer(clock, heartbeat=hb)
    peer = Peer(clock, protocol="raw", heartbeat=hb).start()
    assert peer.session.is_open
    return peer


def begin_endless_message(peer: Peer, fragmented: bool) -> bytes:
    """Start a message that never ends; the bytes to trickle it with, one at a time.

    ``fragmented``: continuation frames of one byte each, never FIN; else one
    frame that announces 10**6 bytes.
    """
    if fragmented:
        peer.feed(server_frame(frames.OP_BINARY, b"x", fin=False))
        return server_frame(frames.OP_CONT, b"x", fin=False)
    peer.feed(server_frame(frames.OP_BINARY, b"", length=10**6))
    return b"x"


def iter_chunks(data: bytes, size: int) -> Iterable[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
