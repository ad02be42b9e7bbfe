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
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple, Union

from ..frames import OP_TEXT, FrameParser

if TYPE_CHECKING:
    from ..client import TetherClient

PathLike = Union[str, Path]


class Recording:
    """An open recording file; thread-safe appends.

    Args:
        path: The file (created, or truncated).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        # Guards _file and count (its one purpose: appends from several links).
        self._lock = threading.Lock()
        self._file: Optional[IO[str]] = open(self.path, "w", encoding="utf-8")
        self._t0 = time.monotonic()
        self.count = 0

    @property
    def active(self) -> bool:
        with self._lock:
            return self._file is not None

    def add(self, channel: Any, payload: Any) -> None:
        """Append one message (ignored once stopped)."""
        line = json.dumps(
            {"t": round(time.monotonic() - self._t0, 6), "channel": channel, "payload": payload}
        )
        with self._lock:
            if self._file is None:
                return
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


class ServerTap:
    """Parses what the server sends on one connection; data envelopes go to the recording.

    The bytes start with the HTTP response of the opening handshake; after it,
    WebSocket frames (unmasked, not compressed: the test server offers no
    compression unless asked to).
    """

    def __init__(self, recording: Recording) -> None:
        self._recording = recording
        self._head = b""
        self._parser: Optional[FrameParser] = None

    def __call__(self, data: bytes) -> None:
        if not self._recording.active:
            return
        if self._parser is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = self._head[end + 4 :]
            self._head = b""
            self._parser = FrameParser(max_message_size=2**31)
        for message in self._parser.feed(data):
            opcode, payload = message[0], message[1]
            if opcode != OP_TEXT:
                continue
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("type") == "data":
                self._recording.add(obj.get("channel"), obj.get("payload"))


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
