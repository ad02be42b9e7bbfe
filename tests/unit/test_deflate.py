"""Tests of tether_sync.protocol.deflate (RFC 7692), cross-checked against python-websockets.

The reference peer is websockets' sans-I/O ``ServerProtocol`` with its own
``ServerPerMessageDeflateFactory``: it negotiates against our offer header, and
its compressed frames go through our parser while ours go through its reader.
No sockets, threads or clocks.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import random
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from tether_sync.exceptions import ProtocolError
from tether_sync.protocol import deflate
from tether_sync.protocol.deflate import (
    DEFAULT_THRESHOLD,
    DeflateParams,
    PerMessageDeflate,
    accept_response,
    client_offer,
    parse_extensions,
)
from tether_sync.protocol.frames import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameParser,
    FrameProtocolError,
    MaskKeys,
    encode_frame,
    encode_frames,
)

MiB = 2**20


def json_payload(size: int, seed: int = 0) -> bytes:
    """A JSON document of about ``size`` bytes that looks like real traffic."""
    rng = random.Random(seed)
    items = []
    total = 0
    while total < size:
        item = {
            "id": rng.randrange(10**9),
            "channel": rng.choice(["prices", "orders", "chat", "presence"]),
            "price": round(rng.uniform(0, 1000), 2),
            "tags": rng.sample(["a", "bb", "ccc", "dddd", "eeeee"], 3),
        }
        items.append(item)
        total += len(json.dumps(item)) + 2
    return json.dumps({"type": "batch", "items": items}).encode()


# --------------------------------------------------------------------------- the reference peer


class WsServer:
    """A websockets ``ServerProtocol`` that accepted our offer, driven by hand."""

    def __init__(self, offer: str, factory: Optional[ServerPerMessageDeflateFactory] = None):
        if factory is None:
            # websockets' own server default (enable_server_permessage_deflate).
            factory = ServerPerMessageDeflateFactory(
                server_max_window_bits=12,
                client_max_window_bits=12,
                compress_settings={"memLevel": 5},
            )
        self.proto = ServerProtocol(extensions=[factory], max_size=None)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"
        )
        self.proto.receive_data(request.encode())
        [req] = self.proto.events_received()
        response = self.proto.accept(req)
        assert response.status_code == 101, response.body
        self.proto.send_response(response)
        self.proto.data_to_send()
        self.response_header: Optional[str] = response.headers.get("Sec-WebSocket-Extensions")

    def send(self, opcode: int, pieces: List[bytes]) -> bytes:
        """Send one message in ``len(pieces)`` frames; return the wire bytes."""
        for i, piece in enumerate(pieces):
            fin = i == len(pieces) - 1
            if i:
                self.proto.send_continuation(piece, fin)
            elif opcode == OP_TEXT:
                self.proto.send_text(piece, fin)
            else:
                self.proto.send_binary(piece, fin)
        return b"".join(self.proto.data_to_send())

    def receive(self, data: bytes) -> List[Tuple[int, bytes]]:
        """Feed our client's bytes; return the messages websockets decoded."""
        self.proto.receive_data(data)
        assert self.proto.parser_exc is None, self.proto.parser_exc
        out: List[Tuple[int, bytes]] = []
        for frame in self.proto.events_received():
            assert isinstance(frame, Frame)
            if frame.opcode is Opcode.CONT:
                op, data_so_far = self._open
                self._open = (op, data_so_far + bytes(frame.data))
            else:
                self._open = (int(frame.opcode), bytes(frame.data))
            if frame.fin:
                out.append(self._open)
        return out

    _open: Tuple[int, bytes] = (0, b"")


def negotiate(
    factory: Optional[ServerPerMessageDeflateFactory] = None, **offer: Any
) -> Tuple[WsServer, PerMessageDeflate]:
    server = WsServer(client_offer(**offer), factory)
    params = accept_response(server.response_header, **offer)
    assert params is not None
    return server, PerMessageDeflate(params)


