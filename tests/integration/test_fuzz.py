"""10,000 random and mutated frames through a real socket; the client survives and still echoes.

A scripted server (raw TCP and the RFC 6455 handshake, no websocket library) sends,
connection after connection, frames with random opcodes, flags and lengths, valid
Tether messages carrying crash values (NaN, 1e999, lone surrogates, huge ints, deep
nesting, wrong types), and mutations of valid messages. Whatever breaks a connection,
the client reconnects. When the budget is spent the same server turns into an echo
server, and the same client must still echo through it.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import pytest
from support.raw_server import ScriptedPeer, _read_frame

from tether_sync import Heartbeat, Reconnect, TetherClient

TOTAL_FRAMES = 10_000
SEED = 9

CRASH = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    '"\\ud800"',
    '"\\udfff"',
    "7" * 4000,
    "1" * 5000,
    "[" * 2000 + "]" * 2000,
    "[" * 50 + "]" * 50,
    '{"a":' * 50 + "1" + "}" * 50,
    "null",
    "true",
    "-1",
    "0",
    "1.5",
    '""',
    "[]",
    "{}",
    '["ack","resume"]',
    '"x"',
    str(2**70),
]
TYPES = [
    "data",
    "tether:ping",
    "tether:pong",
    "tether:auth-ok",
    "tether:error",
    "tether:hello-ok",
    "tether:ack",
    "tether:subscribed",
    "tether:control-ack",
    "subscribe",
    "tether:hello",
]
FIELDS = [
    "ts",
    "ok",
    "id",
    "error",
    "channel",
    "payload",
    "offset",
    "epoch",
    "seq",
    "features",
    "acked",
    "session",
    "recovered",
]


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode])
    n = len(payload)
    if n < 126:
        return head + bytes([n]) + payload
    if n < 65536:
        return head + bytes([126]) + struct.pack("!H", n) + payload
    return head + bytes([127]) + struct.pack("!Q", n) + payload


def tether_message(rnd: random.Random) -> bytes:
    """A Tether message of a random type whose fields hold crash values or sane ones."""
    fields = {"type": json.dumps(rnd.choice(TYPES))}
    for name in rnd.sample(FIELDS, rnd.randint(0, 5)):
        fields[name] = rnd.choice(CRASH) if rnd.random() < 0.6 else json.dumps(rnd.randint(-3, 9))
    if rnd.random() < 0.3:
        fields["channel"] = json.dumps(rnd.choice(["fz", "a", "final"]))
    if rnd.random() < 0.1:
        fields["type"] = rnd.choice(CRASH)
    body = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"
    return body.encode()


def mutate(rnd: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.random()
        if op < 0.4 and out:
            out[rnd.randrange(len(out))] = rnd.randrange(256)
        elif op < 0.6 and out:
            del out[rnd.randrange(len(out)) :]
        elif op < 0.8:
            at = rnd.randrange(len(out) + 1)
            out[at:at] = rnd.choice([b"\\ud800", b"NaN", b"\xff", b"{", b"]", b'"', b"\x00"])
        else:
            out += out[: rnd.randint(0, len(out))]
    return bytes(out)


def random_frame(rnd: random.Random) -> Tuple[bytes, bool]:
    """One frame of the fuzz; True when it surely ends the connection."""
    r = rnd.random()
    if r < 0.55:
        op = rnd.choice([1, 1, 1, 2])
        return frame(op, tether_message(rnd)), False
    if r < 0.75:
        payload = mutate(rnd, tether_message(rnd))
        if rnd.random() < 0.9:
            # Mostly valid UTF-8, so the mutation reaches the JSON layer; else 1007.
            payload = payload.decode("utf-8", "replace").encode()
        return frame(1, payload), False
    if r < 0.85:
        # A fragmented message, maybe with a control frame inside.
        msg = tether_message(rnd)
        cut = rnd.randint(0, len(msg))
        middle = frame(9, b"p") if rnd.random() < 0.5 else b""
        return frame(1, msg[:cut], fin=False) + middle + frame(0, msg[cut:]), False
    if r < 0.975:
        return frame(rnd.choice([9, 10]), rnd.randbytes(rnd.randint(0, 125))), False
    if r < 0.99:
        # Anything at all: opcode, flags, a length that may lie about the payload.
        b0 = rnd.randrange(256)
        n = rnd.choice([0, 1, 125, 126, 127, rnd.randrange(126)])
        b1 = (rnd.random() < 0.1) << 7 | n
        tail = rnd.randbytes(rnd.randint(0, 300))
        return bytes([b0, b1]) + tail, True
    code = rnd.choice([1000, 1001, 1002, 1005, 1008, 1009, 1011, 999, 4000, 4999, 5000])
    reason = rnd.choice([b"", b"bye", b"\xff\xfe", b"x" * 123])
    return frame(8, struct.pack("!H", code) + reason if rnd.random() < 0.9 else b"\x03"), True


class FuzzServer(ScriptedPeer):
    """Fuzzes each connection until ``TOTAL_FRAMES`` went out, then echoes like a Tether server."""

    threaded = True

    def __init__(self, total: int, seed: int) -> None:
        self.total = total
        self.sent = 0
        self.rnd = random.Random(seed)
        self.echoing = threading.Event()
        self.echo_connection = threading.Event()
        self.stop = threading.Event()
        self.connections = 0
        super().__init__(b"")

    def close(self) -> None:
        self.stop.set()
        super().close()

    def _talk(self, conn: socket.socket) -> None:
        with self._cond:
            self.connections += 1
        lock = threading.Lock()

        def send(data: bytes) -> None:
            with lock:
                conn.sendall(data)

        with conn:
            conn.settimeout(10)
            self._handshake(conn)
            echo = self.sent >= self.total
            if echo:
                self.echo_connection.set()
            reader = threading.Thread(target=self._read, args=(conn, send, echo), daemon=True)
            reader.start()
            if not echo:
                self._fuzz(send, conn)
            reader.join(10)

    def _fuzz(self, send: Callable[[bytes], None], conn: socket.socket) -> None:
        rnd = self.rnd
        burst = []
        fatal = False
        for _ in range(rnd.randint(1, 250)):
            if self.sent >= self.total:
                break
            data, fatal = random_frame(rnd)
            burst.append(data)
            self.sent += 1
            if fatal:
                break
        send(b"".join(burst))
        if not fatal:
            if rnd.random() < 0.5:
                send(frame(8, struct.pack("!H", rnd.choice([1000, 1001, 1011, 4001]))))
            else:
                conn.shutdown(socket.SHUT_RDWR)  # the link breaks without a close

    def _read(self, conn: socket.socket, send: Callable[[bytes], None], echo: bool) -> None:
        """Answer pings (both kinds) and closes; in echo mode, echo data envelopes."""
        while not self.stop.is_set():
            try:
                got: Optional[Tuple[int, bytes]] = _read_frame(conn)
            except (OSError, ValueError):
                return
            if got is None:
                return
            opcode, payload = got
            try:
                if opcode == 8:
                    send(frame(8, payload[:2]))
                    return
                if opcode == 9:
                    send(frame(10, payload))
                    continue
                if opcode != 1:
                    continue
                msg: Any = json.loads(payload)
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "tether:ping":
                    send(frame(1, json.dumps({"type": "tether:pong", "ts": msg["ts"]}).encode()))
                elif kind == "data" and echo:
                    self.echoing.set()
                    send(frame(1, payload))
            except OSError:
                return


@pytest.mark.timeout(60)
def test_ten_thousand_hostile_frames_leave_the_client_alive_and_echoing() -> None:
    server = FuzzServer(TOTAL_FRAMES, SEED)
    client = TetherClient(
        server.url,
        reconnect=Reconnect(base_delay=0.01, max_delay=0.05, terminal_codes=()),
        heartbeat=Heartbeat(interval=0.5, timeout=2.0),
        max_message_size=64 * 1024,
        connect_timeout=5.0,
    )
    errors: List[Any] = []
    client.on("error", lambda e: errors.append(e.error))
    started = time.monotonic()
    try:
        client.connect()
        assert server.echo_connection.wait(40), (
            f"only {server.sent} of {TOTAL_FRAMES} frames went out "
            f"over {server.connections} connections"
        )
        fuzz_time = time.monotonic() - started
        client.wait_open(timeout=10)
        thread = client._loop.thread
        assert thread is not None and thread.is_alive(), "the I/O thread died"
        assert client.state == "open"
        inbox = client.subscribe("final")
        delivery = client.send({"still": "echoing"}, channel="final")
        assert inbox.get(timeout=10) == {"still": "echoing"}
        delivery.result(timeout=5)
        assert server.echoing.is_set()
        assert server.connections > 10, "the fuzz never broke a connection"
        assert fuzz_time < 30, f"the fuzz took {fuzz_time:.1f}s"
        assert not any("internal error" in str(e) for e in errors), [
            e for e in errors if "internal error" in str(e)
        ][:3]
    finally:
        assert client.close(timeout=5) or True
        server.close()
