"""A peer that breaks RFC 6455: the client fails the link with the right code, then reconnects."""

from __future__ import annotations

import struct
from typing import Callable, Iterator

import pytest
from support.raw_server import ScriptedPeer, server_frame
from support.recorder import Recorder

from tether_sync import ProtocolError, TetherClient
from tether_sync.protocol.frames import OP_BINARY, OP_CLOSE, OP_TEXT

CASES = {
    # name: (bytes the server sends, close code the client must answer with)
    "invalid-utf8": (server_frame(OP_TEXT, b"ok \xff\xfe"), 1007),
    "masked-server-frame": (server_frame(OP_TEXT, b"hi", masked=True), 1002),
    "reserved-bit": (server_frame(OP_BINARY, b"x", rsv1=True), 1002),
    "unknown-opcode": (server_frame(0x3, b"x"), 1002),
}


@pytest.fixture(params=sorted(CASES))
def broken_peer(request: pytest.FixtureRequest) -> Iterator[tuple[ScriptedPeer, int]]:
    script, code = CASES[request.param]
    # A valid message first: what arrived intact before the violation is delivered.
    peer = ScriptedPeer(server_frame(OP_TEXT, b"before") + script)
    yield peer, code
    peer.close()


@pytest.mark.timeout(30)
def test_violation_fails_the_link_with_its_code_then_reconnects(
    broken_peer: tuple[ScriptedPeer, int], make_client: Callable[..., TetherClient]
) -> None:
    peer, code = broken_peer
    client = make_client(peer.url, protocol="raw")
    inbox = client.subscribe("default")
    errors = Recorder()
    client.on("error", errors)
    client.connect()
    assert inbox.get(timeout=10) == "before"
    assert peer.wait_replies(1)
    opcode, payload = peer.replies[0]
    assert opcode == OP_CLOSE
    assert struct.unpack("!H", payload[:2])[0] == code
    assert errors.wait_count(1)
    error = errors.snapshot()[0].error
    assert isinstance(error, ProtocolError) and error.close_code == code
    # The link was failed, not the client: it connects again.
    assert peer.wait_replies(2)
    assert peer.handshakes >= 2


@pytest.mark.timeout(30)
def test_fragmented_message_with_a_ping_in_between(
    make_client: Callable[..., TetherClient],
) -> None:
    from tether_sync.protocol.frames import OP_CONT, OP_PING, OP_PONG

    script = (
        server_frame(OP_TEXT, "héllo ".encode()[:2], fin=False)  # splits the é
        + server_frame(OP_PING, b"mid")
        + server_frame(OP_CONT, "héllo ".encode()[2:], fin=False)
        + server_frame(OP_CONT, b"world")
    )
    peer = ScriptedPeer(script)
    try:
        client = make_client(peer.url, protocol="raw")
        inbox = client.subscribe("default")
        client.connect()
        assert inbox.get(timeout=10) == "héllo world"
        assert peer.wait_replies(1)
        assert peer.replies[0] == (OP_PONG, b"mid")  # answered at once, mid-message
    finally:
        peer.close()
