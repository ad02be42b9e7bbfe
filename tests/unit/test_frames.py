"""Tests of tether_sync.protocol.frames against websocket-client as the reference codec."""

from __future__ import annotations

import ast
import io
import os
import random
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import pytest
import websocket
from websocket._abnf import frame_buffer

from tether_sync.exceptions import ProtocolError
from tether_sync.protocol import frames
from tether_sync.protocol.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    FrameProtocolError,
    MaskKeys,
    encode_close_payload,
    encode_frame,
    encode_frames,
    is_valid_close_code,
    mask_payload,
    parse_close,
)

Message = Tuple[int, Union[str, bytes]]

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 1 << 20]


# --------------------------------------------------------------------------- helpers


def server_frame(
    opcode: int, data: bytes, fin: int = 1, rsv: Tuple[int, int, int] = (0, 0, 0)
) -> bytes:
    """An unmasked server frame, built by websocket-client."""
    return bytes(websocket.ABNF(fin, rsv[0], rsv[1], rsv[2], opcode, 0, data).format())


def feed_whole(stream: bytes, **kw: int) -> List[Message]:
    return FrameParser(**kw).feed(stream)


def feed_bytewise(stream: bytes, **kw: int) -> List[Message]:
    parser = FrameParser(**kw)
    out: List[Message] = []
    for i in range(len(stream)):
        out += parser.feed(stream[i : i + 1])
    assert parser.buffered == 0
    return out


def random_splits(stream: bytes, rng: random.Random, max_piece: int = 300) -> List[bytes]:
    pieces = []
    i = 0
    while i < len(stream):
        step = rng.choice([1, 2, 3, rng.randint(1, max_piece), rng.randint(1, 70000)])
        pieces.append(stream[i : i + step])
        i += step
    return pieces


def feed_random(stream: bytes, seed: int, **kw: int) -> List[Message]:
    parser = FrameParser(**kw)
    out: List[Message] = []
    for piece in random_splits(stream, random.Random(seed)):
        out += parser.feed(piece)
    assert parser.buffered == 0
    return out


def all_ways(stream: bytes, bytewise: bool = True, **kw: int) -> List[List[Message]]:
    results = [feed_whole(stream, **kw)]
    results += [feed_random(stream, seed, **kw) for seed in range(3)]
    if bytewise:
        results.append(feed_bytewise(stream, **kw))
    return results


def ws_read_frames(data: bytes, count: int) -> List[websocket.ABNF]:
    """Read ``count`` frames with websocket-client's own reader (it unmasks)."""
    reader = frame_buffer(io.BytesIO(data).read, False)
    return [reader.recv_frame() for _ in range(count)]


def assert_fails(stream: bytes, code: int, bytewise: bool = True, **kw: int) -> None:
    """Every way of feeding ``stream`` raises ProtocolError(close_code=code)."""
    feeders: List[Callable[[], object]] = [
        lambda: feed_whole(stream, **kw),
        lambda: feed_random(stream, 7, **kw),
    ]
    if bytewise:
        feeders.append(lambda: feed_bytewise(stream, **kw))
    for feeder in feeders:
        with pytest.raises(ProtocolError) as info:
            feeder()
        assert info.value.close_code == code, info.value


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("length", LENGTHS)
def test_text_and_binary_lengths(length: int) -> None:
    rng = random.Random(length)
    text = "".join(rng.choice("aé€😀z") for _ in range(length))
    raw_text = text.encode()[:length]
    raw_text = raw_text.decode("utf-8", "ignore").encode()  # whole characters only
    binary = rng.randbytes(length) if hasattr(rng, "randbytes") else os.urandom(length)
    stream = server_frame(OP_TEXT, raw_text) + server_frame(OP_BINARY, binary)
    expected: List[Message] = [(OP_TEXT, raw_text.decode()), (OP_BINARY, binary)]
    for got in all_ways(stream, bytewise=length <= 65536):
        assert got == expected
        assert isinstance(got[1][1], bytes)


def test_many_small_frames_in_one_chunk() -> None:
    msgs: List[Message] = []
    stream = b""
    for i in range(500):
        if i % 3:
            msgs.append((OP_TEXT, f"message {i} ✓"))
            stream += server_frame(OP_TEXT, f"message {i} ✓".encode())
        else:
            msgs.append((OP_BINARY, bytes([i % 256]) * (i % 130)))
            stream += server_frame(OP_BINARY, bytes([i % 256]) * (i % 130))
    for got in all_ways(stream):
        assert got == msgs


