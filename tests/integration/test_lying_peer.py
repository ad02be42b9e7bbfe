"""A lying §5 peer costs one connection, never a message (DESIGN §5 rules 12 and 13).

The liar is a real WebSocket server on 127.0.0.1 that answers the hello with an
honest ``hello-ok``, takes the client's first 1,000 messages without acking
them, and then lies: an ack it cannot give, a ``hello-ok`` on the next link
whose ``acked`` or session is bogus, an envelope or ``tether:subscribed`` with a
position that is none. The client is given ``[liar, real]`` as its endpoints, so
after the lie it moves on to the bundled server.

With default options (and 3,000 sends, the first 1,000 to the liar) the test
checks what a user would notice: the lie shows up as an ``error`` event carrying
a :class:`ProtocolError`, the liar sees the client close with 1002, and in the
end the real server has every message, in order, exactly once: a Delivery
resolved by the lie would never have been resent, so the count alone catches it.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from support.listener import Listener
from support.raw_server import _read_frame, accept_handshake, server_frame
from support.recorder import Recorder

from tether_sync import ProtocolError, Queue, TetherClient
from tether_sync.protocol.frames import OP_CLOSE, OP_TEXT
from tether_sync.server import TetherServer

pytestmark = pytest.mark.timeout(60)

FIRST = 1000  # messages the liar takes (the default queue bound: none waits for room)
TOTAL = 3000
CHANNEL = "chat"
NEWS = "news"  # subscribed, for the position lies

# name: (when, the lying frame). "ack"/"position": on the first link, after it took
# FIRST messages; "hello": the hello-ok of the second link (the first one ended
# with FIRST messages unacked, so they are carried and the lie could resolve them).
ACK = {"type": "tether:ack"}
HELLO_OK = {"type": "tether:hello-ok", "features": ["ack", "resume"], "acked": 0}
ENVELOPE = {"channel": NEWS, "type": "data", "payload": 0, "id": "x", "offset": 1, "epoch": "e1"}
SUBSCRIBED = {"type": "tether:subscribed", "channel": NEWS, "recovered": False, "epoch": "e1"}
LIES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "ack-above-highest": ("ack", {**ACK, "seq": FIRST + 1}),
    "ack-far-above": ("ack", {**ACK, "seq": 10**6}),
    "ack-2**63": ("ack", {**ACK, "seq": 2**63}),
    "ack-10**30": ("ack", {**ACK, "seq": 10**30}),
    "ack-negative": ("ack", {**ACK, "seq": -1}),
    "ack-float": ("ack", {**ACK, "seq": 500.5}),
    "ack-string": ("ack", {**ACK, "seq": "500"}),
    "ack-bool": ("ack", {**ACK, "seq": True}),
    "ack-null": ("ack", {**ACK, "seq": None}),
    "hello-acked-above-highest": ("hello", {**HELLO_OK, "acked": FIRST + 1}),
    "hello-acked-2**63": ("hello", {**HELLO_OK, "acked": 2**63}),
    "hello-acked-10**30": ("hello", {**HELLO_OK, "acked": 10**30}),
    "hello-acked-negative": ("hello", {**HELLO_OK, "acked": -5}),
    "hello-acked-float": ("hello", {**HELLO_OK, "acked": 10.0}),
    "hello-acked-string": ("hello", {**HELLO_OK, "acked": "10"}),
    "hello-session-too-long": ("hello", {**HELLO_OK, "session": "s" * 65}),
    "hello-session-not-a-string": ("hello", {**HELLO_OK, "session": 7}),
    "data-offset-zero": ("position", {**ENVELOPE, "offset": 0}),
    "data-offset-negative": ("position", {**ENVELOPE, "offset": -3}),
    "data-offset-float": ("position", {**ENVELOPE, "offset": 1.5}),
    "data-offset-string": ("position", {**ENVELOPE, "offset": "1"}),
    "data-offset-bool": ("position", {**ENVELOPE, "offset": True}),
    "data-epoch-not-a-string": ("position", {**ENVELOPE, "epoch": 9}),
    "data-epoch-too-long": ("position", {**ENVELOPE, "epoch": "e" * 65}),
    "subscribed-offset-negative": ("position", {**SUBSCRIBED, "offset": -1}),
    "subscribed-offset-string": ("position", {**SUBSCRIBED, "offset": "0"}),
    "subscribed-epoch-null": ("position", {**SUBSCRIBED, "epoch": None, "offset": 0}),
    "subscribed-epoch-too-long": ("position", {**SUBSCRIBED, "epoch": "e" * 65, "offset": 0}),
}


def _text(obj: Any) -> bytes:
    return server_frame(OP_TEXT, json.dumps(obj).encode())


def _read_json(conn: socket.socket) -> Dict[str, Any]:
    """The client's next frame, a JSON object."""
    frame = _read_frame(conn)
    assert frame is not None and frame[0] == OP_TEXT
    msg: Dict[str, Any] = json.loads(frame[1])
    return msg


