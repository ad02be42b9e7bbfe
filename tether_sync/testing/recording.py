"""Recording and replaying the inbound traffic of a session (JSON lines).

A recording is a text file with one JSON object per data message the clients
received, in order::

    {"t": 0.0132, "channel": "prices", "payload": {"sym": "ACME", "px": 12.5}}

``t`` is seconds since the recording started. The same format is written by
:class:`ServerTap` (what the test server sends, parsed off the wire) and by
:func:`record_client` (what a real client received, e.g. from production),
and :func:`read_recording` reads it back for a replay.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Callable,
    Hashable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

from ..exceptions import ProtocolError
from ..protocol.deflate import DeflateParams, PerMessageDeflate, parse_extensions
from ..protocol.frames import OP_TEXT, FrameParser, FrameProtocolError, Inflate

if TYPE_CHECKING:
    from ..client import TetherClient

PathLike = Union[str, Path]

log = logging.getLogger("tether_sync")


class Recording:
    """An open recording file; thread-safe appends.

    Args:
        path: The file (created, or truncated).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        # Guards _file, _seen and count (its one purpose: appends from several links).
        self._lock = threading.Lock()
        self._file: Optional[IO[str]] = open(self.path, "w", encoding="utf-8")
        self._seen: Set[Hashable] = set()  # keys of the messages recorded (one line each)
        self._t0 = time.monotonic()
        self.count = 0

    @property
    def active(self) -> bool:
        with self._lock:
            return self._file is not None

    def add(self, channel: Any, payload: Any, key: Optional[Hashable] = None) -> None:
        """Append one message (ignored once stopped).

        Args:
            channel: The message's channel.
            payload: Its payload (JSON-encodable).
            key: Identifies one published message, e.g. ``(channel, epoch,
                offset)``: a message with a key already recorded is not
                recorded again (the same publication sent to two subscribers,
                or replayed to a client that resumed).
        """
        line = json.dumps(
            {"t": round(time.monotonic() - self._t0, 6), "channel": channel, "payload": payload}
        )
        with self._lock:
            if self._file is None:
                return
            if key is not None:
                if key in self._seen:
                    return
                self._seen.add(key)
            self._file.write(line + "\n")
            self._file.flush()
            self.count += 1

    def stop(self) -> int:
        """Close the file (idempotent); how many messages it holds."""
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            file.close()
        return self.count

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _inflater(head: bytes) -> Optional[Inflate]:
    """The ``inflate`` of a response head that agreed permessage-deflate, else None."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"sec-websocket-extensions":
            continue
        try:
            for ext, params in parse_extensions(value.decode("latin-1")):
                if ext != "permessage-deflate":
                    continue
                agreed = dict(params)
                bits = agreed.get("server_max_window_bits")
                codec = PerMessageDeflate(
                    DeflateParams(
                        server_no_context_takeover="server_no_context_takeover" in agreed,
                        server_max_window_bits=int(bits) if bits else 15,
                    )
                )
                return codec.decode
        except (ProtocolError, ValueError):
            return None
    return None


class ServerTap:
    """Parses what the server sends on one connection; data envelopes go to the recording.

    Every connection has one from its start, recording or not, so that a
    recording started later still finds the frame boundaries: it covers the
    connections already open too. The bytes start with the HTTP response of the
    opening handshake; after it, WebSocket frames (unmasked; inflated when the
    handshake agreed permessage-deflate). A connection whose frames cannot be
    parsed is not recorded, and says so once if a recording is on.

    Args:
        current: Returns the recording in progress, or None.
    """

    def __init__(self, current: Callable[[], Optional[Recording]]) -> None:
        self._current = current
        self._head = b""
        self._parser: Optional[FrameParser] = None
        self._broken = False

    def __call__(self, data: bytes) -> None:
        if self._broken:
            return
        if self._parser is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:  # not an HTTP response: never mind
                    self._broken = True
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            self._parser = FrameParser(max_message_size=2**31, inflate=_inflater(head))
        try:
            messages = self._parser.feed(data)
        except FrameProtocolError:
            self._broken = True
            if self._recording() is not None:
                log.warning("recording: a connection's frames could not be parsed; not recorded")
            return
        recording = self._recording() if messages else None
        if recording is None:
            return
        for message in messages:
            opcode, payload = message[0], message[1]
            if opcode != OP_TEXT:
                continue
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("type") == "data":
                channel = obj.get("channel")
                offset = obj.get("offset")
                key = None
                if isinstance(offset, int):  # a publication (§5): one line, however sent
                    key = (channel, obj.get("epoch"), offset)
                recording.add(channel, obj.get("payload"), key)

    def _recording(self) -> Optional[Recording]:
        recording = self._current()
        return recording if recording is not None and recording.active else None


def record_client(client: TetherClient, path: PathLike) -> Recording:
    """Record every data message ``client`` receives (e.g. in production) to ``path``.

    A ``message`` handler writes each one (on the client's dispatcher); stop
    with ``.stop()`` or a ``with`` block. Replay the file in a test with
    ``tether_server.replay(path)``.

    Args:
        client: A client (connected or not).
        path: The recording file (created, or truncated).

    Returns:
        The open recording.
    """
    recording = Recording(path)
    off: List[Callable[[], None]] = []

    def on_message(event: Any) -> None:
        if not recording.active:
            if off:
                off.pop()()
            return
        if event.channel is not None:
            recording.add(event.channel, event.payload)

    off.append(client.on("message", on_message))
    return recording


def read_recording(path: PathLike) -> Iterator[Tuple[float, Any, Any]]:
    """``(t, channel, payload)`` of each recorded message, in order."""
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                item = json.loads(line)
                yield float(item.get("t", 0.0)), item["channel"], item.get("payload")


__all__ = ["Recording", "ServerTap", "read_recording", "record_client"]