def test_control_frames() -> None:
    stream = (
        server_frame(OP_PING, b"")
        + server_frame(OP_PING, b"x" * 125)
        + server_frame(OP_PONG, b"pong")
        + server_frame(OP_CLOSE, b"\x03\xe8bye \xe2\x9c\x93")
    )
    expected: List[Message] = [
        (OP_PING, b""),
        (OP_PING, b"x" * 125),
        (OP_PONG, b"pong"),
        (OP_CLOSE, b"\x03\xe8bye \xe2\x9c\x93"),
    ]
    for got in all_ways(stream):
        assert got == expected
    assert parse_close(expected[-1][1]) == (1000, "bye ✓")  # type: ignore[arg-type]


def test_close_payload_returned_raw_even_if_invalid() -> None:
    # The parser hands the raw payload over; parse_close() judges it.
    got = feed_whole(server_frame(OP_CLOSE, b"\x03"))
    assert got == [(OP_CLOSE, b"\x03")]
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03")
    assert info.value.close_code == 1002


def test_fragmented_with_interleaved_control_frames() -> None:
    word = "naïve €uro 😀".encode()
    # Split inside multi-byte characters: "ï" is 2 bytes, "€" 3, "😀" 4.
    i_split = word.index("ï".encode()) + 1
    e_split = word.index("€".encode()) + 2
    s_split = word.index("😀".encode()) + 3
    parts = [word[:i_split], word[i_split:e_split], word[e_split:s_split], word[s_split:]]
    stream = (
        server_frame(OP_TEXT, parts[0], fin=0)
        + server_frame(OP_PING, b"p1")
        + server_frame(OP_CONT, parts[1], fin=0)
        + server_frame(OP_CONT, b"", fin=0)
        + server_frame(OP_PONG, b"p2")
        + server_frame(OP_CONT, parts[2], fin=0)
        + server_frame(OP_CONT, parts[3], fin=1)
        + server_frame(OP_BINARY, b"\x00\x01", fin=0)
        + server_frame(OP_PING, b"p3")
        + server_frame(OP_CONT, b"\x02" * 70000, fin=0)
        + server_frame(OP_CONT, b"\x03", fin=1)
        + server_frame(OP_CLOSE, b"\x03\xe8")
    )
    expected: List[Message] = [
        (OP_PING, b"p1"),
        (OP_PONG, b"p2"),
        (OP_TEXT, word.decode()),
        (OP_PING, b"p3"),
        (OP_BINARY, b"\x00\x01" + b"\x02" * 70000 + b"\x03"),
        (OP_CLOSE, b"\x03\xe8"),
    ]
    for got in all_ways(stream):
        assert got == expected


def test_empty_fragments() -> None:
    stream = server_frame(OP_TEXT, b"", fin=0) + server_frame(OP_CONT, b"", fin=1)
    for got in all_ways(stream):
        assert got == [(OP_TEXT, "")]


def test_utf8_split_across_reads_in_one_frame() -> None:
    stream = server_frame(OP_TEXT, "€€€".encode())
    for cut in range(1, len(stream)):
        parser = FrameParser()
        assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == [(OP_TEXT, "€€€")]


def test_non_minimal_length_encodings_allowed() -> None:
    stream = (
        b"\x81\x7e\x00\x05hello"  # 16-bit length for 5 bytes
        + b"\x82\x7f" + (3).to_bytes(8, "big") + b"abc"  # 64-bit length for 3 bytes
        + b"\x81\x7f" + (200).to_bytes(8, "big") + b"y" * 200
    )  # fmt: skip
    for got in all_ways(stream):
        assert got == [(OP_TEXT, "hello"), (OP_BINARY, b"abc"), (OP_TEXT, "y" * 200)]


def test_bytes_like_input() -> None:
    stream = server_frame(OP_BINARY, b"abc") + server_frame(OP_TEXT, b"d")
    parser = FrameParser()
    got = parser.feed(bytearray(stream[:3])) + parser.feed(memoryview(stream)[3:])
    assert got == [(OP_BINARY, b"abc"), (OP_TEXT, "d")]
    assert type(got[0][1]) is bytes


def test_empty_feed_and_buffered() -> None:
    parser = FrameParser()
    assert parser.feed(b"") == []
    assert parser.buffered == 0
    stream = server_frame(OP_BINARY, b"z" * 1000)
    assert parser.feed(stream[:1]) == []
    assert parser.buffered == 1
    assert parser.feed(stream[1:4]) == []  # header complete, 0 payload bytes yet
    assert parser.feed(stream[4:504]) == []
    assert parser.buffered == 500
    assert parser.feed(b"") == []
    assert parser.feed(stream[504:]) == [(OP_BINARY, b"z" * 1000)]
    assert parser.buffered == 0
    parser.feed(server_frame(OP_TEXT, b"ab", fin=0) + server_frame(OP_CONT, b"cd", fin=0))
    assert parser.buffered == 4
    assert parser.feed(server_frame(OP_CONT, b"", fin=1)) == [(OP_TEXT, "abcd")]
    assert parser.buffered == 0