def client_send(
    codec: PerMessageDeflate, keys: MaskKeys, opcode: int, payload: bytes, pieces: int = 1
) -> bytes:
    """Our side: compress one message, then send it in ``pieces`` frames."""
    data, rsv1 = codec.encode(payload)
    step = max(1, -(-len(data) // pieces))
    chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    frames = [
        encode_frame(
            opcode if i == 0 else OP_CONT,
            chunk,
            keys.next(),
            fin=i == len(chunks) - 1,
            rsv1=rsv1 and i == 0,
        )
        for i, chunk in enumerate(chunks)
    ]
    return b"".join(frames)


def split(data: bytes, pieces: int) -> List[bytes]:
    step = max(1, -(-len(data) // pieces))
    return [data[i : i + step] for i in range(0, len(data), step)] or [b""]


# --------------------------------------------------------------------------- offer and response


def test_default_offer_is_like_websockets_client() -> None:
    assert client_offer() == "permessage-deflate; client_max_window_bits=12"


def test_offer_with_every_parameter() -> None:
    assert client_offer(
        client_max_window_bits=10,
        server_max_window_bits=11,
        client_no_context_takeover=True,
        server_no_context_takeover=True,
    ) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=11; client_max_window_bits=10"
    )
    assert client_offer(client_max_window_bits=None) == "permessage-deflate"


@pytest.mark.parametrize(
    "kw",
    [
        {"client_max_window_bits": 8},
        {"client_max_window_bits": 16},
        {"server_max_window_bits": 7},
        {"server_max_window_bits": 16},
    ],
)
def test_offer_rejects_bad_window_bits(kw: Any) -> None:
    with pytest.raises(ValueError):
        client_offer(**kw)


def test_parse_extensions_grammar() -> None:
    assert parse_extensions(
        'Permessage-Deflate ;server_max_window_bits = "10";client_no_context_takeover,x-a;b=c'
    ) == [
        (
            "permessage-deflate",
            [("server_max_window_bits", "10"), ("client_no_context_takeover", None)],
        ),
        ("x-a", [("b", "c")]),
    ]
    assert parse_extensions('a; b="x\\"y"') == [("a", [("b", 'x"y')])]


@pytest.mark.parametrize("value", ["", ",", "a,", "a b", "a;", "a; b=", 'a; b="x', "a; =1", "a;;b"])
def test_parse_extensions_malformed(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_extensions(value)
    assert info.value.close_code == 1002


def test_no_header_means_declined() -> None:
    assert accept_response(None) is None
    assert accept_response("") is None
    assert accept_response("  ") is None


@pytest.mark.parametrize(
    ("offer", "response", "expected"),
    [
        # The server takes our client limit, or lowers it, or leaves it (we keep ours).
        ({}, "permessage-deflate", DeflateParams(client_max_window_bits=12)),
        (
            {},
            "permessage-deflate; client_max_window_bits=9",
            DeflateParams(client_max_window_bits=9),
        ),
        (
            {},
            "permessage-deflate; server_max_window_bits=8",
            DeflateParams(server_max_window_bits=8, client_max_window_bits=12),
        ),
        ({"client_max_window_bits": None}, "permessage-deflate", DeflateParams()),
        # §7.1.1.2: the server may impose client_no_context_takeover unasked.
        (
            {},
            "permessage-deflate; client_no_context_takeover",
            DeflateParams(client_no_context_takeover=True, client_max_window_bits=12),
        ),
        # Offered client_no_context_takeover holds even if the server omits it.
        (
            {"client_no_context_takeover": True},
            "permessage-deflate",
            DeflateParams(client_no_context_takeover=True, client_max_window_bits=12),
        ),
        (
            {"server_no_context_takeover": True, "server_max_window_bits": 10},
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9",
            DeflateParams(True, False, 9, 12),
        ),
        # Quoted values are the same token (RFC 7692 §7.1).
        (
            {},
            'permessage-deflate; server_max_window_bits="10"',
            DeflateParams(server_max_window_bits=10, client_max_window_bits=12),
        ),
    ],
)
def test_accept_response_valid(offer: Any, response: str, expected: DeflateParams) -> None:
    assert accept_response(response, **offer) == expected


@pytest.mark.parametrize(
    ("offer", "response", "what"),
    [
        ({}, "x-webkit-deflate-frame", "not offered"),
        ({}, "permessage-deflate, permessage-deflate", "more than once"),
        ({}, "permessage-deflate; foo", "unknown parameter"),
        ({}, "permessage-deflate; server_no_context_takeover=1", "takes no value"),
        ({}, "permessage-deflate; client_no_context_takeover; client_no_context_takeover", "dup"),
        ({}, "permessage-deflate; server_max_window_bits", "invalid"),
        ({}, "permessage-deflate; server_max_window_bits=16", "invalid"),
        ({}, "permessage-deflate; server_max_window_bits=7", "invalid"),
        ({}, "permessage-deflate; server_max_window_bits=010", "invalid"),
        ({}, "permessage-deflate; client_max_window_bits=13", "exceeds"),
        ({}, "permessage-deflate; client_max_window_bits=8", "not supported"),
        ({}, "permessage-deflate; client_max_window_bits", "invalid"),
        ({"client_max_window_bits": None}, "permessage-deflate; client_max_window_bits=9", "not"),
        ({"server_no_context_takeover": True}, "permessage-deflate", "ignored"),
        ({"server_max_window_bits": 10}, "permessage-deflate", "ignored"),
        ({"server_max_window_bits": 10}, "permessage-deflate; server_max_window_bits=11", "exce"),
        ({}, "permessage-deflate;", "malformed"),
    ],
)
def test_accept_response_invalid(offer: Any, response: str, what: str) -> None:
    with pytest.raises(ProtocolError, match=what) as info:
        accept_response(response, **offer)
    assert info.value.close_code == 1002


# ------------------------------------------------------------- negotiation with websockets


@pytest.mark.parametrize(
    ("offer", "factory_kw", "expected"),
    [
        ({}, None, DeflateParams(False, False, 12, 12)),
        ({}, {}, DeflateParams(False, False, 15, 12)),
        (
            {"client_max_window_bits": 9},
            {"client_max_window_bits": 10},
            DeflateParams(False, False, 15, 9),
        ),
        ({}, {"server_no_context_takeover": True}, DeflateParams(True, False, 15, 12)),
        ({}, {"client_no_context_takeover": True}, DeflateParams(False, True, 15, 12)),
        (
            {"server_no_context_takeover": True, "client_no_context_takeover": True},
            {},
            DeflateParams(True, True, 15, 12),
        ),
        ({"server_max_window_bits": 10}, {}, DeflateParams(False, False, 10, 12)),
    ],
)
def test_negotiation_with_websockets_server(
    offer: Any, factory_kw: Optional[Any], expected: DeflateParams
) -> None:
    factory = None if factory_kw is None else ServerPerMessageDeflateFactory(**factory_kw)
    server = WsServer(client_offer(**offer), factory)
    assert accept_response(server.response_header, **offer) == expected


# ------------------------------------------------------------- cross-checked round trips

CONFIGS = [
    pytest.param({}, None, id="websockets-default"),
    pytest.param({}, {"server_no_context_takeover": True}, id="server-nct"),
    pytest.param({"client_no_context_takeover": True}, {}, id="client-nct"),
    pytest.param(
        {"client_max_window_bits": 9, "server_max_window_bits": 9},
        {"client_no_context_takeover": True, "server_no_context_takeover": True},
        id="both-nct-window-9",
    ),
    pytest.param({"client_max_window_bits": 15}, {}, id="window-15"),
]


def conversation() -> List[Tuple[int, bytes, int]]:
    """(opcode, payload, frames): big and small, text and binary, fragmented or not."""
    rng = random.Random(1)
    msgs: List[Tuple[int, bytes, int]] = []
    for i in range(12):
        size = rng.choice([0, 5, 200, DEFAULT_THRESHOLD - 1, DEFAULT_THRESHOLD, 5000, 70000])
        body = json_payload(size, seed=i)[:size] if size else b""
        op = OP_BINARY if i % 5 == 4 else OP_TEXT
        msgs.append((op, body, rng.choice([1, 1, 2, 7])))
    # Repeats make context takeover matter: the 2nd copy compresses to a few bytes.
    # Shorter than the 2**12 window, so the copy can refer back to the original.
    repeated = (OP_TEXT, json_payload(3000, seed=99), 3)
    return [*msgs, repeated, repeated]


def expect(op: int, payload: bytes) -> Tuple[int, Any]:
    return (op, payload.decode()) if op == OP_TEXT else (op, payload)


@pytest.mark.parametrize(("offer", "factory_kw"), CONFIGS)
def test_our_frames_decode_in_websockets(offer: Any, factory_kw: Optional[Any]) -> None:
    factory = None if factory_kw is None else ServerPerMessageDeflateFactory(**factory_kw)
    server, codec = negotiate(factory, **offer)
    keys = MaskKeys()
    wire_sizes = []
    for op, payload, pieces in conversation():
        wire = client_send(codec, keys, op, payload, pieces)
        wire_sizes.append(len(wire))
        assert server.receive(wire) == [(op, payload)]
    # With context takeover, a repeated message compresses to far fewer bytes.
    if codec.params.client_no_context_takeover:
        assert wire_sizes[-1] == wire_sizes[-2]
    else:
        assert wire_sizes[-1] < wire_sizes[-2] // 5


@pytest.mark.parametrize(("offer", "factory_kw"), CONFIGS)
def test_websockets_frames_decode_here(offer: Any, factory_kw: Optional[Any]) -> None:
    factory = None if factory_kw is None else ServerPerMessageDeflateFactory(**factory_kw)
    server, codec = negotiate(factory, **offer)
    parser = FrameParser(16 * MiB, inflate=codec.decode)
    rng = random.Random(2)
    for op, payload, pieces in conversation():
        wire = server.send(op, split(payload, pieces))
        assert wire[0] & 0x40, "websockets compresses every message"
        got: List[Any] = []
        # Split anywhere, as the socket would.
        for i in range(0, len(wire), step := rng.choice([1, 7, 1000, 1 << 20])):
            got += parser.feed(wire[i : i + step])
        assert got == [expect(op, payload)]
    assert parser.buffered == 0


def test_one_mib_json_both_ways() -> None:
    payload = json_payload(MiB)
    assert len(payload) >= MiB
    server, codec = negotiate()
    wire_out = client_send(codec, MaskKeys(), OP_TEXT, payload, pieces=3)
    assert len(wire_out) < len(payload) // 4
    assert server.receive(wire_out) == [(OP_TEXT, payload)]
    wire_in = server.send(OP_TEXT, [payload])
    assert len(wire_in) < len(payload) // 4
    parser = FrameParser(2 * MiB, inflate=codec.decode)
    assert parser.feed(wire_in) == [(OP_TEXT, payload.decode())]


def test_control_frames_inside_compressed_fragmented_message() -> None:
    server, codec = negotiate()
    payload = json_payload(20000)
    server.proto.send_text(payload[:9000], fin=False)
    server.proto.send_ping(b"p1")
    server.proto.send_continuation(payload[9000:], fin=True)
    wire = b"".join(server.proto.data_to_send())
    parser = FrameParser(inflate=codec.decode)
    assert parser.feed(wire) == [(OP_PING, b"p1"), (OP_TEXT, payload.decode())]


def test_uncompressed_messages_from_server_pass_through() -> None:
    """A negotiated server may still send a message uncompressed (RSV1 clear)."""
    _, codec = negotiate()
    parser = FrameParser(inflate=codec.decode)
    plain = bytes((0x81, 5)) + b"hello" + bytes((0x82, 2)) + b"\x00\x01"
    assert parser.feed(plain) == [(OP_TEXT, "hello"), (OP_BINARY, b"\x00\x01")]


def test_encode_frames_with_deflate_matches_websockets() -> None:
    server, codec = negotiate()
    big = json_payload(3000)
    wire = encode_frames(
        [(OP_TEXT, big), (OP_PING, b"x"), (OP_TEXT, b"small"), (OP_BINARY, big)],
        MaskKeys(),
        deflate=codec,
    )
    assert server.receive(wire) == [
        (OP_TEXT, big),
        (OP_PING, b"x"),
        (OP_TEXT, b"small"),
        (OP_BINARY, big),
    ]


# --------------------------------------------------------------------------- the codec alone


def test_threshold() -> None:
    codec = PerMessageDeflate(DeflateParams())
    small = b"x" * (DEFAULT_THRESHOLD - 1)
    data, rsv1 = codec.encode(small)
    assert (data, rsv1) == (small, False)
    assert codec.encode(bytearray(b"ab")) == (b"ab", False)
    data, rsv1 = codec.encode(small + b"x")
    assert rsv1 and len(data) < 50
    everything = PerMessageDeflate(DeflateParams(), threshold=0)
    data, rsv1 = everything.encode(b"")
    assert rsv1 and everything_decodes(data) == b""


def everything_decodes(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


def test_encode_strips_the_tail() -> None:
    codec = PerMessageDeflate(DeflateParams(), threshold=0)
    data, _ = codec.encode(b"hello hello hello")
    assert not data.endswith(b"\x00\x00\xff\xff")
    assert everything_decodes(data) == b"hello hello hello"


def test_client_no_context_takeover_makes_messages_independent() -> None:
    payload = json_payload(4000)
    for nct in (False, True):
        codec = PerMessageDeflate(DeflateParams(client_no_context_takeover=nct))
        first, _ = codec.encode(payload)
        second, _ = codec.encode(payload)
        if nct:
            assert second == first
            assert everything_decodes(second) == payload  # decodable on its own
        else:
            assert len(second) < len(first) // 10


def test_server_context_takeover_is_kept_unless_refused() -> None:
    payload = json_payload(4000)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    m1 = (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    m2 = (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    codec = PerMessageDeflate(DeflateParams())
    assert codec.decode(m1, MiB) == payload
    assert codec.decode(m2, MiB) == payload  # refers back into message 1
    fresh = PerMessageDeflate(DeflateParams(server_no_context_takeover=True))
    assert fresh.decode(m1, MiB) == payload
    with pytest.raises(ProtocolError) as info:
        fresh.decode(m2, MiB)
    assert info.value.close_code == 1007


def test_server_window_8_inflates_zlib_output() -> None:
    """zlib deflates a 2**8 window as 2**9 (madler/zlib#171); we must cope."""
    payload = json_payload(5000)
    c = zlib.compressobj(6, zlib.DEFLATED, -9)
    data = (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    codec = PerMessageDeflate(DeflateParams(server_max_window_bits=8))
    assert codec.decode(data, MiB) == payload


def test_final_block_then_next_message() -> None:
    """A server may end a message with a BFINAL block (RFC 7692 §7.2.3.1)."""
    codec = PerMessageDeflate(DeflateParams())
    one = zlib.compressobj(6, zlib.DEFLATED, -15)
    final = one.compress(b"first") + one.flush(zlib.Z_FINISH)
    assert codec.decode(final, 100) == b"first"
    two = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert codec.decode((two.compress(b"second") + two.flush(zlib.Z_SYNC_FLUSH))[:-4], 100) == (
        b"second"
    )
    with pytest.raises(ProtocolError, match="after the final"):
        codec.decode(final + b"junk", 100)


@pytest.mark.parametrize("size", [100, 3000, 200000])
def test_max_size_boundary(size: int) -> None:
    payload = os.urandom(size // 2) * 2  # incompressible halves: compressed >= 2044 for big
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = (c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert PerMessageDeflate(DeflateParams()).decode(data, size) == payload
    with pytest.raises(ProtocolError) as info:
        PerMessageDeflate(DeflateParams()).decode(data, size - 1)
    assert info.value.close_code == 1009


def test_invalid_data_is_1007() -> None:
    with pytest.raises(ProtocolError) as info:
        PerMessageDeflate(DeflateParams()).decode(b"\xff\xff\xff\xff", 100)
    assert info.value.close_code == 1007


def bomb(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MiB)
    parts = [c.compress(chunk) for _ in range(size // MiB)]
    return b"".join(parts) + c.flush(zlib.Z_SYNC_FLUSH)[:-4]


def test_zip_bomb_is_refused_without_allocating_it() -> None:
    data = bomb(MiB)
    assert len(data) < 2000
    codec = PerMessageDeflate(DeflateParams())
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            codec.decode(data, 64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.close_code == 1009
    assert peak < 256 * 1024, peak


def test_big_zip_bomb_through_the_parser() -> None:
    """64 MiB of zeros in a ~64 KiB frame: refused with 1009, peak memory tiny."""
    data = bomb(64 * MiB)
    assert len(data) < 100 * 1024
    frame = bytes((0xC2, 127)) + len(data).to_bytes(8, "big") + data
    parser = FrameParser(MiB, inflate=PerMessageDeflate(DeflateParams()).decode)
    tracemalloc.start()
    try:
        with pytest.raises(FrameProtocolError) as info:
            parser.feed(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.close_code == 1009
    assert peak < 3 * MiB, peak


def test_codec_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        PerMessageDeflate(DeflateParams(), threshold=-1)
    with pytest.raises(ValueError):
        PerMessageDeflate(DeflateParams(), level=10)
    with pytest.raises(ValueError):
        PerMessageDeflate(DeflateParams(), mem_level=0)
    with pytest.raises(ValueError):
        PerMessageDeflate(DeflateParams(client_max_window_bits=8))
    with pytest.raises(ValueError):
        PerMessageDeflate(DeflateParams(server_max_window_bits=16))


def test_nothing_allocated_until_used() -> None:
    codec = PerMessageDeflate(DeflateParams())
    codec.encode(b"tiny")
    assert codec._deflater is None and codec._inflater is None
    assert "threshold=1024" in repr(codec)


def test_module_is_pure() -> None:
    """L1 module: zlib, no sockets, threads, clocks or websocket-client."""
    tree = ast.parse(Path(deflate.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    forbidden = {"threading", "socket", "selectors", "time", "websocket", "asyncio", "ssl"}
    assert not imported & forbidden, imported & forbidden


@pytest.mark.parametrize("limit", [64 * 1024, MiB, 16 * MiB, 256 * MiB])
def test_a_compressed_read_cannot_inflate_past_a_few_max_message_sizes(limit: int) -> None:
    """What one ``recv()`` of a compressed connection can complete stays bounded.

    The densest deflate streams zlib makes (zeros, Z_RLE and level 9) decide
    how much a read of ``read_size(True, limit)`` bytes can inflate to.
    """
    from tether_sync.engine.transport import read_size

    size = read_size(True, limit)
    assert read_size(False, limit) == 256 * 1024  # uncompressed: unchanged
    densest = 0.0
    for strategy in (zlib.Z_RLE, zlib.Z_DEFAULT_STRATEGY):
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, strategy)
        data = c.compress(bytes(64 * MiB)) + c.flush(zlib.Z_SYNC_FLUSH)
        densest = max(densest, 64 * MiB / len(data))
    assert densest < 1032
    # One read inflates to at most limit (or about 4 MiB for a small limit)...
    assert size * densest <= max(limit, 4096 * 1032)
    # ... and is still a useful read.
    assert 4096 <= size <= 256 * 1024
