"""The ack window (DESIGN §5): unacknowledged messages count against the queue bound.

A sender blocked on a full window must go on as soon as an ack frees room: a
server acks at least once per 64 messages, so one ack is the unit of room, and
a sender left waiting after it would wait for the next ack (up to 50 ms from a
server that follows §5, for ever from one that waits for more data) with room
free. And a stream far larger than the window, sent straight after
``connect()`` (before the link opens), is resolved message by message, in
order, against the bundled server.

The scripted peer below acks only when the test says so; threads wait on
Events and Conditions with timeouts, nothing sleeps.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any, List, Optional

import pytest
from support.raw_server import ScriptedPeer, _read_frame, server_frame

from tether_sync import Queue, TetherClient
from tether_sync.delivery import Delivery

WAIT = 10.0
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 1, 8, 9, 10


class AckOnCue(ScriptedPeer):
    """Speaks DESIGN §5's ``ack`` feature, but acks only when :meth:`ack` is called.

    Grants ``ack`` in ``hello-ok``, answers pings (WebSocket and ``tether:ping``)
    and records the ``seq`` of every data envelope, in arrival order.
    """

    threaded = True

    def __init__(self) -> None:
        self.seqs: List[int] = []
        self._conn: Optional[socket.socket] = None
        self._send_lock = threading.Lock()  # one writer at a time on the connection
        super().__init__(b"")

    def wait_seqs(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.seqs) >= n, WAIT)

    def ack(self, seq: int) -> None:
        """Send a cumulative ``tether:ack`` for ``seq`` (from the test's thread)."""
        self._send(json.dumps({"type": "tether:ack", "seq": seq}).encode())

    def _send(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        assert self._conn is not None
        with self._send_lock:
            self._conn.sendall(server_frame(opcode, payload))

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            self._handshake(conn)
            self._conn = conn
            while True:
                frame = _read_frame(conn)
                if frame is None:
                    return
                opcode, payload = frame
                if opcode == OP_CLOSE:
                    self._send(payload[:2], OP_CLOSE)
                    return
                if opcode == OP_PING:
                    self._send(payload, OP_PONG)
                    continue
                msg = json.loads(payload)
                kind = msg.get("type")
                if kind == "tether:hello":
                    hello_ok = {
                        "type": "tether:hello-ok",
                        "session": msg["session"],
                        "features": ["ack"],
                        "acked": 0,
                    }
                    self._send(json.dumps(hello_ok).encode())
                elif kind == "tether:ping":
                    self._send(payload.replace(b"tether:ping", b"tether:pong", 1))
                elif "seq" in msg:
                    with self._cond:
                        self.seqs.append(msg["seq"])
                        self._cond.notify_all()


class WaitLogged(logging.Handler):
    """Sets ``waiting`` when a send() logs that it waits for room (the link open)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.waiting = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "send() is waiting for room" in message and "link takes messages" in message:
            self.waiting.set()


@pytest.mark.timeout(60)
def test_a_sender_blocked_on_the_ack_window_goes_on_as_soon_as_one_ack_frees_room() -> None:
    bound, extra = 1000, 64  # the default bound; one ack's worth beyond it
    peer = AckOnCue()
    logged = WaitLogged()
    log = logging.getLogger("tether_sync")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(logged)
    client = TetherClient(peer.url, queue=Queue(max_size=bound))
    first: List[Delivery] = []
    more: List[Delivery] = []
    sent_more = threading.Event()

    def sender() -> None:
        first.extend(client.send(i, channel="w") for i in range(bound))
        more.extend(client.send(bound + i, channel="w") for i in range(extra))
        sent_more.set()

    thread = threading.Thread(target=sender, name="window-sender", daemon=True)
    try:
        client.connect(wait=True, timeout=WAIT)
        assert "ack" in client.stats().extensions
        thread.start()
        assert peer.wait_seqs(bound), f"the peer got {len(peer.seqs)} of {bound}"
        # The window is full (all written, none acked): send() number bound + 1 waits.
        assert logged.waiting.wait(WAIT), "the sender never waited for room"
        assert not sent_more.is_set()
        peer.ack(extra)  # one ack: room for exactly the messages still to send
        assert sent_more.wait(WAIT), (
            f"one ack freed room for {extra} messages, yet the sender still waited "
            f"({len(more)} of {extra} sent)"
        )
        assert all(d.done() for d in first[:extra])
        assert peer.wait_seqs(bound + extra)
        assert peer.seqs == list(range(1, bound + extra + 1))  # in order, once each
        peer.ack(bound + extra)
        assert more[-1].result(timeout=WAIT) is None
        assert all(d.done() and d.exception(0) is None for d in first + more)
    finally:
        log.removeHandler(logged)
        log.setLevel(old_level)
        client.close(timeout=WAIT)
        peer.close()
        thread.join(WAIT)
    assert not thread.is_alive()


@pytest.mark.timeout(120)
def test_a_stream_far_larger_than_the_window_sent_right_after_connect_is_resolved_in_order(
    tether_server: Any,
) -> None:
    n = 100_000
    client = TetherClient(tether_server.url)  # default bound: 1,000 unacknowledged
    deliveries: List[Delivery] = []
    seen: List[int] = []
    early: List[int] = []  # messages resolved while the one before was not
    lock = threading.Lock()  # guards seen and early (callbacks run on the dispatcher)

    def resolved(d: Delivery) -> None:
        k = d.payload
        ahead = k > 0 and not deliveries[k - 1].done()
        with lock:
            seen.append(k)
            if ahead:
                early.append(k)

    try:
        client.connect()  # no wait: the first sends queue while the link opens
        for i in range(n):
            d = client.send(i, channel="stream")
            d.add_done_callback(resolved)
            deliveries.append(d)
        assert deliveries[-1].result(timeout=60) is None
        assert all(d.done() and d.exception(0) is None for d in deliveries)
        stats = client.stats()
        assert "ack" in stats.extensions
        assert (stats.sent, stats.acked, stats.unacked) == (n, n, 0)
        assert tether_server.wait_for(lambda: tether_server.data_count("stream") >= n, 30)
        assert tether_server.data_payloads("stream") == list(range(n))
        assert client.close(timeout=WAIT)  # joins the dispatcher: every callback ran
        with lock:
            assert sorted(seen) == list(range(n))  # every callback ran, once
            assert early == [], f"resolved before the message sent before them: {early[:10]}"
    finally:
        client.close(timeout=WAIT)