def test_trickled_message_memory_is_bounded() -> None:
    # 1 byte per read, and 1 byte per fragment: pieces are merged, not listed.
    parser = FrameParser()
    stream = server_frame(OP_BINARY, b"b" * 20000)
    for i in range(len(stream) - 1):
        assert parser.feed(stream[i : i + 1]) == []
    assert len(parser._frags) == 1
    assert parser.feed(stream[-1:]) == [(OP_BINARY, b"b" * 20000)]
    frags = server_frame(OP_TEXT, b"t", fin=0) + server_frame(OP_CONT, b"u", fin=0) * 5000
    assert parser.feed(frags) == []
    assert len(parser._frags) == 1
    assert parser.buffered == 5001
    assert parser.feed(server_frame(OP_CONT, b"v" * 5000)) == [
        (OP_TEXT, "t" + "u" * 5000 + "v" * 5000)
    ]


def test_max_message_size_boundary() -> None:
    exact = server_frame(OP_BINARY, b"a" * 100) + server_frame(OP_TEXT, b"b" * 100)
    for got in all_ways(exact, max_message_size=100):
        assert got == [(OP_BINARY, b"a" * 100), (OP_TEXT, "b" * 100)]
    frag = server_frame(OP_TEXT, b"a" * 60, fin=0) + server_frame(OP_CONT, b"a" * 40)
    assert feed_whole(frag, max_message_size=100) == [(OP_TEXT, "a" * 100)]
    # Control frames are not data messages: a small limit does not apply to them.
    assert feed_whole(server_frame(OP_PING, b"p" * 50), max_message_size=10) == [
        (OP_PING, b"p" * 50)
    ]
    assert feed_whole(server_frame(OP_TEXT, b""), max_message_size=0) == [(OP_TEXT, "")]


def test_random_streams_against_reference() -> None:
    rng = random.Random(1234)
    for _ in range(30):
        stream = b""
        expected: List[Message] = []
        for _ in range(rng.randint(1, 30)):
            kind = rng.random()
            if kind < 0.3:
                payload = os.urandom(rng.choice([0, 5, 125, 126, 300, 70000]))
                stream += server_frame(OP_BINARY, payload)
                expected.append((OP_BINARY, payload))
            elif kind < 0.6:
                text = "".join(rng.choice("abc€😀é") for _ in range(rng.randint(0, 200)))
                stream += server_frame(OP_TEXT, text.encode())
                expected.append((OP_TEXT, text))
            elif kind < 0.7:
                payload = os.urandom(rng.randint(0, 125))
                op = rng.choice([OP_PING, OP_PONG])
                stream += server_frame(op, payload)
                expected.append((op, payload))
            else:
                op = rng.choice([OP_TEXT, OP_BINARY])
                whole = "".join(rng.choice("x€😀") for _ in range(rng.randint(0, 300))).encode()
                cuts = sorted(rng.randint(0, len(whole)) for _ in range(rng.randint(0, 4)))
                bounds = [0, *cuts, len(whole)]
                controls: List[Message] = []
                for j in range(len(bounds) - 1):
                    fin = int(j == len(bounds) - 2)
                    stream += server_frame(
                        op if j == 0 else OP_CONT, whole[bounds[j] : bounds[j + 1]], fin
                    )
                    if not fin and rng.random() < 0.5:
                        ping = os.urandom(rng.randint(0, 10))
                        stream += server_frame(OP_PING, ping)
                        controls.append((OP_PING, ping))
                expected += controls
                expected.append((op, whole.decode() if op == OP_TEXT else whole))
        assert feed_whole(stream) == expected
        assert feed_random(stream, rng.randint(0, 10**6)) == expected


