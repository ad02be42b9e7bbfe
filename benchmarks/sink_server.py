"""A fast, dedicated WebSocket benchmark server (a tool, not the product).

A Python ``websockets`` server would itself be the bottleneck at 100k+ messages
per second, so this one does as little as possible per byte: the HTTP upgrade
by hand, then one of three modes picked by the URL path:

``/sink?bytes=N``
    Reads and discards bytes with big ``recv_into`` calls, counting them. Once
    ``N`` bytes (the exact size of the frames the client is about to send) have
    arrived it answers one text frame ``done:<count>``, so the client can time
    "first send() until the server has everything". After that it parses frames
    (answers close and ping).
``/bigsink?bytes=N``
    The same for big frames, frame by frame: it reads each frame's header and
    skips its payload unread (never unmasked), counts only data frames'
    bytes and answers a ping with a pong, as any server does. tether_sync
    interleaves small pings with large messages (its write barriers), which
    ``/sink``'s byte count would take for data (the ``done`` then comes early
    and the frames after it are misread).
``/blast?n=N&size=64``
    Waits for one frame from the client (the "go"), then writes ``N`` pre-built
    unmasked text frames of ``size`` bytes with ~1 MiB ``sendall()`` calls.
``/echo``
    Parses client frames and echoes every data frame back unmasked (for RTT).

Any other path behaves like ``/echo``. Every connection runs on its own thread,
bounded by a socket timeout; the process ends when its stdin closes (the parent
died or is done), on SIGTERM, or after ``--max-seconds``.

Run::

    python benchmarks/sink_server.py [--port 0]

It prints ``PORT <n>`` on stdout once it listens (only on 127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time
from typing import Iterator, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
READ_SIZE = 1 << 20  # bytes per recv_into in sink mode
BLAST_CHUNK = 1 << 20  # bytes per sendall in blast mode
SOCKET_TIMEOUT = 60.0  # seconds a connection may sit idle (bounds every loop)
MAX_HEADER = 64 * 1024
MAX_FRAMES = 50_000_000  # frames one connection may send us (bounds the frame loop)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (server to client)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return header + payload


def unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    mask = (key * (n // 4 + 1))[:n]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")
    return value.to_bytes(n, "big")


class FrameReader:
    """Parses client frames from a socket (small and simple: only RTT needs speed)."""

    def __init__(self, sock: socket.socket, initial: bytes = b"") -> None:
        self.sock = sock
        self.buf = bytearray(initial)

    def frames(self) -> Iterator[Tuple[int, bytes]]:
        """Yield ``(opcode, payload)`` until EOF (or ``MAX_FRAMES``)."""
        for _ in range(MAX_FRAMES):
            frame = self._parse_one()
            while frame is None:
                data = self.sock.recv(65536)
                if not data:
                    return
                self.buf += data
                frame = self._parse_one()
            yield frame

    def _parse_one(self) -> Optional[Tuple[int, bytes]]:
        buf = self.buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n = int.from_bytes(buf[2:4], "big")
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n = int.from_bytes(buf[2:10], "big")
            pos = 10
        key = b""
        if b1 & 0x80:
            if len(buf) < pos + 4:
                return None
            key = bytes(buf[pos : pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        if key:
            payload = unmask(payload, key)
        return b0 & 0x0F, payload


def preamble(sock: socket.socket, initial: bytes) -> bytes:
    """Answer a Tether client's opening frames; return the raw bytes from its first data frame.

    tether_sync opens each connection with ``tether:hello`` and, without auth, a
    ``tether:ping`` whose pong decides the extension (DESIGN §5): this server
    speaks none of it, so it ignores the hello and answers the ping like any
    Tether server. Byte counting then starts at the first real message.
    """
    reader = FrameReader(sock, initial)
    while True:
        before = bytes(reader.buf)
        frame = reader._parse_one()
        while frame is None:
            data = sock.recv(65536)
            if not data:
                return b""
            reader.buf += data
            before = bytes(reader.buf)
            frame = reader._parse_one()
        opcode, payload = frame
        if opcode == OP_TEXT and payload.startswith(b'{"type":"tether:hello"'):
            continue
        if opcode == OP_TEXT and payload.startswith(b'{"type":"tether:ping"'):
            pong = payload.replace(b"tether:ping", b"tether:pong", 1)
            sock.sendall(server_frame(OP_TEXT, pong))
            continue
        return before  # this frame and everything after it, unparsed


def ack_sink(sock: socket.socket, n: int, initial: bytes) -> None:
    """Speak just enough of DESIGN §5 to acknowledge: ``hello-ok`` with ``ack``, then a
    cumulative ``tether:ack`` every 64 data frames; ``done:<n>`` after ``n`` of them.

    It must not be the bottleneck of what it measures (the client's side of
    acks), nor take much of a CPU the client may share (unpinned): per data
    frame it parses the header in place (an offset into one buffer, compacted
    once per read; the masking key is not copied) and unmasks one byte to tell
    a data envelope (``{"channel"``) from a ``tether:ping`` (``{"type"``); only
    the frame an ack follows has its tail unmasked, for the ``"seq":N`` the ack
    repeats. Other frames (pings, ``tether:ping``, close) are unmasked whole.
    Each ack goes out as soon as its frame is parsed (pongs: after the read's
    frames): the client's window (its queue bound counts unacknowledged
    messages) waits for it. Sending a read's acks together, after the whole
    read, was tried in session 21 and dropped: pinned, the sink's reads grow
    to hundreds of KiB, the acks of a read then wait for all of it to be
    parsed, and the "on" runs fell from 133-146 to 84-96 k/s.
    """
    reader = FrameReader(sock, initial)
    opcode, payload = next(reader.frames())
    if not payload.startswith(b'{"type":"tether:hello"'):
        raise ValueError("ack-sink: the first frame is not a hello")
    session = json.loads(payload)["session"]
    hello_ok = {"type": "tether:hello-ok", "session": session, "features": ["ack"], "acked": 0}
    sock.sendall(server_frame(OP_TEXT, json.dumps(hello_ok).encode()))
    buf = reader.buf  # the bytes read past the hello
    view = memoryview(bytearray(READ_SIZE))
    count = 0
    unacked = 0
    for _ in range(MAX_FRAMES):  # bounded: each pass reads >= 1 byte or ends
        out = []
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                length = int.from_bytes(buf[start : start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(buf[start : start + 8], "big")
                start += 8
            masked = b1 & 0x80
            key_at = start
            if masked:
                start += 4
            end = start + length
            if end > size:
                break  # the frame is not all here yet
            opcode = buf[pos] & 0x0F
            pos = end
            # A data envelope starts '{"channel"' (a tether:ping '{"type"'): its
            # third byte, unmasked, is "c". Only the one an ack follows is read.
            if (
                opcode == OP_TEXT
                and length > 8
                and buf[start + 2] ^ (buf[key_at + 2] if masked else 0) == 99
            ):
                count += 1
                unacked += 1
                if unacked < 64 and count != n:
                    continue
                # It ends with ',"seq":N}': unmask the tail only.
                tail_at = end - 24 if length > 24 else start
                tail = bytes(buf[tail_at:end])
                if masked:
                    key = bytes(buf[key_at:start])
                    turn = (tail_at - start) % 4
                    tail = unmask(tail, key[turn:] + key[:turn])
                mark = tail.rfind(b'"seq":')
                if mark < 0:
                    raise ValueError("ack-sink: a data envelope without seq")
                # At once, not after the rest of the read: the client's window
                # (its queue bound counts unacknowledged messages) waits for it.
                ack = server_frame(
                    OP_TEXT, b'{"type":"tether:ack","seq":%d}' % int(tail[mark + 6 : -1])
                )
                if count == n:
                    ack += server_frame(OP_TEXT, f"done:{n}".encode())
                sock.sendall(ack)
                unacked = 0
                continue
            payload = bytes(buf[start:end])
            if masked:
                payload = unmask(payload, bytes(buf[key_at:start]))
            if opcode == OP_CLOSE:
                out.append(server_frame(OP_CLOSE, payload[:2]))
                sock.sendall(b"".join(out))
                return
            if opcode == OP_PING:
                out.append(server_frame(OP_PONG, payload))
            elif opcode == OP_TEXT and payload.startswith(b'{"type":"tether:ping"'):
                out.append(server_frame(OP_TEXT, payload.replace(b"ping", b"pong", 1)))
        if out:
            sock.sendall(b"".join(out))
        del buf[:pos]
        got = sock.recv_into(view)  # one reused buffer: no allocation per read
        if not got:
            return
        buf += view[:got]


def frame_loop(sock: socket.socket, reader: FrameReader, echo: bool) -> None:
    """Answer ping and close; echo data frames when ``echo``. Returns on close/EOF."""
    for opcode, payload in reader.frames():
        if opcode == OP_CLOSE:
            code = payload[:2] if len(payload) >= 2 else b""
            try:
                sock.sendall(server_frame(OP_CLOSE, code))
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        if opcode == OP_PING:
            sock.sendall(server_frame(OP_PONG, payload))
        elif echo and opcode in (OP_TEXT, OP_BINARY):
            sock.sendall(server_frame(opcode, payload))


def handshake(sock: socket.socket) -> Tuple[str, bytes]:
    """Read the HTTP upgrade request and accept it.

    Returns:
        The request target (path and query) and any bytes read past the request.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEADER:
            raise ValueError("request header too large")
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    target = lines[0].split(" ")[1]
    key = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    sock.sendall(
        (
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    return target, rest


def sink(sock: socket.socket, expected: int, initial: bytes) -> None:
    """Count ``expected`` bytes as fast as possible, report, then parse frames."""
    count = len(initial)
    tail = initial[expected:] if count >= expected else b""
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    recv_into = sock.recv_into
    while count < expected:  # bounded: every recv_into gets >= 1 byte or ends it
        n = recv_into(view)
        if not n:
            return
        count += n
        if count >= expected:
            tail = bytes(view[n - (count - expected) : n])
    sock.sendall(server_frame(OP_TEXT, f"done:{count - len(tail)}".encode()))
    frame_loop(sock, FrameReader(sock, tail), echo=False)


def big_sink(sock: socket.socket, expected: int, initial: bytes) -> None:
    """Count the bytes of data frames (header included) until ``expected``; answer pings.

    Per frame only the header is parsed; payloads of data frames are skipped
    without being copied or unmasked, so frames of 64 KiB and more cost the
    server next to nothing. Control frames are small: they are read whole.
    """
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    pending = bytearray(initial)  # unparsed bytes (a header, or a control frame)
    skip = 0  # payload bytes of the current data frame still to come
    count = 0
    while count < expected or skip:  # bounded: every recv gets >= 1 byte or ends it
        if skip:
            if pending:  # bytes already read first
                take = min(skip, len(pending))
                del pending[:take]
                skip -= take
                continue
            n = sock.recv_into(view, min(skip, READ_SIZE))
            if not n:
                return
            skip -= n
            continue
        frame = _parse_header(pending)
        if frame is None:
            n = sock.recv_into(view)
            if not n:
                return
            pending += view[:n]
            continue
        opcode, header_len, length = frame
        if opcode in (OP_CONT, OP_TEXT, OP_BINARY):
            count += header_len + length
            del pending[:header_len]
            skip = length
            continue
        if len(pending) < header_len + length:  # a control frame: read it whole
            n = sock.recv_into(view)
            if not n:
                return
            pending += view[:n]
            continue
        reader = FrameReader(sock, bytes(pending[: header_len + length]))
        del pending[: header_len + length]
        op, payload = next(reader.frames())
        if op == OP_PING:
            sock.sendall(server_frame(OP_PONG, payload))
        elif op == OP_CLOSE:
            sock.sendall(server_frame(OP_CLOSE, payload[:2]))
            return
    sock.sendall(server_frame(OP_TEXT, f"done:{count}".encode()))
    frame_loop(sock, FrameReader(sock, bytes(pending)), echo=False)


def _parse_header(buf: bytearray) -> Optional[Tuple[int, int, int]]:
    """``(opcode, header length, payload length)`` of the frame at the start of ``buf``."""
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = int.from_bytes(buf[2:4], "big")
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = int.from_bytes(buf[2:10], "big")
        pos = 10
    if buf[1] & 0x80:
        pos += 4
        if len(buf) < pos:
            return None
    return buf[0] & 0x0F, pos, n


def blast(sock: socket.socket, n: int, size: int, initial: bytes) -> None:
    """Wait for the client's "go" frame, then write ``n`` text frames of ``size`` bytes."""
    reader = FrameReader(sock, initial)
    for opcode, _ in reader.frames():
        if opcode in (OP_TEXT, OP_BINARY):
            break
        if opcode == OP_CLOSE:
            return
    else:
        return
    text = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    frame = server_frame(OP_TEXT, text)
    per_chunk = max(1, BLAST_CHUNK // len(frame))
    chunk = frame * per_chunk
    full, rest = divmod(n, per_chunk)
    for _ in range(full):
        sock.sendall(chunk)
    if rest:
        sock.sendall(frame * rest)
    frame_loop(sock, reader, echo=False)


def serve_connection(sock: socket.socket) -> None:
    try:
        sock.settimeout(SOCKET_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target, rest = handshake(sock)
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        mode = parts.path.rstrip("/").rsplit("/", 1)[-1]
        if mode in ("sink", "bigsink", "blast"):
            rest = preamble(sock, rest)
        if mode == "acksink":
            ack_sink(sock, int(query["n"]), rest)
        elif mode == "sink":
            sink(sock, int(query["bytes"]), rest)
        elif mode == "bigsink":
            big_sink(sock, int(query["bytes"]), rest)
        elif mode == "blast":
            blast(sock, int(query.get("n", "100000")), int(query.get("size", "64")), rest)
        else:
            frame_loop(sock, FrameReader(sock, rest), echo=True)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"sink_server: connection ended: {exc!r}", file=sys.stderr, flush=True)
    finally:
        try:
            sock.close()
        except OSError:
            pass


def _exit_on_stdin_eof() -> None:
    # The parent holds our stdin; when it exits (or closes it), so do we.
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument(
        "--no-stdin-watch", action="store_true", help="do not exit when stdin reaches EOF"
    )
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(128)
    listener.settimeout(0.5)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    if not args.no_stdin_watch:
        threading.Thread(target=_exit_on_stdin_eof, daemon=True).start()
    end = time.monotonic() + args.max_seconds
    while time.monotonic() < end:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()
    listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