def _close(code: int) -> bytes:
    return server_frame(OP_CLOSE, struct.pack("!H", code))


class Liar:
    """A §5 server that takes messages without acking them and then lies.

    Connection 1 answers the hello honestly and reads until it holds ``FIRST``
    data envelopes (and, for a position lie, the subscribe); then it sends the
    lie (``ack``, ``position``), acks part and then less (``backwards``), or
    closes with 1001 (``hello``: connection 2 then gets the lying ``hello-ok``).
    Any later connection is dropped at once, so the client moves on.

    Attributes:
        close_codes: The code of each close frame the client sent, per lie.
        accepted: Payloads of the envelopes it acked truthfully (``backwards``).
    """

    def __init__(self, when: str, lie: Dict[str, Any]) -> None:
        self.when = when
        self.lie = lie
        self.close_codes: List[Optional[int]] = []
        self.accepted: List[Any] = []
        self.failure: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._count = 0  # connections so far, numbered under _cond
        self._listener = Listener(self._talk, threaded=True, name="liar")
        port = self._listener.port
        # Two spellings of one endpoint: the client takes them in turn.
        self.urls = [f"ws://127.0.0.1:{port}/first", f"ws://127.0.0.1:{port}/second"]

    def wait_closes(self, n: int, timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.close_codes) >= n, timeout)

    def close(self) -> None:
        self._listener.close()

    def _talk(self, conn: socket.socket) -> None:
        with self._cond:
            self._count += 1
            n = self._count
        self._connection(conn, n)

    def _connection(self, conn: socket.socket, n: int) -> None:
        with conn:
            conn.settimeout(20)
            try:
                if n == 1:
                    self._first(conn)
                elif n == 2 and self.when == "hello":
                    hello = self._hello(conn)
                    conn.sendall(_text({"session": hello["session"], **self.lie}))
                    self._until_close(conn)
            except (OSError, ValueError) as exc:  # the client left: a failure of the test
                with self._cond:
                    self.failure = exc
                    self._cond.notify_all()

    def _hello(self, conn: socket.socket) -> Dict[str, Any]:
        accept_handshake(conn)
        hello = _read_json(conn)
        assert hello["type"] == "tether:hello"
        return hello

    def _first(self, conn: socket.socket) -> None:
        hello = self._hello(conn)
        conn.sendall(_text({**HELLO_OK, "session": hello["session"]}))
        seqs: List[Tuple[int, Any]] = []
        subscribed = False
        while len(seqs) < FIRST or not subscribed:
            frame = _read_frame(conn)
            assert frame is not None
            if frame[0] != OP_TEXT:
                continue
            msg = json.loads(frame[1])
            if msg.get("type") == "data":
                seqs.append((msg["seq"], msg["payload"]))
            elif msg.get("type") == "subscribe":
                subscribed = True
            elif msg.get("type") == "tether:ping":
                conn.sendall(_text({"type": "tether:pong", "ts": msg.get("ts")}))
        assert [s for s, _ in seqs] == list(range(1, FIRST + 1))
        if self.when == "hello":
            conn.sendall(_close(1001))  # going away: the FIRST stay unacked
            self._until_close(conn, record=False)
        elif self.when == "backwards":
            half = FIRST // 2
            self.accepted = [p for s, p in seqs if s <= half]
            conn.sendall(_text({**ACK, "seq": half}) + _text({**ACK, "seq": half // 2}))
            conn.sendall(_close(1001))
            self._until_close(conn)
        else:
            if self.lie["type"] == "data":
                # The honest answer first, then the envelope with the bogus position.
                conn.sendall(_text({**SUBSCRIBED, "offset": 0}))
            conn.sendall(_text(self.lie))
            self._until_close(conn)

    def _until_close(self, conn: socket.socket, record: bool = True) -> None:
        """Read (and drop) the client's frames until its close frame; echo it."""
        while True:
            frame = _read_frame(conn)
            if frame is None:
                return
            opcode, payload = frame
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                try:
                    conn.sendall(server_frame(OP_CLOSE, payload[:2]))
                except OSError:
                    pass
                if record:
                    with self._cond:
                        self.close_codes.append(code)
                        self._cond.notify_all()
                return


def _run(
    liar: Liar,
    real: TetherServer,
    make_client: Callable[..., TetherClient],
    **options: Any,
) -> Tuple[TetherClient, Recorder]:
    """Send FIRST (taken by the liar), let the lie play out, then the rest to ``real``."""
    urls = [*liar.urls, real.url] if liar.when == "hello" else [liar.urls[0], real.url]
    client = make_client(urls, **options)
    errors = Recorder()
    client.on("error", lambda event: errors(event.error))
    client.subscribe(NEWS, lambda message: None)
    client.connect(wait=True, timeout=10)
    first = [client.send(n, channel=CHANNEL) for n in range(FIRST)]
    # The lie is told, the link fails, the client moves to the real server and
    # resends all of them there (each is done only on the real server's ack).
    for d in first:
        d.result(timeout=30)
    rest = [client.send(n, channel=CHANNEL) for n in range(FIRST, TOTAL)]
    for d in rest:
        d.result(timeout=30)
    assert client.flush(timeout=10)
    assert liar.failure is None, liar.failure
    return client, errors


@pytest.mark.parametrize("name", list(LIES))
def test_a_lie_costs_one_connection_and_no_message(
    name: str, make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    when, lie = LIES[name]
    liar = Liar(when, lie)
    try:
        real = make_server(port=0)
        client, errors = _run(liar, real, make_client)
        # Every message reached the real server, in order, exactly once.
        assert real.data_payloads(CHANNEL) == list(range(TOTAL))
        # The liar saw the client fail the link with 1002, and the app heard why.
        assert liar.wait_closes(1)
        assert liar.close_codes == [1002]
        protocol_errors = [e for e in errors.snapshot() if isinstance(e, ProtocolError)]
        assert len(protocol_errors) == 1, errors.snapshot()
        assert protocol_errors[0].close_code == 1002
        assert client.stats().extensions == ("ack", "resume")
    finally:
        liar.close()


def test_backwards_acks_are_no_lie_and_lose_nothing(
    make_server: Callable[..., TetherServer], make_client: Callable[..., TetherClient]
) -> None:
    # The liar truthfully acks the first half, then acks less: nothing changes, no
    # error; it closes (1001), and the real server gets the rest exactly once.
    liar = Liar("backwards", {})
    try:
        real = make_server(port=0)
        _, errors = _run(liar, real, make_client)
        assert liar.accepted == list(range(FIRST // 2))
        assert liar.accepted + real.data_payloads(CHANNEL) == list(range(TOTAL))
        assert liar.wait_closes(1) and liar.close_codes == [1001]  # its own close, echoed
        assert not [e for e in errors.snapshot() if isinstance(e, ProtocolError)]
    finally:
        liar.close()


@pytest.mark.timeout(90)
def test_a_huge_hello_ok_acked_does_not_stop_a_durable_outbox(
    tmp_path: Path,
    make_server: Callable[..., TetherServer],
    make_client: Callable[..., TetherClient],
) -> None:
    # The measured bug: hello-ok acked >= 2**63 went into the outbox's seq counter,
    # which SQLite cannot store: the durable outbox stopped for good.
    liar = Liar("hello", {**HELLO_OK, "acked": 2**63})
    try:
        real = make_server(port=0)
        client, errors = _run(liar, real, make_client, queue=Queue(path=str(tmp_path / "o.db")))
        assert real.data_payloads(CHANNEL) == list(range(TOTAL))
        assert liar.wait_closes(1) and liar.close_codes == [1002]
        assert [type(e) for e in errors.snapshot()] == [ProtocolError]
        assert client.stats().extensions == ("ack", "resume")
    finally:
        liar.close()


def test_a_node_that_lost_its_position_raises_recovery_and_the_client_follows(
    make_client: Callable[..., TetherClient],
) -> None:
    # Rule 13, over a real socket: a second tether:subscribed while subscribed.
    # recovered false: a `recovery` event, and the new position is taken (10 is
    # old, 11 new); recovered true: its replay follows, without duplicates.
    done = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(20)
            accept_handshake(conn)
            hello = _read_json(conn)
            conn.sendall(_text({**HELLO_OK, "session": hello["session"]}))
            while _read_json(conn).get("type") != "subscribe":
                pass
            envelope = {**ENVELOPE, "epoch": "e1"}
            script = [{**SUBSCRIBED, "offset": 0}]
            script += [{**envelope, "offset": n, "payload": n} for n in (1, 2, 3)]
            script += [{**SUBSCRIBED, "epoch": "e2", "offset": 10}]
            e2 = {**envelope, "epoch": "e2"}
            script += [{**e2, "offset": n, "payload": n} for n in (10, 11)]
            script += [{**SUBSCRIBED, "epoch": "e2", "offset": 9, "recovered": True}]
            script += [{**e2, "offset": n, "payload": n} for n in (10, 11, 12)]
            conn.sendall(b"".join(_text(m) for m in script))
            done.wait(20)

    listener = Listener(serve, name="lost-position")
    try:
        client = make_client(listener.url)
        recoveries = Recorder()
        client.on("recovery", recoveries)
        errors = Recorder()
        client.on("error", errors)
        inbox = client.subscribe(NEWS)
        client.connect(wait=True, timeout=10)
        assert [inbox.get(timeout=10) for _ in range(5)] == [1, 2, 3, 11, 12]
        assert recoveries.wait_count(1)
        (event,) = recoveries.snapshot()
        assert (event.channel, event.recovered, event.epoch, event.offset) == (
            NEWS,
            False,
            "e2",
            10,
        )
        assert errors.snapshot() == [] and client.state.value == "open"
    finally:
        done.set()
        listener.close()