# --------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize("rsv", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_PING])
def test_rsv_bits(rsv: Tuple[int, int, int], opcode: int) -> None:
    assert_fails(server_frame(opcode, b"hi", rsv=rsv), 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcodes(opcode: int) -> None:
    stream = bytes([0x80 | opcode, 2]) + b"hi"
    assert_fails(stream, 1002)


def test_control_frame_too_long_fails_from_header() -> None:
    for op in (OP_PING, OP_PONG, OP_CLOSE):
        stream = server_frame(op, b"x" * 126)
        assert_fails(stream, 1002)
        with pytest.raises(ProtocolError) as info:
            FrameParser().feed(stream[:4])  # header only
        assert info.value.close_code == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_fragmented_control_frame(opcode: int) -> None:
    assert_fails(bytes([opcode, 0]), 1002)
    assert_fails(bytes([opcode, 2]) + b"ab", 1002)


def test_continuation_without_start() -> None:
    assert_fails(server_frame(OP_CONT, b"x"), 1002)
    assert_fails(server_frame(OP_CONT, b"x", fin=0), 1002)
    # ... also right after a complete message.
    assert_fails(server_frame(OP_TEXT, b"a") + server_frame(OP_CONT, b"x"), 1002)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_new_data_frame_while_fragmented(opcode: int) -> None:
    stream = server_frame(OP_BINARY, b"a", fin=0) + server_frame(opcode, b"b")
    assert_fails(stream, 1002)
    stream = server_frame(OP_TEXT, b"a", fin=0) + server_frame(opcode, b"b", fin=0)
    assert_fails(stream, 1002)


def test_masked_frame_from_server() -> None:
    for op, data in ((OP_TEXT, b"hi"), (OP_BINARY, b"x" * 300), (OP_PING, b"")):
        masked = websocket.ABNF.create_frame(data, op).format()  # mask=1 client frame
        assert_fails(masked, 1002)
    assert_fails(encode_frame(OP_TEXT, b"hello", b"\x00\x00\x00\x00"), 1002)


def test_64bit_length_top_bit() -> None:
    stream = b"\x82\x7f" + (1 << 63).to_bytes(8, "big")
    assert_fails(stream, 1002)
    stream = b"\x82\x7f" + b"\xff" * 8
    assert_fails(stream, 1002)


def test_too_big_fails_from_header() -> None:
    big = server_frame(OP_BINARY, b"x" * 1000)
    assert_fails(big, 1009, max_message_size=999)
    with pytest.raises(ProtocolError) as info:
        FrameParser(max_message_size=999).feed(big[:4])  # header only
    assert info.value.close_code == 1009
    # Announced by a 64-bit length, never sent.
    with pytest.raises(ProtocolError) as info:
        FrameParser().feed(b"\x81\x7f" + (1 << 40).to_bytes(8, "big"))
    assert info.value.close_code == 1009
    # Small frames over a tiny limit leave the fast path.
    assert_fails(server_frame(OP_TEXT, b"x" * 11), 1009, max_message_size=10)


def test_too_big_across_fragments() -> None:
    stream = (
        server_frame(OP_TEXT, b"a" * 60, fin=0)
        + server_frame(OP_PING, b"")
        + server_frame(OP_CONT, b"a" * 41)
    )
    assert_fails(stream, 1009, max_message_size=100)
    parser = FrameParser(max_message_size=100)
    head = server_frame(OP_TEXT, b"a" * 60, fin=0) + server_frame(OP_CONT, b"a" * 41)[:2]
    with pytest.raises(ProtocolError) as info:
        parser.feed(head)
    assert info.value.close_code == 1009


def test_invalid_utf8() -> None:
    for bad in (b"\xff", b"a\xc3", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"):
        assert_fails(server_frame(OP_TEXT, bad), 1007)
        assert_fails(server_frame(OP_TEXT, bad + b"x" * 200), 1007)
        frag = server_frame(OP_TEXT, b"ok", fin=0) + server_frame(OP_CONT, bad)
        assert_fails(frag, 1007)
    # A multi-byte character cut at the end of the whole message is invalid...
    frag = server_frame(OP_TEXT, "€".encode()[:2], fin=0) + server_frame(OP_CONT, b"", fin=1)
    assert_fails(frag, 1007)
    # ...but the same bytes completed by the next fragment are fine.
    frag = server_frame(OP_TEXT, "€".encode()[:2], fin=0) + server_frame(OP_CONT, b"\xac")
    assert feed_whole(frag) == [(OP_TEXT, "€")]
    # Binary messages are not validated.
    assert feed_whole(server_frame(OP_BINARY, b"\xff")) == [(OP_BINARY, b"\xff")]


def test_error_keeps_earlier_messages_and_poisons_parser() -> None:
    parser = FrameParser()
    good = server_frame(OP_TEXT, b"one") + server_frame(OP_PING, b"p")
    with pytest.raises(FrameProtocolError) as info:
        parser.feed(good + server_frame(OP_TEXT, b"\xff") + server_frame(OP_TEXT, b"never"))
    assert info.value.close_code == 1007
    assert info.value.messages == [(OP_TEXT, "one"), (OP_PING, b"p")]
    with pytest.raises(ProtocolError) as again:
        parser.feed(server_frame(OP_TEXT, b"x"))
    assert again.value.close_code == 1007
    parser = FrameParser()
    with pytest.raises(FrameProtocolError) as info:
        parser.feed(good + b"\x83\x00")
    assert info.value.close_code == 1002
    assert info.value.messages == [(OP_TEXT, "one"), (OP_PING, b"p")]


def test_max_message_size_negative() -> None:
    with pytest.raises(ValueError):
        FrameParser(max_message_size=-1)


# --------------------------------------------------------------------------- close payloads


def test_is_valid_close_code() -> None:
    valid = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))
    for code in range(0, 70000):
        assert is_valid_close_code(code) == (code in valid), code
    # Same table as websocket-client's.
    for code in range(0, 6000):
        assert is_valid_close_code(code) == websocket.ABNF._is_valid_close_status(code)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (1005, "")),
        (b"\x03\xe8", (1000, "")),
        (b"\x03\xe9going away", (1001, "going away")),
        (b"\x0b\xb8\xe2\x82\xac", (3000, "€")),
        (b"\x13\x87", (4999, "")),
        (b"\x03\xf6" + b"r" * 123, (1014, "r" * 123)),
    ],
)
def test_parse_close_ok(payload: bytes, expected: Tuple[int, str]) -> None:
    assert parse_close(payload) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),
        (b"\x00\x00", 1002),
        (b"\x03\xe7", 1002),  # 999
        (b"\x03\xec", 1002),  # 1004
        (b"\x03\xed", 1002),  # 1005
        (b"\x03\xee", 1002),  # 1006
        (b"\x03\xf7", 1002),  # 1015
        (b"\x03\xf8", 1002),  # 1016
        (b"\x0b\xb7", 1002),  # 2999
        (b"\x13\x88", 1002),  # 5000
        (b"\xff\xff", 1002),
        (b"\x03\xe8" + b"r" * 124, 1002),  # 126 bytes: too long for a control frame
        (b"\x03\xe8\xff", 1007),
        (b"\x03\xe8ab\xe2\x82", 1007),
    ],
)
def test_parse_close_errors(payload: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close(payload)
    assert info.value.close_code == code


def test_encode_close_payload() -> None:
    assert encode_close_payload(1000) == b"\x03\xe8"
    assert encode_close_payload(4000, "bye") == b"\x0f\xa0bye"
    assert parse_close(encode_close_payload(1001, "€ ok")) == (1001, "€ ok")
    long_ascii = encode_close_payload(1000, "a" * 500)
    assert len(long_ascii) == 125
    for filler in ("é", "€", "😀", "a€"):
        payload = encode_close_payload(1000, filler * 100)
        assert len(payload) <= 125
        code, reason = parse_close(payload)  # truncated on a character boundary
        assert code == 1000
        assert (filler * 100).startswith(reason)
        assert len(reason.encode()) > 123 - 4
    for bad in (999, 1004, 1005, 1006, 1015, 2000, 5000):
        with pytest.raises(ValueError):
            encode_close_payload(bad)


# --------------------------------------------------------------------------- encoding


#: The compiled mask found at import (websockets' apply_mask), or None.
C_MASK = frames._c_mask


@pytest.fixture(params=["compiled", "pure"])
def mask_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the compiled mask (when found) and with the pure-Python one."""
    if request.param == "compiled":
        if C_MASK is None:
            pytest.skip("no compiled mask (websockets is not installed)")
        monkeypatch.setattr(frames, "_c_mask", C_MASK)
    else:
        monkeypatch.setattr(frames, "_c_mask", None)
    return str(request.param)


def test_compiled_mask_is_found_when_websockets_is_installed() -> None:
    pytest.importorskip("websockets.speedups")
    assert C_MASK is not None
    assert frames._load_c_mask() is not None


@pytest.mark.parametrize("length", [*LENGTHS, 2047, 2048, 2049, 4095, 4096, 4097])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_encode_frame_matches_websocket_client(length: int, opcode: int, mask_impl: str) -> None:
    payload = os.urandom(length)
    key = os.urandom(4)
    ours = encode_frame(opcode, payload, key)
    ref = websocket.ABNF.create_frame(payload, opcode)
    ref.get_mask_key = lambda n: key
    assert ours == ref.format()  # byte for byte
    (frame,) = ws_read_frames(ours, 1)
    assert (frame.fin, frame.opcode, frame.mask_value, frame.data) == (1, opcode, 1, payload)


def test_encode_fragments_and_control_frames_read_by_websocket_client() -> None:
    keys = MaskKeys()
    items: Sequence[Tuple[int, bytes, bool]] = [
        (OP_TEXT, "a€".encode(), False),
        (OP_PING, b"ping", True),
        (OP_CONT, b"b" * 70000, False),
        (OP_CONT, b"c", True),
        (OP_PONG, b"", True),
        (OP_CLOSE, encode_close_payload(1000, "done"), True),
    ]
    data = b"".join(encode_frame(op, p, keys.next(), fin) for op, p, fin in items)
    got = ws_read_frames(data, len(items))
    for (op, p, fin), frame in zip(items, got):
        assert (frame.opcode, frame.data, bool(frame.fin), frame.mask_value) == (op, p, fin, 1)


def test_encode_accepts_bytes_like() -> None:
    key = b"\x01\x02\x03\x04"
    for n in (10, 5000):
        ref = encode_frame(OP_BINARY, b"q" * n, key)
        assert encode_frame(OP_BINARY, bytearray(b"q" * n), key) == ref
        assert encode_frame(OP_BINARY, memoryview(b"q" * n), key) == ref


def test_encode_frame_zero_key_is_identity() -> None:
    assert encode_frame(OP_TEXT, b"abc", b"\0\0\0\0") == b"\x81\x83\0\0\0\0abc"


def test_encode_frame_rejects_invalid() -> None:
    key = b"abcd"
    for opcode in (3, 7, 0xB, 0x10, -1):
        with pytest.raises(ValueError):
            encode_frame(opcode, b"", key)
    for bad_key in (b"", b"abc", b"abcde"):
        with pytest.raises(ValueError):
            encode_frame(OP_TEXT, b"x", bad_key)
    for opcode in (OP_PING, OP_PONG, OP_CLOSE):
        encode_frame(opcode, b"x" * 125, key)
        with pytest.raises(ValueError):
            encode_frame(opcode, b"x" * 126, key)
        with pytest.raises(ValueError):
            encode_frame(opcode, b"x", key, fin=False)


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 64, 2047, 2048, 2049, 4096, 70001, 1 << 20])
def test_mask_payload_matches_reference(length: int, mask_impl: str) -> None:
    data = os.urandom(length)
    key = os.urandom(4)
    masked = mask_payload(data, key)
    assert masked == websocket.ABNF.mask(key, data)
    assert mask_payload(masked, key) == data
    assert mask_payload(bytearray(data), key) == mask_payload(memoryview(data), key) == masked


@pytest.mark.parametrize("length", [0, 5, 125, 126, 65535, 65536, 70001])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_CONT])
def test_frame_header_and_masked_payload_are_the_frame(
    length: int, opcode: int, mask_impl: str
) -> None:
    payload = os.urandom(length)
    key = os.urandom(4)
    for fin in (True, False):
        head = frames.encode_frame_header(opcode, length, key, fin)
        assert len(head) == len(encode_frame(opcode, payload, key, fin)) - length
        assert head + mask_payload(payload, key) == encode_frame(opcode, payload, key, fin)
    if opcode != OP_CONT:
        flagged = frames.encode_frame_header(opcode, length, key, rsv1=True)
        assert flagged + mask_payload(payload, key) == encode_frame(opcode, payload, key, rsv1=True)


def test_frame_header_rejects_what_encode_frame_rejects() -> None:
    key = b"abcd"
    for args in [(3, 1, key), (OP_TEXT, 1, b"abc"), (OP_TEXT, -1, key), (OP_PING, 126, key)]:
        with pytest.raises(ValueError):
            frames.encode_frame_header(*args)
    with pytest.raises(ValueError):
        frames.encode_frame_header(OP_PING, 1, key, fin=False)
    with pytest.raises(ValueError, match="RSV1"):
        frames.encode_frame_header(OP_PING, 1, key, rsv1=True)


def test_encode_frames_coalesces() -> None:
    calls: List[int] = []

    def fake_urandom(n: int) -> bytes:
        calls.append(n)
        return bytes((i * 7 + 3) % 256 for i in range(n))

    keys = MaskKeys(urandom=fake_urandom, batch=64)
    items = [(OP_TEXT, f"m{i}".encode()) for i in range(100)] + [(OP_BINARY, b"z" * 3000)]
    data = encode_frames(items, keys)
    got = ws_read_frames(data, len(items))
    assert [(f.opcode, f.data) for f in got] == items
    assert calls == [256, 256]
    assert encode_frames([], keys) == b""


# --------------------------------------------------------------------------- mask keys


def test_mask_keys_batches() -> None:
    calls: List[int] = []
    source = random.Random(99)

    def fake_urandom(n: int) -> bytes:
        calls.append(n)
        return bytes(source.randrange(256) for _ in range(n))

    keys = MaskKeys(urandom=fake_urandom, batch=8)
    assert calls == []  # lazy: nothing drawn before the first key
    drawn = [keys.next() for _ in range(8)]
    assert calls == [32]
    assert all(len(k) == 4 and type(k) is bytes for k in drawn)
    assert len(set(drawn)) == 8
    drawn += [keys.next() for _ in range(17)]
    assert calls == [32, 32, 32, 32]
    # Keys are the random bytes in order, 4 at a time.
    regen = random.Random(99)
    stream = bytes(regen.randrange(256) for _ in range(4 * 32))
    assert b"".join(drawn) == stream[: 4 * 25]


def test_mask_keys_default_batch_is_one_call_per_1024_keys() -> None:
    calls: List[int] = []

    def fake_urandom(n: int) -> bytes:
        calls.append(n)
        return os.urandom(n)

    keys = MaskKeys(urandom=fake_urandom)
    for _ in range(2048):
        keys.next()
    assert calls == [4096, 4096]
    keys.next()
    assert len(calls) == 3
    assert len(MaskKeys().next()) == 4


def test_mask_keys_rejects_short_urandom_and_bad_batch() -> None:
    with pytest.raises(ValueError):
        MaskKeys(urandom=lambda n: b"\0" * (n - 1)).next()
    with pytest.raises(ValueError):
        MaskKeys(batch=0)


# --------------------------------------------------------------------------- permessage-deflate


class FakeInflate:
    """Stands in for PerMessageDeflate.decode: reverses the bytes, records calls."""

    def __init__(self) -> None:
        self.calls: List[Tuple[bytes, int]] = []

    def __call__(self, payload: bytes, max_size: int) -> bytes:
        self.calls.append((payload, max_size))
        if payload == b"too big":
            raise ProtocolError("inflates beyond max_message_size", 1009)
        return payload[::-1]


def feed_every_way(stream: bytes, max_message_size: int = 1 << 20) -> List[Message]:
    """Feed ``stream`` whole, bytewise and in random pieces; all must agree."""
    results = []
    for mode in ("whole", "bytewise", 1, 2):
        parser = FrameParser(max_message_size, inflate=FakeInflate())
        if mode == "whole":
            pieces = [stream]
        elif mode == "bytewise":
            pieces = [stream[i : i + 1] for i in range(len(stream))]
        else:
            pieces = random_splits(stream, random.Random(mode))
        out: List[Message] = []
        for piece in pieces:
            out += parser.feed(piece)
        assert parser.buffered == 0
        results.append(out)
    assert all(r == results[0] for r in results)
    return results[0]


def test_rsv1_message_is_inflated_then_utf8_decoded() -> None:
    text = "héllo wörld €".encode()
    stream = (
        server_frame(OP_TEXT, text[::-1], rsv=(1, 0, 0))
        + server_frame(OP_BINARY, b"\x00\x01\x02" * 100, rsv=(1, 0, 0))
        + server_frame(OP_TEXT, b"plain")
    )
    assert feed_every_way(stream) == [
        (OP_TEXT, "héllo wörld €"),
        (OP_BINARY, (b"\x00\x01\x02" * 100)[::-1]),
        (OP_TEXT, "plain"),
    ]


def test_compressed_bytes_need_not_be_utf8() -> None:
    """UTF-8 is checked on the inflated text only (RFC 7692 §6, RFC 6455 §8.1)."""
    stream = server_frame(OP_TEXT, "€".encode()[::-1], rsv=(1, 0, 0))
    assert feed_every_way(stream) == [(OP_TEXT, "€")]


def test_invalid_utf8_after_inflate_is_1007() -> None:
    parser = FrameParser(inflate=FakeInflate())
    with pytest.raises(FrameProtocolError) as info:
        parser.feed(server_frame(OP_TEXT, b"\xff\xfe", rsv=(1, 0, 0)))
    assert info.value.close_code == 1007


def test_fragmented_compressed_message_with_control_frames() -> None:
    body = b"0123456789" * 20000
    wire = body[::-1]
    stream = (
        server_frame(OP_BINARY, wire[:7], fin=0, rsv=(1, 0, 0))
        + server_frame(OP_PING, b"p")
        + server_frame(OP_CONT, wire[7:150000], fin=0)
        + server_frame(OP_CONT, wire[150000:], fin=1)
        + server_frame(OP_TEXT, b"next", fin=0)
        + server_frame(OP_CONT, b"!", fin=1)
    )
    assert feed_every_way(stream) == [(OP_PING, b"p"), (OP_BINARY, body), (OP_TEXT, "next!")]


def test_inflate_gets_whole_message_and_limit() -> None:
    inflate = FakeInflate()
    parser = FrameParser(5000, inflate=inflate)
    stream = (
        server_frame(OP_TEXT, b"ab", fin=0, rsv=(1, 0, 0))
        + server_frame(OP_CONT, b"cd", fin=1)
        + server_frame(OP_TEXT, b"xy")
    )
    assert parser.feed(stream) == [(OP_TEXT, "dcba"), (OP_TEXT, "xy")]
    assert inflate.calls == [(b"abcd", 5000)]


@pytest.mark.parametrize("rsv", [(0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1)])
def test_other_rsv_bits_still_fail_with_inflate(rsv: Tuple[int, int, int]) -> None:
    with pytest.raises(FrameProtocolError) as info:
        FrameParser(inflate=FakeInflate()).feed(server_frame(OP_TEXT, b"hi", rsv=rsv))
    assert info.value.close_code == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_rsv1_on_control_frame_fails(opcode: int) -> None:
    with pytest.raises(FrameProtocolError, match="control frame") as info:
        FrameParser(inflate=FakeInflate()).feed(server_frame(opcode, b"", rsv=(1, 0, 0)))
    assert info.value.close_code == 1002


def test_rsv1_on_continuation_frame_fails() -> None:
    for first_rsv in ((0, 0, 0), (1, 0, 0)):
        stream = server_frame(OP_TEXT, b"a", fin=0, rsv=first_rsv) + server_frame(
            OP_CONT, b"b", rsv=(1, 0, 0)
        )
        with pytest.raises(FrameProtocolError, match="continuation") as info:
            FrameParser(inflate=FakeInflate()).feed(stream)
        assert info.value.close_code == 1002


def test_inflate_error_keeps_earlier_messages_and_poisons_parser() -> None:
    parser = FrameParser(inflate=FakeInflate())
    stream = server_frame(OP_TEXT, b"ok") + server_frame(OP_BINARY, b"too big", rsv=(1, 0, 0))
    with pytest.raises(FrameProtocolError) as info:
        parser.feed(stream)
    assert info.value.close_code == 1009
    assert info.value.messages == [(OP_TEXT, "ok")]
    with pytest.raises(FrameProtocolError) as again:
        parser.feed(server_frame(OP_TEXT, b"more"))
    assert again.value.close_code == 1009


def test_compressed_size_is_bounded_too() -> None:
    with pytest.raises(FrameProtocolError) as info:
        FrameParser(10, inflate=FakeInflate()).feed(server_frame(OP_TEXT, b"x" * 11, rsv=(1, 0, 0)))
    assert info.value.close_code == 1009


def read_masked_frames(data: bytes) -> List[Tuple[int, int, bool, bytes]]:
    """``(opcode, rsv1, fin, payload)`` per frame, read by websockets' frame reader.

    (websocket-client's reader refuses any RSV bit; websockets' accepts RSV1
    when an extension takes it off, which this pass-through one does.)
    """
    import dataclasses

    from websockets.frames import Frame
    from websockets.streams import StreamReader

    rsv1_seen: List[int] = []

    class KeepRsv1:
        name = "test-keep-rsv1"

        def decode(self, frame: Frame, *, max_size: Optional[int] = None) -> Frame:
            rsv1_seen.append(int(frame.rsv1))
            return dataclasses.replace(frame, rsv1=False)

    reader = StreamReader()
    reader.feed_data(data)
    out = []
    while reader.buffer:
        gen = Frame.parse(reader.read_exact, mask=True, extensions=[KeepRsv1()])  # type: ignore[list-item]
        try:
            next(gen)
        except StopIteration as stop:
            f = stop.value
            out.append((int(f.opcode), rsv1_seen[-1], f.fin, bytes(f.data)))
        else:  # pragma: no cover - the data is complete
            raise AssertionError("incomplete frame")
    return out


def test_encode_frame_rsv1() -> None:
    key = os.urandom(4)
    for n in (3, 300, 70000):
        payload = os.urandom(n)
        plain = encode_frame(OP_BINARY, payload, key, fin=False)
        flagged = encode_frame(OP_BINARY, payload, key, fin=False, rsv1=True)
        assert flagged == bytes((plain[0] | 0x40,)) + plain[1:]
        assert read_masked_frames(flagged) == [(OP_BINARY, 1, False, payload)]
    assert encode_frame(OP_TEXT, b"a", key, rsv1=False) == encode_frame(OP_TEXT, b"a", key)
    for opcode in (OP_CONT, OP_PING, OP_PONG, OP_CLOSE):
        with pytest.raises(ValueError, match="RSV1"):
            encode_frame(opcode, b"", key, rsv1=True)


def test_encode_frames_with_deflate_compresses_data_frames_only() -> None:
    class FakeDeflate:
        threshold = 3

        def __init__(self) -> None:
            self.seen: List[bytes] = []

        def encode(self, payload: Union[bytes, bytearray, memoryview]) -> Tuple[bytes, bool]:
            self.seen.append(bytes(payload))
            return bytes(payload)[::-1], True

    fake = FakeDeflate()
    items = [(OP_TEXT, b"abc"), (OP_PING, b"ping"), (OP_BINARY, b"xy"), (OP_BINARY, b"123")]
    data = encode_frames(items, MaskKeys(), deflate=fake)
    assert read_masked_frames(data) == [
        (OP_TEXT, 1, True, b"cba"),
        (OP_PING, 0, True, b"ping"),
        (OP_BINARY, 0, True, b"xy"),
        (OP_BINARY, 1, True, b"321"),
    ]
    assert fake.seen == [b"abc", b"123"]


# --------------------------------------------------------------------------- layering


def test_module_is_pure() -> None:
    """L1 module: no sockets, threads, clocks or websocket-client."""
    tree = ast.parse(Path(frames.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    forbidden = {"threading", "socket", "selectors", "time", "websocket", "asyncio", "ssl"}
    assert not imported & forbidden, imported & forbidden


def test_opcode_values() -> None:
    assert (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) == (0, 1, 2, 8, 9, 10)
    abnf = websocket.ABNF
    assert (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) == (
        abnf.OPCODE_CONT,
        abnf.OPCODE_TEXT,
        abnf.OPCODE_BINARY,
        abnf.OPCODE_CLOSE,
        abnf.OPCODE_PING,
        abnf.OPCODE_PONG,
    )
